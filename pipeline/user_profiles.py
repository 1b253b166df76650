"""Stage ``user_profiles``: an instruction LLM describes each user's taste from their
source-domain history; the profile is embedded and stored (MuSiC's LLM user features).

For every user who needs one (training-overlap and cold users of the pair), a versioned
template from ``prompts/`` is filled with the user's most informative source items and the
model writes a short profile: SmolLM2-135M-Instruct offline by default, any causal LM by name
or directory, or an OpenAI-compatible endpoint. Outputs are checked, retried once, else
replaced by a flagged fallback (:mod:`pipeline.features.profiles`). The profile is embedded
with the item text encoder (``item_features.text_encoder``, the CLIP text tower included), so
profiles and item text share one vector space.

Store: ``data/features/users/part-*.parquet`` with ``user_id``, ``domain``,
``profile_text``, ``profile_emb``, ``status`` (generated | retried | fallback), ``prompt_id``,
``prompt_version``, ``model``, ``input_hash`` (:mod:`pipeline.features.profile_store`). A user
whose input hash (template, model, generation settings, history) is unchanged is not
generated again; an interrupted run resumes from its journal.

``engine: ray`` generates and embeds on Ray Data actors that load the models once, with the
same per-batch code (:mod:`pipeline.features.profile_batches`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import cli, cpu, distributed, engine, paths
from pipeline.config import Params
from pipeline.features import profile_batches
from pipeline.features.encoders.text import load_item_text_encoder
from pipeline.features.profile_store import (
    USERS_STORE,
    Journal,
    previous_profiles,
    profile_table,
    write_disabled,
    write_store,
)
from pipeline.features.profiles import (
    generate_profiles,
    load_prompt,
    make_writer,
    model_key,
    plan_users,
    read_histories,
    summarize,
)
from pipeline.io import stable_hash

if TYPE_CHECKING:
    from pipeline.config.user_profiles import UserProfilesParams
    from pipeline.features.prompts import Prompt

log = logging.getLogger("user_profiles")
PARAMS = (  # read here; dvc.yaml lists the same
    "pair",
    "user_profiles",
    # profiles are embedded into the item-text space, with the item text encoder
    "item_features.text_encoder",
    "item_features.clip.model",
    "item_features.clip.pretrained",
    "item_features.batch_size",
)


def user_profiles(params: Params, store: Path = USERS_STORE) -> dict:
    p = params.user_profiles
    source, target = params.pair.source, params.pair.target
    if not p.enabled:
        log.info("user profiles: off (user_profiles.enabled is false)")
        write_disabled(store)
        return {"enabled": False}

    prompt = load_prompt(p.template)
    users, rows = read_histories(paths.ROLES, paths.INTERACTIONS, paths.ITEMS, source)
    key = model_key(p)
    settings = {
        "template": prompt.version,
        "model": key,
        "gguf": p.gguf_file,
        "max_new_tokens": p.max_new_tokens,
        "max_retries": p.max_retries,
        "source": source,
        "target": target,
    }
    journal = Journal(store)
    resumed = journal.read()
    if resumed:
        log.info("resuming: %d profiles from an interrupted run are kept", len(resumed))
    old = {**resumed, **previous_profiles(store)}
    records, todo, suspicious = plan_users(users, rows, p.max_items, settings, old, source)
    with engine.running(p.engine), cpu.Job("user_profiles") as job:
        start = time.perf_counter()
        if todo:
            _generate(p, prompt, todo, source, target, journal, job)
        gen_seconds = time.perf_counter() - start
        for rec in records:
            rec.setdefault("model", key)
        texts = [r["profile_text"] for r in records]
        vectors, encoder = _embed(params.item_features, texts, p)
    summary = summarize(records, len(todo), suspicious, gen_seconds)
    meta = {
        "prompt_id": prompt.id,
        "prompt_version": prompt.version,
        "model": key,
        "backend": p.backend,
        "engine": p.engine,
        "text_encoder": encoder["name"],
        "text_encoder_id": encoder["id"],
        "dim": encoder["dim"],
        "normalisation": "l2",
        "params_hash": stable_hash(p.model_dump(exclude=engine.EXECUTION_KEYS)),
        "source": source,
        "target": target,
        **summary,
    }
    table = profile_table(records, vectors, source, prompt.id, prompt.version)
    write_store(table, meta, store)
    journal.remove()
    log.info(
        "profiles for %d users: %d generated now (%.2f / s), %d reused; status %s; "
        "%d instruction-like item texts quoted as data",
        len(records),
        len(todo),
        summary["profiles_per_second"] or 0.0,
        summary["reused"],
        summary["status"],
        suspicious,
    )
    return meta


def _generate(
    p: UserProfilesParams, prompt: Prompt, todo: list[dict], source: str, target: str,
    journal: Journal, job: cpu.Job,
) -> None:  # fmt: skip
    """Profiles of the pending users, each finished batch journalled (resumable), the torch
    threads resized between batches to this job's share of the cores."""
    if p.engine == "ray":
        profile_batches.generate_on_ray(p, todo, source, target, journal)
        return
    with contextlib.closing(make_writer(p, distributed.resolve_device(p.device))) as writer:

        def on_batch(batch: list[dict]) -> None:
            journal.append(batch, writer.model_id)
            job.rebalance()

        generate_profiles(writer, prompt, todo, p, source, target, on_batch)
    for rec in todo:
        rec["model"] = writer.model_id


def _embed(features: Any, texts: list[str], p: UserProfilesParams) -> tuple[np.ndarray, dict]:
    """The profile vectors, in the item text encoder's space, and the encoder's description."""
    if p.engine == "ray" and texts:
        return profile_batches.embed_on_ray(features, texts, p)
    encoder = load_item_text_encoder(features, distributed.resolve_device(p.device))
    if not texts:
        return np.zeros((0, encoder.dim), np.float32), encoder.describe()
    return encoder.encode(texts, features.batch_size), encoder.describe()


def main(argv: Sequence[str] | None = None) -> dict:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    return user_profiles(cli.params_from(args, "user_profiles", PARAMS))


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
