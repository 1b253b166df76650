"""LLM user profiles: the prompt built from a user's history, generation, and output checks.

A user's most informative source items (titles, categories, ratings; ratings furthest from the
user's own mean first) fill a versioned template from ``prompts/``, and an instruction LLM
(:mod:`pipeline.features.encoders.llm`) writes a short profile. Generation is batched with left
padding and greedy, so it is reproducible. Each output is checked (empty, runaway, echo of the
prompt); a failed one is regenerated with a repetition penalty, then replaced by a flagged
fallback written from the item categories. Item text is untrusted: it is quoted, stripped of
control and chat-template tokens, counted when it looks like an instruction, and the profile
is only ever embedded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.features.encoders.llm import RUNAWAY_MARK
from pipeline.features.prompts import Prompt
from pipeline.io import stable_hash
from pipeline.recs.metrics import POSITIVE_RATING

if TYPE_CHECKING:
    from pipeline.config.user_profiles import UserProfilesParams

log = logging.getLogger("user_profiles")

NEEDS_PROFILE = ("train_overlap", "valid_cold", "test_cold")
TITLE_CHARS = 100  # an item title is cut here in the prompt
CATEGORY_CHARS = 40
MAX_ECHOED_LINES = 2  # an output quoting this many history lines echoes the prompt
MAX_REPEATED_TRIGRAMS = 0.3  # share of repeated word trigrams that marks a runaway output

_CONTROL = re.compile(r"[\x00-\x1f\x7f]|<\|[^|>]{0,40}\|>|</?s>|\[/?INST\]")
_INSTRUCTION = re.compile(
    r"\b(ignore|disregard|forget)\b.{0,30}\b(instructions?|previous|above|prompt)\b|\bsystem prompt\b|"
    r"\byou are (now )?an?\b|\b(assistant|system)\s*:",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- inputs
def load_prompt(path: str | Path) -> Prompt:
    return Prompt.load(path, param="user_profiles.template", placeholders=("history",))


def render(prompt: Prompt, history: list[str], source: str, target: str) -> str:
    return prompt.render(
        history="\n".join(history),
        n_items=len(history),
        source_domain=source,
        target_domain=target,
    )


def read_histories(
    roles: Path, interactions: Path, items: Path, source: str, train_fraction: float = 1.0
) -> tuple[list[str], dict[tuple[str], pl.DataFrame]]:
    """The users who need a profile (sorted) and their source rows (rating, title, categories):
    every cold user, and the training-overlap users in the ``train_fraction`` sample."""
    needed = pl.read_parquet(roles).filter(pl.col("role").is_in(NEEDS_PROFILE))
    train = needed["role"] == "train_overlap"
    if train_fraction < 1.0:
        keep = in_sample(needed["user_id"].to_list(), train_fraction)
        needed = needed.filter(~train | pl.Series(keep))
        log.info(
            "training-overlap users profiled: %d of %d (train_fraction %g); cold users: all %d",
            int((needed["role"] == "train_overlap").sum()),
            int(train.sum()),
            train_fraction,
            int((~train).sum()),
        )
    users = sorted(needed["user_id"].to_list())
    inter = (
        pl.scan_parquet(interactions)
        .filter((pl.col("domain") == source) & pl.col("user_id").is_in(users))
        .select("user_id", "item_id", "rating")
        .collect()
    )
    meta = pl.read_parquet(items, columns=["item_id", "domain", "title", "categories"])
    meta = meta.filter(pl.col("domain") == source).drop("domain")
    rows = inter.join(meta, on="item_id", how="left").partition_by("user_id", as_dict=True)
    return users, rows


def in_sample(user_ids: list[str], fraction: float) -> list[bool]:
    """Whether each user is in the ``fraction`` sample: a uniform number read from a hash of
    the user id, so a user's membership depends on nothing else (not on the split seed, not on
    who else is in the data), and raising the fraction only adds users."""
    scale = float(1 << 64)
    return [
        int.from_bytes(hashlib.sha256(f"profile-sample:{u}".encode()).digest()[:8]) / scale
        < fraction
        for u in user_ids
    ]


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
        title, bad = clean_item_text(row["title"], TITLE_CHARS)
        suspicious += bad
        cats = list(row["categories"] or [])
        cats = cats[1:] if len(cats) > 1 else cats  # the first is the catalogue's root ("Books")
        cats = [clean_item_text(c, CATEGORY_CHARS)[0] for c in cats][:2]
        if not title and not cats:
            continue
        label = f'"{title}"' if title else "an item"
        cat_text = f" ({', '.join(cats)})" if cats else ""
        rating = f" rated {row['rating']:.0f}/5" if row["rating"] is not None else ""
        lines.append(f"- {label}{cat_text}{rating}")
    for row in ranked.iter_rows(named=True):
        if row["rating"] is None or row["rating"] >= POSITIVE_RATING:
            liked.extend(c for c in (row["categories"] or [])[1:3])
    return lines, suspicious, liked


def plan_users(
    users: list[str],
    rows: dict[tuple[str], pl.DataFrame],
    max_items: int,
    settings: dict,
    old: dict[str, dict],
    source: str,
) -> tuple[list[dict], list[dict], int]:
    """One record per user: reused from ``old`` (by input hash), a fallback when the user has
    no usable history, else pending generation. ``(records, pending, instruction-like titles)``."""
    records, todo, suspicious = [], [], 0
    for user in users:
        lines, bad, liked = history_lines(rows.get((user,), pl.DataFrame()), max_items)
        suspicious += bad
        key = stable_hash({**settings, "history": lines}, 24)
        rec = {"user_id": user, "history": lines, "liked": liked, "input_hash": key}
        if key in old:
            rec.update({k: old[key][k] for k in ("profile_text", "status", "model")}, reused=True)
        elif not lines:
            text = fallback_profile(liked, source)
            rec.update(profile_text=text, status="fallback", rejected="no_history")
        else:
            todo.append(rec)
        records.append(rec)
    return records, todo, suspicious


def summarize(records: list[dict], generated: int, suspicious: int, seconds: float) -> dict:
    """The run's counts, as the store's metadata and the stage's return value carry them."""
    return {
        "users": len(records),
        "generated_now": generated,
        "reused": sum(bool(r.get("reused")) for r in records),
        "status": dict(Counter(r["status"] for r in records)),
        "rejected_reasons": dict(Counter(r["rejected"] for r in records if r.get("rejected"))),
        "instruction_like_items": suspicious,
        "generation_seconds": round(seconds, 2),
        "profiles_per_second": round(generated / seconds, 3) if generated and seconds > 0 else None,
    }


