"""Stage ``user_profiles``: an instruction LLM describes each user's taste from their
source-domain history; the profile is embedded and stored (MuSiC's LLM user features).

For every user who needs one (training-overlap and cold users of the pair), a versioned
template from ``prompts/`` is filled with the user's most informative source items (titles,
categories, ratings; ``max_items`` of them, ratings furthest from the user's own mean first)
and the model writes a short profile: SmolLM2-135M-Instruct offline by default, any causal
LM by name or directory, or an OpenAI-compatible endpoint. Generation is batched with left
padding and greedy, so it is reproducible. Each output is checked (empty, runaway, echo of
the prompt); a failed one is regenerated once with a repetition penalty, then replaced by a
flagged fallback written from the item categories. Item text is untrusted: it is quoted,
stripped of control and chat-template tokens, counted when it looks like an instruction, and
the profile is only ever embedded.

Store: ``data/features/users/part-<rank>.parquet`` with ``user_id``, ``domain``,
``profile_text``, ``profile_emb`` (fixed-size float list), ``status`` (generated | retried |
fallback), ``prompt_id``, ``prompt_version``, ``model``, ``input_hash``. A user whose input
hash (template, model, generation settings, history) is unchanged is not generated again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from tqdm import tqdm

from pipeline import cli, distributed, paths
from pipeline.config import Params, UserProfilesParams
from pipeline.errors import PipelineError
from pipeline.io import atomic_dir, read_meta, read_parquet, stable_hash, write_json, write_parquet

log = logging.getLogger("user_profiles")

USERS_STORE = paths.USER_PROFILES
NEEDS_PROFILE = ("train_overlap", "valid_cold", "test_cold")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]|<\|[^|>]{0,40}\|>|</?s>|\[/?INST\]")
_INSTRUCTION = re.compile(
    r"\b(ignore|disregard|forget)\b.{0,30}\b(instructions?|previous|above|prompt)\b|\bsystem prompt\b|"
    r"\byou are (now )?an?\b|\b(assistant|system)\s*:",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- prompts
@dataclass(frozen=True)
class Template:
    path: Path
    text: str

    @property
    def prompt_id(self) -> str:
        return self.path.stem  # e.g. user_profile_v1

    @property
    def version(self) -> str:
        # The file name carries the version; the content hash catches silent edits.
        return f"{self.path.stem}@{hashlib.sha256(self.text.encode()).hexdigest()[:8]}"

    @classmethod
    def load(cls, path: str | Path) -> Template:
        path = Path(path)
        if not path.exists():
            raise PipelineError(f"user_profiles.template: {path} not found")
        body = "\n".join(
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if not line.startswith("#")
        )
        missing = [p for p in ("{history}",) if p not in body]
        if missing:
            raise PipelineError(f"{path}: the template needs the placeholder(s) {missing}")
        return cls(path, body.strip())

    def render(self, history: list[str], source: str, target: str) -> str:
        return self.text.format(
            history="\n".join(history),
            n_items=len(history),
            source_domain=source,
            target_domain=target,
        )

    def fixed_phrases(self) -> list[str]:
        """Long literal stretches of the instructions: an output repeating one echoes the prompt."""
        parts = re.split(r"\{[a-z_]+\}|\n|[.:;!?](?:\s|$)", self.text)
        return [p.strip().lower() for p in parts if len(p.strip()) >= 25]


def clean_item_text(text: str | None, limit: int) -> tuple[str, bool]:
    """Item text made safe to quote in a prompt; also says whether it looked like an instruction."""
    if not text:
        return "", False
    suspicious = bool(_INSTRUCTION.search(text))
    text = _CONTROL.sub(" ", text).replace('"', "'")
    text = " ".join(text.split())
    return (text[: limit - 1] + "\u2026" if len(text) > limit else text), suspicious


def history_lines(rows: pl.DataFrame, max_items: int) -> tuple[list[str], int, list[str]]:
    """The prompt lines of one user's most informative items, the count of instruction-like
    titles among them, and the categories of the liked ones (for the fallback)."""
    if rows.is_empty():
        return [], 0, []
    mean = rows["rating"].mean() if rows["rating"].null_count() < rows.height else None
    ranked = rows.with_columns(
        informative=(pl.col("rating") - (mean or 0.0)).abs() if mean is not None else pl.lit(0.0),
        has_title=pl.col("title").is_not_null(),
    ).sort(["has_title", "informative", "rating", "item_id"], descending=[True, True, True, False])
    lines, suspicious, liked = [], 0, []
    for row in ranked.head(max_items).iter_rows(named=True):
        title, bad = clean_item_text(row["title"], 100)
        suspicious += bad
        cats = list(row["categories"] or [])
        cats = cats[1:] if len(cats) > 1 else cats  # the first is the catalogue's root ("Books")
        cats = [clean_item_text(c, 40)[0] for c in cats][:2]
        if not title and not cats:
            continue
        label = f'"{title}"' if title else "an item"
        cat_text = f" ({', '.join(cats)})" if cats else ""
        rating = f" rated {row['rating']:.0f}/5" if row["rating"] is not None else ""
        lines.append(f"- {label}{cat_text}{rating}")
    for row in ranked.iter_rows(named=True):
        if row["rating"] is None or row["rating"] >= 4:
            liked.extend(c for c in (row["categories"] or [])[1:3])
    return lines, suspicious, liked


# --------------------------------------------------------------------------- output checks
def check_profile(text: str, template: Template, history: list[str]) -> tuple[str, str | None]:
    """(cleaned text, rejection reason or None)."""
    from pipeline.features.encoders.llm import RUNAWAY_MARK

    unfinished = text.endswith(RUNAWAY_MARK)
    text = " ".join(text.removesuffix(RUNAWAY_MARK).split())
    words = text.lower().split()
    if len(words) < 3:
        return text, "empty"
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    if trigrams and 1 - len(set(trigrams)) / len(trigrams) > 0.3:
        return text, "runaway"
    low = text.lower()
    if (
        any(p in low for p in template.fixed_phrases())
        or sum(line[2:].lower() in low for line in history) >= 2
    ):
        return text, "prompt_echo"
    if unfinished:
        # Cut a truncated answer back to its last full sentence, if it has one.
        cut = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
        if cut > 0:
            text = text[: cut + 1]
        elif not text.endswith((".", "!", "?")):
            text = text + "."
    return text, None


def fallback_profile(liked: list[str], source: str) -> str:
    top = [c for c, _ in Counter(liked).most_common(3)]
    if not top:
        return f"A {source} shopper with no described favourites."
    return f"A {source} shopper who likes {', '.join(top)}."


# --------------------------------------------------------------------------- the stage
def make_writer(p: UserProfilesParams, device: str):
    from pipeline.features.encoders import llm

    if p.backend == "openai":
        import os

        if not p.endpoint:
            raise PipelineError("user_profiles.endpoint: required when backend is openai")
        return llm.OpenAIWriter(p.endpoint, p.model, api_key=os.environ.get("OPENAI_API_KEY"))
    return llm.TransformersWriter(p.model, p.gguf_file, device)


def generate_profiles(
    writer,
    template: Template,
    todo: list[dict],
    p: UserProfilesParams,
    source: str,
    target: str,
    journal: Path | None = None,
) -> list[dict]:
    """Fill ``profile_text``/``status`` of each pending user dict, batch by batch.

    Each finished batch is appended to ``journal`` (one JSON line per user, keyed by input
    hash), so an interrupted run resumes where it stopped instead of starting over.
    """
    for start in tqdm(range(0, len(todo), p.batch_size), desc="profiles", unit="batch"):
        batch = todo[start : start + p.batch_size]
        _generate_batch(writer, template, batch, p, source, target)
        if journal is not None:
            with journal.open("a", encoding="utf-8") as fh:
                for u in batch:
                    keep = ("input_hash", "profile_text", "status", "rejected")
                    row = {k: u.get(k) for k in keep} | {"model": writer.model_id}
                    fh.write(json.dumps(row) + "\n")
    return todo


def _generate_batch(
    writer, template: Template, batch: list[dict], p: UserProfilesParams, source: str, target: str
) -> None:
    messages = [
        [{"role": "user", "content": template.render(u["history"], source, target)}] for u in batch
    ]
    outputs = writer.generate(messages, p.max_new_tokens)
    pending = []
    for u, out in zip(batch, outputs, strict=True):
        u["profile_text"], reason = check_profile(out, template, u["history"])
        u["status"] = "generated" if reason is None else reason
        if reason is not None:
            pending.append(u)
    for attempt in range(p.max_retries):
        if not pending:
            break
        outputs = writer.generate(
            [
                [{"role": "user", "content": template.render(u["history"], source, target)}]
                for u in pending
            ],
            p.max_new_tokens,
            retry=True,
        )
        still = []
        for u, out in zip(pending, outputs, strict=True):
            text, reason = check_profile(out, template, u["history"])
            if reason is None:
                u["profile_text"], u["status"] = text, "retried"
            else:
                still.append(u)
        pending = still
        log.debug("retry %d: %d still rejected", attempt + 1, len(pending))
    for u in pending:
        u["rejected"] = u["status"]
        u["profile_text"], u["status"] = fallback_profile(u["liked"], source), "fallback"


def _journal(store: Path) -> tuple[Path, dict[str, dict]]:
    """Profiles generated by an interrupted earlier run (input hash -> row)."""
    path = store.with_name(f".{store.name}.journal.jsonl")
    done: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the interruption
                continue
            done[row["input_hash"]] = row
    return path, done


def _previous(store: Path) -> dict[str, dict]:
    if not store.exists():
        return {}
    parts = sorted(store.glob("part-*.parquet"))
    if not parts:
        return {}
    old = pl.concat([pl.read_parquet(p) for p in parts])
    return {row["input_hash"]: row for row in old.iter_rows(named=True)}


def user_profiles(params: Params, store: Path = USERS_STORE) -> dict:
    p = params.user_profiles
    source, target = params.pair.source, params.pair.target
    rank = distributed.rank(p.device)
    if not p.enabled:
        log.info("user profiles: off (user_profiles.enabled is false)")
        if rank.is_main:
            with atomic_dir(store) as tmp:
                write_json({"enabled": False}, tmp / "manifest.json")
        return {"enabled": False}

    template = Template.load(p.template)
    roles = read_parquet(paths.ROLES).filter(pl.col("role").is_in(NEEDS_PROFILE))
    users = sorted(roles["user_id"].to_list())
    inter = (
        pl.scan_parquet(paths.INTERACTIONS)
        .filter((pl.col("domain") == source) & pl.col("user_id").is_in(users))
        .select("user_id", "item_id", "rating")
        .collect()
    )
    items = pl.read_parquet(
        paths.ITEMS, columns=["item_id", "domain", "title", "categories"]
    ).filter(pl.col("domain") == source)
    rows = inter.join(items.drop("domain"), on="item_id", how="left").partition_by(
        "user_id", as_dict=True
    )
    model_key = p.model if p.backend == "transformers" else f"{p.model}@{p.endpoint}"
    settings = {
        "template": template.version,
        "model": model_key,
        "gguf": p.gguf_file,
        "max_new_tokens": p.max_new_tokens,
        "max_retries": p.max_retries,
        "source": source,
        "target": target,
    }

    mine = [users[i] for i in rank.shard(len(users))]
    old = _previous(store)
    journal, resumed = _journal(store)
    old = {**resumed, **old}
    if resumed:
        log.info("resuming: %d profiles from an interrupted run are kept", len(resumed))
    records, todo, suspicious = [], [], 0
    for user in mine:
        lines, bad, liked = history_lines(rows.get((user,), pl.DataFrame()), p.max_items)
        suspicious += bad
        key = stable_hash({**settings, "history": lines}, 24)
        rec = {
            "user_id": user,
            "history": lines,
            "liked": liked,
            "input_hash": key,
            "suspicious_items": bad,
        }
        if key in old:
            rec.update(
                profile_text=old[key]["profile_text"],
                status=old[key]["status"],
                model=old[key]["model"],
            )
            rec["reused"] = True
        elif not lines:
            rec.update(
                profile_text=fallback_profile(liked, source),
                status="fallback",
                rejected="no_history",
            )
        else:
            todo.append(rec)
        records.append(rec)

    start = time.perf_counter()
    if todo:
        writer = make_writer(p, rank.device)
        journal.parent.mkdir(parents=True, exist_ok=True)
        generate_profiles(writer, template, todo, p, source, target, journal)
        for rec in todo:
            rec["model"] = writer.model_id
    gen_seconds = time.perf_counter() - start
    for rec in records:
        rec.setdefault("model", model_key)

    from pipeline.features.encoders.text import load_item_text_encoder

    encoder = load_item_text_encoder(params.item_features, rank.device)
    vectors = (
        encoder.encode([r["profile_text"] for r in records], params.item_features.batch_size)
        if records
        else np.zeros((0, encoder.dim), np.float32)
    )
    status = Counter(r["status"] for r in records)
    summary = {
        "users": len(records),
        "generated_now": len(todo),
        "reused": sum(bool(r.get("reused")) for r in records),
        "status": dict(status),
        "rejected_reasons": dict(Counter(r["rejected"] for r in records if r.get("rejected"))),
        "instruction_like_items": suspicious,
        "generation_seconds": round(gen_seconds, 2),
        "profiles_per_second": round(len(todo) / gen_seconds, 3)
        if todo and gen_seconds > 0
        else None,
    }
    meta = {
        "prompt_id": template.prompt_id,
        "prompt_version": template.version,
        "model": model_key,
        "backend": p.backend,
        "text_encoder": encoder.name,
        "dim": encoder.dim,
        "normalisation": "l2",
        "params_hash": stable_hash(p.model_dump()),
        "source": source,
        "target": target,
        **summary,
    }
    table = pa.table(
        {
            "user_id": [r["user_id"] for r in records],
            "domain": [source] * len(records),
            "profile_text": [r["profile_text"] for r in records],
            "profile_emb": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.reshape(-1).astype(np.float32)), encoder.dim
            ),
            "status": [r["status"] for r in records],
            "prompt_id": [template.prompt_id] * len(records),
            "prompt_version": [template.version] * len(records),
            "model": [r["model"] for r in records],
            "input_hash": [r["input_hash"] for r in records],
            "n_history_items": pa.array([len(r["history"]) for r in records], pa.int32()),
        }
    )
    tmp_dir = store.with_name(f".{store.name}.ranks")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(table, tmp_dir / f"part-{rank.index:03d}.parquet", meta)
    distributed.barrier()
    if rank.is_main:
        with atomic_dir(store) as out:
            for part in sorted(tmp_dir.glob("part-*.parquet")):
                part.rename(out / part.name)
            write_json(meta, out / "manifest.json")
        tmp_dir.rmdir()
        journal.unlink(missing_ok=True)
    log.info(
        "profiles for %d users: %d generated now (%.2f / s), %d reused; status %s; %d instruction-like item texts quoted as data",
        len(records),
        len(todo),
        summary["profiles_per_second"] or 0.0,
        summary["reused"],
        dict(status),
        suspicious,
    )
    return meta


def load_profiles(store: Path = USERS_STORE) -> pl.DataFrame:
    parts = sorted(Path(store).glob("part-*.parquet"))
    if not parts:
        return pl.DataFrame()
    return pl.concat([pl.read_parquet(p) for p in parts])


def store_meta(store: Path = USERS_STORE) -> dict:
    parts = sorted(Path(store).glob("part-*.parquet"))
    return read_meta(parts[0]) if parts else {}


def main(argv: Sequence[str] | None = None) -> dict:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    return user_profiles(cli.params_from(args))


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
