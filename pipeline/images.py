"""Stage ``images``: fetch item images into a sharded Parquet store.

Reads the image URLs of ``data/prepared/items.parquet`` (the first ``images.max_per_item`` of
each item) and writes ``data/images/``: Parquet shards with one row per (item, URL), the
image bytes of ``ok`` rows, a status per row, and ``manifest.json`` with the counts
(:mod:`pipeline.features.image_store` documents the layout and the statuses, fetching lives
in :mod:`pipeline.features.image_fetch`).

Downloads run on a pool of ``images.workers`` threads with ``images.timeout_seconds`` and
``images.retries``; bodies over ``images.max_bytes`` are recorded as ``too_large``. A second
run reuses every ``ok`` row whose (domain, item_id, position, url) is unchanged and fetches the
rest again; the new store is written beside the old one and renamed into place, so a crash
leaves the previous store readable. Under ``accelerate launch`` each rank fetches every
``world``-th item and writes its own shards; rank 0 renames the finished directory into place.

With ``images.enabled: false`` the stage writes an empty store (one empty shard and a manifest
saying so) and touches no network.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from pipeline import cli, distributed, paths
from pipeline.config import Params
from pipeline.config.images import ImagesParams
from pipeline.features.image_fetch import fetch_rank, work_list
from pipeline.features.image_store import IMAGES, MANIFEST, manifest
from pipeline.io import atomic_dir, read_json, replace_dir, write_json

log = logging.getLogger("images")
PARAMS = ("images",)  # read here; dvc.yaml lists the same


def images(params: Params, items_path: Path = paths.ITEMS, out_dir: Path = IMAGES) -> dict:
    """Fetch (or reuse) the item images of this rank; on rank 0 return the manifest written."""
    cfg = params.images
    rank = distributed.rank("cpu")  # downloads need no accelerator
    if cfg.enabled:
        slots = work_list(items_path, cfg.max_per_item, rank)
        log.info(
            "images: %d image URL slots of %d items (rank %d of %d), %d workers",
            slots.height,
            slots.select(pl.col("item_index").n_unique()).item(),
            rank.index,
            rank.world,
            cfg.workers,
        )
    else:
        log.info("images: off (images.enabled is false)")
        slots = None

    if rank.world == 1:
        with atomic_dir(out_dir) as tmp:
            stats = fetch_rank(cfg, slots, out_dir, tmp, rank)
            result = manifest(cfg, [stats], rank.world)
            write_json(result, tmp / MANIFEST)
    else:
        result = _gather_ranks(cfg, slots, out_dir, rank)
    if rank.is_main:
        _log_summary(result, out_dir)
    return result


def _gather_ranks(
    cfg: ImagesParams, slots: pl.DataFrame | None, out_dir: Path, rank: distributed.Rank
) -> dict:
    """Every rank writes its shards into one shared directory (a name every rank knows);
    rank 0 adds the manifest and renames the directory into place."""
    incoming = out_dir.with_name(f".{out_dir.name}.incoming")
    if rank.is_main:
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir(parents=True)
    distributed.barrier()
    stats = fetch_rank(cfg, slots, out_dir, incoming, rank)
    write_json(stats, incoming / f"stats-{rank.index:03d}.json")
    distributed.barrier()
    result = None
    if rank.is_main:
        parts = sorted(incoming.glob("stats-*.json"))
        result = manifest(cfg, [read_json(p) for p in parts], rank.world)
        for p in parts:
            p.unlink()
        write_json(result, incoming / MANIFEST)
        replace_dir(incoming, out_dir)
    distributed.barrier()
    return result if result is not None else read_json(out_dir / MANIFEST)


def _log_summary(manifest: dict, out_dir: Path) -> None:
    if not manifest["enabled"]:
        log.info("images: wrote an empty store to %s", out_dir)
        return
    counts = ", ".join(f"{s} {n}" for s, n in manifest["status"].items() if n)
    log.info(
        "images: %d items -> %d rows in %s (%d shards): %s; fetched %d, reused %d",
        manifest["items"],
        manifest["rows"],
        out_dir,
        len(manifest["shards"]),
        counts or "nothing",
        manifest["fetched"],
        manifest["reused"],
    )
    if manifest["problems"]:
        log.warning("images: first problems:\n  %s", "\n  ".join(manifest["problems"]))


def main(argv: Sequence[str] | None = None) -> dict:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    return images(cli.params_from(args, "images", PARAMS))


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
