"""What the ray engine costs on one machine: item_features and score, engine local against
engine ray, on the same data.

    python -m benchmarks.ray_overhead --items 1000 --users 1000 --cpus 2

Builds the embedded sample in a scratch directory (``--items`` items per domain, ``--users``
users), trains one small generator (EMCDR) for scoring, then times each stage end to end:

- **local**: the stage in this process, as ``dvc repro`` runs it;
- **ray, cold**: ``engine: ray`` with no cluster running, so the stage starts a local Ray
  instance (``--cpus`` CPUs) and stops it: what a one-machine run pays;
- **ray, warm**: ``engine: ray`` on a Ray instance already running (as on a cluster named by
  ``RAY_ADDRESS``): the actors' start (each loads its model) and the batches' round trips.

``--actors`` actors of ``--cpus / --actors`` CPUs each. Each time is the best of ``--repeats``.
Prints a markdown table with the ratio ray / local; the outputs of both engines are compared
(same rows, vectors within 1e-5, identical lists).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from contextlib import chdir
from pathlib import Path

import numpy as np
import polars as pl
import torch
import yaml

from pipeline import download, paths, prepare, split, train
from pipeline import item_features as item_stage
from pipeline import score as score_stage
from pipeline.config import load_params
from pipeline.recs import trained

ROOT = Path(__file__).resolve().parents[1]
DATE = "2026-01-01"


def build(items: int, users: int, with_models: bool) -> None:
    """The embedded sample, prepared and split (and EMCDR trained on it), in the working dir."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["synthetic"].update(n_items=items, n_users=users)
    raw["train"].update(methods=["emcdr"], emcdr={**raw["train"]["emcdr"], "epochs": 20})
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for stage in (download, prepare, split, *([train] if with_models else [])):
        name = stage.__name__.rpartition(".")[2]
        getattr(stage, name)(load_params("params.yaml", None, stage.PARAMS, name))
    if with_models:
        # the one trained method, for score.method: auto (what evaluate would write)
        trained.write_valid_values({"emcdr": (["u0"], [0.1])}, paths.VALID_USERS)


def overrides(section: str, engine: str, args) -> dict:
    ray = {"actors": args.actors, "cpus_per_actor": args.cpus / args.actors}
    return {f"{section}.engine": engine, f"{section}.ray": {**ray, "batch_size": args.batch}}


def run_items(engine: str, args, out: Path) -> float:
    settings = overrides("item_features", engine, args)
    params = load_params("params.yaml", settings, item_stage.PARAMS, "item_features")
    start = time.perf_counter()
    item_stage.item_features(params, out_path=out, metrics_path=out.with_suffix(".json"))
    return time.perf_counter() - start


def run_score(engine: str, args, out: Path) -> float:
    params = load_params(
        "params.yaml", overrides("score", engine, args), score_stage.PARAMS, "score"
    )
    start = time.perf_counter()
    score_stage.score(params, out=out, date=DATE, progress=False)
    return time.perf_counter() - start


def same_items(a: Path, b: Path) -> bool:
    x, y = pl.read_parquet(a), pl.read_parquet(b)
    emb = [c for c in x.columns if c.endswith("_emb")]
    close = all(
        np.allclose(np.stack(x[c].to_numpy()), np.stack(y[c].to_numpy()), atol=1e-5) for c in emb
    )
    return x.drop(emb).equals(y.drop(emb)) and close


def same_lists(a: Path, b: Path) -> bool:
    parts = [pl.read_parquet(d / f"dt={DATE}" / "part-*.parquet") for d in (a, b)]
    return parts[0].equals(parts[1])


def best(runner, engine: str, args, out: Path) -> float:
    """Best time of ``args.repeats`` runs, each from scratch (no previous output to reuse)."""
    times = []
    for _ in range(args.repeats):
        shutil.rmtree(out, ignore_errors=True)
        out.unlink(missing_ok=True)
        times.append(runner(engine, args, out))
    return min(times)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1000, help="items per domain")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--batch", type=int, default=256, help="rows per actor call")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--stages", nargs="+", default=["item_features", "score"])
    args = p.parse_args(argv)
    os.environ.pop("RAY_ADDRESS", None)
    torch.set_num_threads(args.cpus)
    import ray

    header = (
        f"\n{args.actors} actors x {args.cpus / args.actors:g} CPU, batches of {args.batch}, "
        f"best of {args.repeats}, {args.cpus} CPUs\n\n"
        "| stage | data | local s | ray s (starts Ray) | ray s (Ray running) | ratio cold "
        "| ratio warm | same output |\n|---|---|---:|---:|---:|---:|---:|---|"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp, chdir(tmp):
        build(args.items, args.users, "score" in args.stages)
        n_items = pl.read_parquet("data/prepared/items.parquet").height
        roles = pl.read_parquet("data/split/roles.parquet")
        n_cold = roles.filter(pl.col("role").is_in(["valid_cold", "test_cold"])).height
        for stage, runner, same, n in (
            ("item_features", run_items, same_items, f"{n_items:,} items"),
            ("score", run_score, same_lists, f"{n_cold:,} cold users"),
        ):
            if stage not in args.stages:
                continue
            suffix = ".parquet" if stage == "item_features" else ""
            out = {e: Path(tmp) / f"{stage}-{e}{suffix}" for e in ("local", "ray")}
            local = best(runner, "local", args, out["local"])
            cold = best(runner, "ray", args, out["ray"])
            ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING)
            try:
                warm = best(runner, "ray", args, out["ray"])
            finally:
                ray.shutdown()
            ok = "yes" if same(out["local"], out["ray"]) else "NO"
            rows.append(
                f"| {stage} | {n} | {local:.2f} | {cold:.2f} | {warm:.2f} | {cold / local:.2f}x "
                f"| {warm / local:.2f}x | {ok} |"
            )
            print("\n".join([header, *rows]), flush=True)  # each stage as soon as it is done
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