# --------------------------------------------------------------------------- output checks
def check_profile(text: str, prompt: Prompt, history: list[str]) -> tuple[str, str | None]:
    """(cleaned text, rejection reason or None)."""
    unfinished = text.endswith(RUNAWAY_MARK)
    text = " ".join(text.removesuffix(RUNAWAY_MARK).split())
    words = text.lower().split()
    if len(words) < 3:
        return text, "empty"
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    if trigrams and 1 - len(set(trigrams)) / len(trigrams) > MAX_REPEATED_TRIGRAMS:
        return text, "runaway"
    low = text.lower()
    if (
        any(p in low for p in prompt.fixed_phrases())
        or sum(line[2:].lower() in low for line in history) >= MAX_ECHOED_LINES
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


# --------------------------------------------------------------------------- generation
def model_key(p: UserProfilesParams) -> str:
    """The model as the input hashes name it: another backend writes other profiles."""
    if p.backend == "openai":
        return f"{p.model}@{p.endpoint}"
    return p.model if p.backend == "transformers" else f"{p.model}@{p.backend}"


def make_writer(p: UserProfilesParams, device: str, threads: int | None = None) -> Any:
    """The profile writer of ``user_profiles.backend``; ``threads``: the CPU threads it may use
    (llamacpp; None = ``user_profiles.threads``, else every core). Close it when done (a
    llamacpp writer stops its server)."""
    from pipeline.features.encoders import llm

    if p.backend == "llamacpp":
        from pipeline.features.encoders.llama_server import LlamaCppWriter

        threads = threads or p.threads
        return LlamaCppWriter(p.model, p.gguf_file, threads, p.timeout_seconds, p.concurrency)
    if p.backend == "openai":
        if not p.endpoint:
            raise PipelineError("user_profiles.endpoint: required when backend is openai")
        return llm.OpenAIWriter(
            p.endpoint,
            p.model,
            api_key=os.environ.get("OPENAI_API_KEY"),
            timeout=p.timeout_seconds,
            concurrency=p.concurrency,
        )
    return llm.TransformersWriter(p.model, p.gguf_file, device)


def generate_profiles(
    writer: Any,
    prompt: Prompt,
    todo: list[dict],
    p: UserProfilesParams,
    source: str,
    target: str,
    on_batch: Callable[[list[dict]], None] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Fill ``profile_text``/``status`` of each pending user dict, batch by batch.

    ``on_batch`` gets every finished batch (the stage journals it, so that an interrupted run
    resumes where it stopped instead of starting over).
    """
    starts = range(0, len(todo), p.batch_size)
    for start in tqdm(starts, desc="profiles", unit="batch", disable=not progress):
        batch = todo[start : start + p.batch_size]
        _generate_batch(writer, prompt, batch, p, source, target)
        if on_batch is not None:
            on_batch(batch)
    return todo


def _generate_batch(
    writer: Any, prompt: Prompt, batch: list[dict], p: UserProfilesParams, source: str, target: str
) -> None:
    def conversations(users: list[dict]) -> list[list[dict]]:
        return [
            [{"role": "user", "content": render(prompt, u["history"], source, target)}]
            for u in users
        ]

    pending = batch
    for attempt in range(p.max_retries + 1):
        if not pending:
            break
        outputs = writer.generate(conversations(pending), p.max_new_tokens, retry=attempt > 0)
        still = []
        for u, out in zip(pending, outputs, strict=True):
            text, reason = check_profile(out, prompt, u["history"])
            if attempt == 0:  # the first answer is kept (and its reason) until a retry passes
                u["profile_text"], u["status"] = text, "generated" if reason is None else reason
            elif reason is None:
                u["profile_text"], u["status"] = text, "retried"
            if reason is not None:
                still.append(u)
        pending = still
        if attempt:
            log.debug("retry %d: %d still rejected", attempt, len(pending))
    for u in pending:
        u["rejected"] = u["status"]
        u["profile_text"], u["status"] = fallback_profile(u["liked"], source), "fallback"
