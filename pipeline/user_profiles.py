"""Stage ``user_profiles``: an instruction LLM describes each user's taste from their
source-domain history; the profile is embedded and stored (MuSiC's LLM user features).

For every user who needs one (the cold users of the pair, and the training-overlap users, or
the stable sample of them that ``user_profiles.train_fraction`` names), a versioned
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

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline import cli, cpu, engine, paths
from pipeline.config import Params
from pipeline.features import profile_batches
from pipeline.features.profile_store import (
    USERS_STORE,
    Journal,
    previous_profiles,
    profile_table,
    write_disabled,
    write_store,
)
from pipeline.features.profiles import (
    load_prompt,
    model_key,
    plan_users,
    read_histories,
    summarize,
)
from pipeline.io import stable_hash

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
    users, rows = read_histories(
        paths.ROLES, paths.INTERACTIONS, paths.ITEMS, source, p.train_fraction
    )
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
            profile_batches.generate(p, prompt, todo, source, target, journal, job)
        gen_seconds = time.perf_counter() - start
        for rec in records:
            rec.setdefault("model", key)
        texts = [r["profile_text"] for r in records]
        vectors, encoder = profile_batches.embed(params.item_features, texts, p)
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


def main(argv: Sequence[str] | None = None) -> dict:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    return user_profiles(cli.params_from(args, "user_profiles", PARAMS))


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
