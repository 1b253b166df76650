"""Stage ``score``: top-K target items for cold-start users, as a dated Parquet partition.

    # DVC stage: the split's valid_cold and test_cold users, as the models saw them
    python -m pipeline.score
    # nightly job: a users file against fresh interactions, no retraining
    python -m pipeline.score --users users.parquet --interactions fresh.parquet \\
        --out /data/recs --date 2024-06-01 [-S score.k=100] [-S score.method=emcdr]

``--users``: Parquet or CSV with a ``user_id`` column (read as strings). ``--interactions``:
Parquet or CSV shaped like ``data/prepared/interactions.parquet`` (rows of other domains are
ignored); without it, the training interactions with the cold users' held-out target rows
hidden, so the stage's lists are the rankings ``evaluate`` measured. The models are
``data/models/`` with the data they were fitted on (interactions and roles name the users and
items the models index).

Output ``OUT/dt=DATE/`` (``data/scores/``, the DVC output, for the stage; a run with
``--users``, ``--interactions`` or ``--models`` must name its ``--out``), date from
``--date``, else ``score.date`` for the stage and today in UTC for a ``--users`` run
(``score.date`` pins the stage's partition only), replaced atomically, one run at a time
whatever the date (a second run on the same ``OUT`` fails at once), a killed run of the local engine resumed after its last
finished part by the next run of that date (:mod:`pipeline.recs.partition`):
``part-NNNNN.parquet`` (:data:`pipeline.recs.lists.SCHEMA`, one row per user and rank, sorted
by user id then rank, without the items the user already has; equal scores by item id, so the
same inputs give the same bytes), ``rejects.parquet`` (``user_id``, ``reason`` of every
requested user without a list: :data:`pipeline.recs.plan.REASONS`), ``manifest.json`` (counts,
the method and how it was chosen, K, sampling steps, params hash, model and data
fingerprints), and ``_SUCCESS`` last. All dates:
``pl.scan_parquet("OUT/dt=*/part-*.parquet", hive_partitioning=True)``.

Users new since training are folded in (:mod:`pipeline.recs.fold`). ``score.method: auto``
picks the best ``ndcg@10`` on the validation cold users; ``score.steps`` overrides a diffusion
generator's sampling steps. Scoring is chunked (:mod:`pipeline.recs.rank`): ``score.chunk_size``
users at a time, on CUDA when available, while a thread writes the previous chunk; with
``score.engine: ray``, on Ray Data actors, a batch of users each (:mod:`pipeline.recs.batches`).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline import cli, cpu, engine, paths
from pipeline.cdr import store
from pipeline.config import Params
from pipeline.config.score import check_date
from pipeline.errors import PipelineError
from pipeline.io import read_meta, stable_hash
from pipeline.recs import batches, lists, partition, plan, rank, trained
from pipeline.recs.fold import fold_in

log = logging.getLogger("score")
PARAMS = ("pair", "train", "score")  # read here; dvc.yaml lists the same

SCORES = paths.DATA / "scores"


def score(
    params: Params,
    users_path: Path | None = None,
    interactions_path: Path | None = None,
    out: Path | None = None,
    date: str | None = None,
    model_dir: Path = paths.MODELS,
    progress: bool = True,
) -> dict:
    """Score users into ``out/dt=date/``; returns the manifest."""
    start = time.perf_counter()
    sp, pair = params.score, params.pair
    given = {"--users": users_path, "--interactions": interactions_path}
    given["--models"] = model_dir if Path(model_dir) != paths.MODELS else None
    standalone = [flag for flag, value in given.items() if value is not None]
    if standalone and out is None:
        raise PipelineError(
            f"--out: required with {' and '.join(standalone)} (the default, {SCORES}, is the "
            "score stage's DVC output, which dvc repro and dvc checkout replace)"
        )
    out = Path(out) if out is not None else SCORES
    try:
        today = datetime.datetime.now(datetime.UTC).date().isoformat()
        pinned = sp.date if users_path is None else None  # a scheduled run is dated today
        date = check_date(date or pinned or today, "--date")
    except ValueError as exc:
        raise PipelineError(str(exc)) from None
    data, fitted = trained.load(params, model_dir)
    name, selection = trained.choose_method(sp.method, list(fitted.methods), paths.VALID_USERS)
    version = trained.model_version(model_dir)

    requested = plan.stage_users(data) if users_path is None else plan.read_users(users_path)
    fresh = None
    if interactions_path is not None:
        scale = read_meta(paths.INTERACTIONS).get("rating_scale") or {}
        scales = {d: (s["min"], s["max"]) for d, s in scale.items() if s}  # what the models saw
        fresh = plan.read_interactions(
            interactions_path, requested, (pair.source, pair.target), scales
        )
    todo = plan.plan(data, fitted.ctx, requested, fresh)
    scorer = fold_in(fitted, name, todo, params.train.base)
    plan.require_someone(todo, str(users_path) if users_path else "the split's cold users")
    device = rank.resolve_device(sp.device) if sp.engine == "local" else None
    n, exclude = len(todo.user_ids), (todo.exclude_indptr, todo.exclude_items)
    # The part size shapes the files too: hashed with the settings, as when it was a param.
    hashed = {
        **sp.model_dump(exclude={"date", *engine.EXECUTION_KEYS}),
        "rows_per_part": lists.ROWS_PER_PART,
    }
    settings = {"pair": pair.model_dump(), "train": params.train.model_dump(), "score": hashed}
    # What the lists depend on: a killed run with the same key is resumed (local engine).
    key = stable_hash([settings, version, todo.digest()]) if sp.engine == "local" else None
    with (
        partition.building(out, date, key) as build,
        scorer.sampling_steps(sp.steps),
        torch.no_grad(),
        engine.running(sp.engine),
        cpu.Job("score"),  # torch threads: this job's share of the cores
    ):
        tmp, done = build.dir, build.done.users
        chunks, device = batches.ranked(scorer, n, exclude, sp, device, progress, done)
        meta = {"method": name, "model_version": version, "date": date, "k": sp.k}
        written = lists.write_lists(
            tmp, todo.user_ids, chunks, data.tgt_item_ids, name, version, meta,
            build.done, build.save,
        )  # fmt: skip
        rejects = todo.rejects + [(u, "non_finite_scores") for u in written.non_finite]
        by_reason = partition.write_rejects(tmp, rejects)
        counts = {"scored": n - len(written.non_finite), "rejected": len(rejects)}
        manifest = {
            "date": date,
            "method": name,
            "selection": selection,
            "model_version": version,
            "data_fingerprint": store.data_fingerprint(data),
            "params_hash": stable_hash(settings),
            "source": pair.source,
            "target": pair.target,
            "k": sp.k,
            "steps": getattr(scorer.method, "sample_steps", None),
            "device": device.type,
            "engine": sp.engine,
            "users_file": None if users_path is None else str(users_path),
            "interactions_file": None if interactions_path is None else str(interactions_path),
            "counts": {**todo.counts, **counts, "rows": written.rows},
            "rejected_by_reason": by_reason,
            "fold_in": scorer.info,
            "parts": written.parts,
            "columns": lists.SCHEMA.names,
        }
        partition.finish(tmp, manifest)
    where, took = out / partition.partition_name(date), time.perf_counter() - start
    log.info(
        f"{where}: {todo.counts['users_in']} users in, {counts['scored']} scored "
        f"({scorer.info.get('users', 0)} folded in), {len(rejects)} rejected {by_reason or ''}; "
        f"{name}, K={sp.k}, {took:.1f} s"
    )
    return manifest


def main(argv: Sequence[str] | None = None) -> dict:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--users",
        type=Path,
        help="Parquet/CSV with user_id, or .txt, one id per line (default: the cold users)",
    )
    fresh = "fresh interactions, Parquet/CSV (default: the training data, held-out rows hidden)"
    p.add_argument("--interactions", type=Path, help=fresh)
    p.add_argument(
        "--out",
        type=Path,
        help=f"output directory (default: {SCORES}; required with --users, --interactions, --models)",
    )
    p.add_argument(
        "--date",
        help="partition date YYYY-MM-DD (default: score.date, else today UTC; with --users today)",
    )
    p.add_argument("--models", type=Path, default=paths.MODELS, help="trained model directory")
    args = p.parse_args(argv)
    return score(
        cli.params_from(args, "score", PARAMS),
        users_path=args.users,
        interactions_path=args.interactions,
        out=args.out,
        date=args.date,
        model_dir=args.models,
    )


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
