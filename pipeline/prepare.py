"""Stage ``prepare``: raw files -> canonical Parquet tables and data statistics.

Outputs (``data/prepared/``, column types in :mod:`pipeline.schemas`):

- ``interactions.parquet``: one row per (domain, user, item); repeated (user, item) rows in a
  domain are merged by ``prepare.duplicates`` (``mean`` rating, the ``last`` one by time, or
  the ``max``), the merge count kept in ``n_duplicates``; optional k-core filter per domain.
  Its metadata (:func:`pipeline.io.read_meta`) holds each domain's ``rating_scale``: the lowest
  and highest rating of its raw records (``{"min": 1.0, "max": 5.0}``; null if implicit).
- ``items.parquet``: every item with interactions, its metadata where the source has some
  (``has_metadata`` false otherwise: real catalogues have gaps).
- ``users.parquet``: one row per (user, domain) with history there.
- ``metrics/data_stats.json``: counts per domain, cross-domain overlap, duplicates merged,
  records skipped, metadata coverage, rating scale (``rating_min`` / ``rating_max``).

Parsing streams each file into a Parquet part cached under ``data/cache/parsed`` by the raw
file's checksum, so an interrupted run resumes where it stopped; the merge, the k-core filter
and the statistics run as polars lazy queries with the streaming engine
(:mod:`pipeline.tables`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from pipeline import cli, paths
from pipeline.config import Params
from pipeline.errors import InputError
from pipeline.io import read_json, scratch_dir, write_json
from pipeline.tables.assemble import write_interactions, write_items, write_users
from pipeline.tables.interactions import (
    duplicate_stats,
    empty_domains,
    k_core,
    merge_buckets,
    rating_scale,
)
from pipeline.tables.parse import parse_domains
from pipeline.tables.stats import data_stats

log = logging.getLogger("prepare")
PARAMS = ("dataset", "prepare")  # read here; dvc.yaml lists the same


def prepare(
    params: Params, manifest_path: Path = paths.MANIFEST, out_dir: Path = paths.PREPARED
) -> dict:
    try:
        manifest = read_json(manifest_path)
    except FileNotFoundError:
        raise InputError("not found: run `dvc repro download` first", path=manifest_path) from None
    except ValueError as exc:
        raise InputError(
            f"unreadable ({exc}): run `dvc repro download`", path=manifest_path
        ) from None
    fmt, prep, dataset = manifest["format"], params.prepare, params.dataset
    if fmt != dataset.format:
        raise InputError(
            f"was written for format '{fmt}' but dataset.format is '{dataset.format}': "
            "run `dvc repro download` first",
            path=manifest_path,
        )
    if not manifest.get("complete", True):
        raise InputError(
            "lists the files of a download that did not finish: run `dvc repro download`",
            path=manifest_path,
        )
    entries = {(e["domain"], e["kind"]): e for e in manifest["files"]}
    domains = list(dataset.domains)
    missing = [d for d in domains if (d, "reviews") not in entries]
    if missing:
        raise InputError(f"has no reviews file for domain(s) {missing}", path=manifest_path)
    inter_parts, meta_parts, skipped = parse_domains(fmt, entries, domains, prep.max_bad_fraction)

    with scratch_dir(paths.PARSE_CACHE.parent / "prepare") as work:
        merged = merge_buckets(inter_parts, prep.duplicates, work)
        dups = duplicate_stats(merged)
        kept = k_core(merged, prep.k_core, work)
        empty = empty_domains(pl.scan_parquet(kept), domains)
        if empty:
            raise InputError(
                f"domain '{empty[0]}' has no interactions left after the {prep.k_core}-core "
                "filter: lower prepare.k_core",
                path=entries[(empty[0], "reviews")]["path"],
            )
        meta = {
            "dataset": dataset.name,
            "format": fmt,
            "duplicates": prep.duplicates,
            "k_core": prep.k_core,
        }
        scale = rating_scale(inter_parts)
        files = {name: out_dir / f"{name}.parquet" for name in ("interactions", "items", "users")}
        write_interactions(kept, domains, files["interactions"], {**meta, "rating_scale": scale})
        overlap = write_users(kept, domains, files["users"], meta, work)
        write_items(files["interactions"], meta_parts, domains, files["items"], meta, work)
        header = {
            "dataset": dataset.name,
            "format": dataset.format,
            "duplicates_policy": prep.duplicates,
            "k_core": prep.k_core,
        }
        inter, users = (pl.scan_parquet(files[n]) for n in ("interactions", "users"))
        stats = data_stats(inter, files["items"], users, dups, overlap, scale, skipped, header)
    write_json(stats, paths.DATA_STATS)
    _log_summary(stats, out_dir)
    return stats


def _log_summary(stats: dict, out_dir: Path) -> None:
    for domain, s in stats["domains"].items():
        log.info(
            "%s: %d interactions, %d users, %d items; %d duplicate rows merged (%d conflicting pairs); "
            "metadata for %.0f%% of items",
            domain,
            s["interactions"],
            s["users"],
            s["items"],
            s["duplicate_rows_merged"],
            s["conflicting_pairs"],
            100 * s["metadata_coverage"],
        )
    for pair, n in stats["overlap_users"].items():
        log.info("users in both %s: %d", pair.replace("|", " and "), n)
    log.info("wrote %s and %s", out_dir, paths.DATA_STATS)


def main(argv: Sequence[str] | None = None) -> dict:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    return prepare(cli.params_from(args, "prepare", PARAMS))


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
