"""Cold-start benchmark: every method through the pipeline's harness on RecBole .inter files.

    python -m benchmarks.cold_start --source Books.inter --target Movies.inter \\
        [--splits-dir DIR] --betas 0.2,0.5,0.8 --seeds 1,2,3 --out results.json

``--source`` / ``--target`` take RecBole-style ``.inter`` files, with or without ``:token``
typed headers, with or without a rating column (without one: implicit feedback, ranking
metrics only). Duplicate (user, item) rows are merged by their mean rating.

Per (beta, seed): beta of the overlapping users are test cold users (or the users listed in
``DIR/beta<B>_seed<S>/cold_users.txt`` with ``--splits-dir``; a ``valid_users.txt`` beside it
pins the validation users too), 10 % of the overlapping users drawn from the rest are
validation cold users, every selection uses those only, and the test metrics of the selected
models are reported. Writes a JSON array (one record per beta, seed and method) and prints
mean +- std over seeds. ``--users valid`` reports on the validation users instead: the users
the selection was made on, so the gap between the two reports is how much a method's
selection flatters it. ``--users valid-halves`` measures a method without the selection's
optimism and without the test users: each split's validation users are cut in two halves (by
the seed), every selection is made on one half and the metrics are taken on the other (moved
to the test role; the real test users are left out of the target data), then the halves swap,
so each split gives two records (``half`` 0 and 1).

Condition inputs of ``ours`` from outside the interactions: ``--source-items FILE`` (a RecBole
``.item`` file of the source domain) embeds each item's title and categories with the
project's text encoder for the ``liked_items`` input (items without a row get no vector);
``--profiles DIR`` reads a ``user_profiles`` store for the ``profile`` input. An input that
is not given is left out of the condition (logged).

``--break-link SEED`` is a negative control: the source histories are handed to other users
at random, so no method should rank above the target-only floors (``popularity``).
``--overlap-fraction F`` keeps only a share ``F`` of each split's training overlap users (drawn
with the seed; the others become source-only users, their target rows left out): the regime of
a new category pair, where few users are known in both catalogues. The test and validation
users stay the same.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import torch

from benchmarks import significance
from pipeline.cdr import features, harness
from pipeline.cdr.configs import TrainParams
from pipeline.cdr.data import build
from pipeline.config import load_params
from pipeline.config.split import SplitParams
from pipeline.errors import DamageLog, PipelineError
from pipeline.io import write_text
from pipeline.recs.metrics import METRIC_KEYS
from pipeline.sources.recbole import read_inter
from pipeline.tables.roles import assign_roles

log = logging.getLogger("benchmark")

RECORD_METRICS = METRIC_KEYS
TABLE_METRICS = ("mae", "rmse", "ndcg@10", "hit@10")


def read_domain(path: Path, domain: str) -> tuple[pl.DataFrame, dict]:
    """One .inter file as (user_id, item_id, domain, rating) with duplicates merged by mean."""
    damage = DamageLog(str(path), max_bad_fraction=0.001)
    table = pa.Table.from_batches(list(read_inter(path, damage)))
    damage.check()
    raw = pl.from_arrow(table).select("user_id", "item_id", "rating")
    merged = (
        raw.group_by(["user_id", "item_id"], maintain_order=True)
        .agg(pl.col("rating").mean(), n=pl.len(), distinct=pl.col("rating").n_unique())
        .with_columns(domain=pl.lit(domain))
    )
    stats = {
        "rows": raw.height,
        "duplicate_rows_merged": int((merged["n"] - 1).sum()),
        "conflicting_pairs": int((merged["distinct"] > 1).sum()),
    }
    return merged.select("user_id", "item_id", "domain", "rating"), stats


def item_text_vectors(path: Path, encoder_spec: str) -> tuple[list[str], np.ndarray]:
    """(item ids, text vectors) of a RecBole .item file: title + categories, embedded."""
    from pipeline.features.encoders.text import load_text_encoder
    from pipeline.sources.recbole import read_item

    damage = DamageLog(str(path), max_bad_fraction=0.01)
    items = pl.from_arrow(pa.Table.from_batches(list(read_item(path, damage))))
    damage.check()
    texts = [
        ". ".join(x for x in (row["title"], ", ".join(row["categories"] or [])) if x)
        for row in items.iter_rows(named=True)
    ]
    encoder = load_text_encoder(encoder_spec, "cpu")
    log.info("%s: embedding %d item texts with %s", path, len(texts), encoder.name)
    return items["item_id"].to_list(), encoder.encode(texts, 64)


def condition_inputs(
    train: TrainParams, data, items: tuple[list[str], np.ndarray] | None, profiles: Path | None
) -> tuple[TrainParams, dict]:
    """ctx.extra for the given inputs; inputs not given are dropped from ``ours.condition``."""
    extra: dict = {}
    if items is not None:
        vectors, found = features.align(data.src_item_ids, items[0], items[1])
        extra["source_item_features"] = vectors
        log.info("item text: %d of %d source items", found, data.n_src_items)
    if profiles is not None:
        extra["profile"] = features.load_profiles(data, profiles)
    given = {"liked_items": items is not None, "profile": profiles is not None}
    condition = [c for c in train.ours.condition if given.get(c, True)]  # habits: always
    if condition != train.ours.condition:
        log.info("ours.condition without the inputs not given: %s", condition)
        ours = train.ours.model_copy(update={"condition": condition})
        train = train.model_copy(update={"ours": ours})
    return train, extra


def break_link(inter: pl.DataFrame, seed: int) -> pl.DataFrame:
    """The source histories handed to other users at random (a permutation of the user ids,
    drawn with ``seed``): the same users, histories and catalogue, but no cross-domain signal
    left, so no method should rank above the target-only floors (a negative control)."""
    users = np.array(sorted(set(inter["user_id"].to_list())), dtype=object)
    shuffled = users[np.random.default_rng(seed).permutation(len(users))]
    return inter.with_columns(pl.col("user_id").replace_strict(users.tolist(), shuffled.tolist()))


def few_overlap(roles: dict[str, str], fraction: float, seed: int) -> dict[str, str]:
    """The split with only ``fraction`` of its training overlap users (drawn with ``seed``);
    the others become source-only users (their target rows leave the data). The test and
    validation users, the side users and every source history stay: the regime of a new
    category pair, where few users are known in both catalogues."""
    train = sorted(u for u, r in roles.items() if r == "train_overlap")
    keep = round(fraction * len(train))
    order = np.random.default_rng([seed, 3]).permutation(len(train))
    dropped = {train[i] for i in order[keep:]}
    return {u: "source_only" if u in dropped else r for u, r in roles.items()}


def split_files(splits_dir: Path | None, beta: float, seed: int) -> tuple[str | None, str | None]:
    if splits_dir is None:
        return None, None
    for folder in (splits_dir / f"beta{beta}_seed{seed}", splits_dir):
        cold = folder / "cold_users.txt"
        if cold.exists():
            valid = folder / "valid_users.txt"
            return str(cold), (str(valid) if valid.exists() else None)
    raise PipelineError(
        f"{splits_dir}: no beta{beta}_seed{seed}/cold_users.txt (nor cold_users.txt)"
    )


def run(args: argparse.Namespace) -> list[dict]:
    train = _train_params(args.params)
    methods = args.methods.split(",") if args.methods else list(train.methods)
    inter_src, src_stats = read_domain(args.source, "source")
    inter_tgt, tgt_stats = read_domain(args.target, "target")
    if args.break_link is not None:
        inter_src = break_link(inter_src, args.break_link)
    interactions = pl.concat([inter_src, inter_tgt])
    src_users = set(inter_src["user_id"].to_list())
    tgt_users = set(inter_tgt["user_id"].to_list())
    dataset = args.dataset or f"{args.source.stem}->{args.target.stem}"
    log.info(
        "%s: source %d rows (%d duplicates merged), target %d rows (%d merged), %d overlapping users",
        dataset,
        src_stats["rows"],
        src_stats["duplicate_rows_merged"],
        tgt_stats["rows"],
        tgt_stats["duplicate_rows_merged"],
        len(src_users & tgt_users),
    )
    items = item_text_vectors(args.source_items, args.text_encoder) if args.source_items else None
    records = []
    steps_rows: list[dict] = []
    which = "valid" if args.users == "valid" else "test"  # valid-halves: measured half is test
    for beta in args.betas:
        for seed in args.seeds:
            test_file, valid_file = split_files(args.splits_dir, beta, seed)
            split = SplitParams(
                seed=seed,
                test_fraction=beta,
                valid_fraction=args.valid_fraction,
                test_users_file=test_file,
                valid_users_file=valid_file,
            )
            roles = assign_roles(src_users, tgt_users, split)
            if args.overlap_fraction is not None:
                roles = few_overlap(roles, args.overlap_fraction, seed)
            for half, split_roles in role_sets(roles, args.users, seed):
                roles_df = pl.DataFrame(
                    {
                        "user_id": sorted(split_roles),
                        "role": [split_roles[u] for u in sorted(split_roles)],
                    }
                )
                data = build(interactions, roles_df, "source", "target")
                tp, extra = condition_inputs(train, data, items, args.profiles)
                start = time.perf_counter()
                fitted = harness.fit(data, methods, tp.method_configs(), tp.base, seed, extra)
                results = harness.evaluate(fitted, which, per_user=True)
                if args.steps_curve:
                    for row in harness.sampling_steps_curve(fitted, which, steps=(5, 10, 30)):
                        steps_rows.append({"beta": beta, "seed": seed, **row})
                part = "" if half is None else f" half {half}"
                log.info("beta %s seed %s%s: %.0f s", beta, seed, part, time.perf_counter() - start)
                for name, row in results.items():
                    record = {
                        "dataset": dataset,
                        "source": str(args.source),
                        "target": str(args.target),
                        "beta": beta,
                        "seed": seed,
                        "method": name,
                        **{k: row.get(k) for k in RECORD_METRICS},
                        "train_seconds": row["train_seconds"],
                        "infer_seconds": row["infer_seconds"],
                        "base_seconds": fitted.ctx.base.seconds,
                        # Training is reproducible for a given thread count, not across counts.
                        "torch_threads": torch.get_num_threads(),
                        "test_users": int(len(data.cold_users("test"))),
                        "users": args.users,  # the cold users the metrics are taken on
                        "break_link": args.break_link,  # negative control: its seed, or None
                        "overlap_fraction": args.overlap_fraction,  # None: every overlap user
                        "ranked_users": row.get("ranked_users"),
                        "selection": row.get("info"),
                        # for paired tests between methods (benchmarks/significance.py)
                        "per_user": row.get("per_user"),
                        "per_user_errors": row.get("per_user_errors"),
                    }
                    if half is not None:
                        record["half"] = half
                    records.append(record)
            if args.out:
                write_records(records, args.out)  # after every split: a crash keeps what finished
    if steps_rows:
        print(steps_table(steps_rows))
    return records


def role_sets(
    roles: dict[str, str], users: str, seed: int
) -> list[tuple[int | None, dict[str, str]]]:
    """The split's roles as measured: unchanged (half None), or for ``valid-halves`` two role
    maps, one per half of the validation users: that half selects (``valid_cold``), the other
    is measured (``test_cold``) and the real test users become ``source_only`` (their target
    rows leave the data; they never trained anyway)."""
    if users != "valid-halves":
        return [(None, roles)]
    valid = sorted(u for u, r in roles.items() if r == "valid_cold")
    side = np.random.default_rng([seed, 2]).permutation(len(valid)) % 2
    out = []
    for half in (0, 1):
        measured = {u for u, k in zip(valid, side, strict=True) if k != half}
        swapped = {
            u: "test_cold" if u in measured else "source_only" if r == "test_cold" else r
            for u, r in roles.items()
        }
        out.append((half, swapped))
    return out


def write_records(records: list[dict], path: Path) -> None:
    """One record per line, keys sorted; the per-user values rounded to 6 decimals (a mean of
    them moves by less than 1e-6), so that the file stays a few MB rather than tens."""

    def compact(values):
        if isinstance(values, dict):
            return {k: compact(v) for k, v in values.items()}
        if isinstance(values, list):
            return [round(v, 6) if isinstance(v, float) else v for v in values]
        return values

    lines = []
    for r in records:
        r = {k: compact(v) if k in ("per_user", "per_user_errors") else v for k, v in r.items()}
        lines.append(json.dumps(r, sort_keys=True))
    write_text("[\n" + ",\n".join(lines) + "\n]\n", path)


def table(records: list[dict], metrics=TABLE_METRICS) -> str:
    """Markdown table: mean +- std over seeds, one row per method, one column group per beta."""
    betas = sorted({r["beta"] for r in records})
    methods = list(dict.fromkeys(r["method"] for r in records))
    head = "| method | " + " | ".join(f"β={b} {m}" for b in betas for m in metrics) + " |"
    lines = [head, "|---" * (1 + len(betas) * len(metrics)) + "|"]
    for method in methods:
        cells = []
        for b in betas:
            rows = [r for r in records if r["method"] == method and r["beta"] == b]
            for m in metrics:
                values = [r[m] for r in rows if r.get(m) is not None]
                if not values:
                    cells.append("-")
                    continue
                mean, std = harness.mean_std(values)
                cells.append(f"{mean:.4f} ± {std:.4f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def steps_table(rows: list[dict]) -> str:
    """Test metrics of the diffusion methods by sampling steps, mean over seeds."""
    keys = sorted({(r["method"], r["beta"], r["steps"]) for r in rows})
    lines = ["| method | beta | steps | rmse | mae | ndcg@10 |", "|---|---|---|---|---|---|"]
    for method, beta, steps in keys:
        sel = [r for r in rows if (r["method"], r["beta"], r["steps"]) == (method, beta, steps)]
        cells = []
        for k in ("rmse", "mae", "ndcg@10"):
            m, _ = harness.mean_std([r.get(k) for r in sel])
            cells.append(f"{m:.4f}")
        lines.append(f"| {method} | {beta} | {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(records: list[dict]) -> str:
    betas = sorted({r["beta"] for r in records})
    methods = list(dict.fromkeys(r["method"] for r in records))
    lines = ["| method | " + " | ".join(f"β={b} train s | β={b} infer s" for b in betas) + " |"]
    lines.append("|---" * (1 + 2 * len(betas)) + "|")
    for method in methods:
        cells = []
        for b in betas:
            rows = [r for r in records if r["method"] == method and r["beta"] == b]
            cells.append(f"{np.mean([r['train_seconds'] for r in rows]):.1f}")
            cells.append(f"{np.mean([r['infer_seconds'] for r in rows]):.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    base = [r["base_seconds"] for r in records if r["method"] == methods[0]]
    lines.append(f"\nbase models (shared by all methods): {np.mean(base):.1f} s per split")
    return "\n".join(lines)


def _train_params(path: str | None) -> TrainParams:
    if path is None:
        return TrainParams()
    return load_params(path).train


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: not a share in (0, 1]")
    return value


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, required=True, help="source-domain .inter file")
    p.add_argument("--target", type=Path, required=True, help="target-domain .inter file")
    p.add_argument(
        "--splits-dir", type=Path, help="DIR/beta<B>_seed<S>/cold_users.txt pins the test users"
    )
    p.add_argument(
        "--betas", type=_floats, default=[0.2, 0.5, 0.8], help="test shares of overlapping users"
    )
    p.add_argument("--seeds", type=_ints, default=[1, 2, 3], help="split and model seeds")
    p.add_argument("--methods", help="comma-separated subset (default: train.methods of --params)")
    p.add_argument(
        "--params", default="params.yaml", help="take the train section from this params file"
    )
    p.add_argument(
        "--valid-fraction", type=float, default=0.1, help="validation share of overlapping users"
    )
    p.add_argument("--dataset", help="name recorded in the results (default: from the file names)")
    p.add_argument(
        "--source-items", type=Path, help="RecBole .item file of the source domain (item text)"
    )
    p.add_argument("--text-encoder", default="minilm", help="text encoder for --source-items")
    p.add_argument("--profiles", type=Path, help="user_profiles store directory (LLM profiles)")
    p.add_argument(
        "--steps-curve",
        action="store_true",
        help="also print the metrics of the diffusion methods at 5, 10 and 30 sampling steps",
    )
    p.add_argument(
        "--users",
        choices=("test", "valid", "valid-halves"),
        default="test",
        help="cold users the metrics are taken on: test (default); valid, the users every "
        "selection was made on (how much the selection flatters a method); or valid-halves, "
        "selection on one half of them and metrics on the other, both ways (two records per "
        "split, 'half' 0/1). Records say which in 'users'; 'ranked_users' counts the users "
        "measured, 'test_users' the users in the test role",
    )
    p.add_argument(
        "--break-link",
        type=int,
        metavar="SEED",
        help="negative control: hand the source histories to other users at random (a "
        "permutation drawn with SEED), so that no cross-domain signal is left (a --profiles "
        "store keeps the real link: its profiles were written from the real histories)",
    )
    p.add_argument(
        "--overlap-fraction",
        type=_fraction,
        metavar="F",
        help="keep only this share of each split's training overlap users (drawn with the "
        "seed); the others become source-only users: the few-overlap regime of a new pair",
    )
    p.add_argument("--out", type=Path, help="write the JSON records here")
    args = p.parse_args(argv)
    if args.params and not Path(args.params).exists():
        args.params = None
    return args


def main(argv=None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    args = parse_args(argv)
    try:
        records = run(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(table(records))
    print()
    if any(r["method"] == "ours" for r in records):
        print(f"ours against the best other method, paired bootstrap over {args.users} users:\n")
        print(significance.table(records))
        print()
    print(timing_table(records))
    if args.out:
        print(f"\nwrote {len(records)} records to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
