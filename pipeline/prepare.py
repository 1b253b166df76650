"""Stage ``prepare``: raw files -> canonical Parquet tables and data statistics.

Outputs (``data/prepared/``, column types in :mod:`pipeline.schemas`):

- ``interactions.parquet``: one row per (domain, user, item); repeated (user, item) rows in a
  domain are merged by ``prepare.duplicates`` (``mean`` rating, the ``last`` one by time, or
  the ``max``), the merge count kept in ``n_duplicates``; optional k-core filter per domain.
- ``items.parquet``: every item with interactions, its metadata where the source has some
  (``has_metadata`` false otherwise: real catalogues have gaps).
- ``users.parquet``: one row per (user, domain) with history there.
- ``metrics/data_stats.json``: counts per domain, cross-domain overlap, duplicates merged,
  records skipped, metadata coverage.

Parsing streams each file into a Parquet part cached under ``data/cache/parsed`` by the raw
file's checksum, so an interrupted run resumes where it stopped; the merge, the k-core filter
and the statistics run as polars lazy queries with the streaming engine.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import polars as pl

from pipeline import cli, paths
from pipeline.config import Params
from pipeline.errors import DamageLog, InputError
from pipeline.io import (
    ParquetPartWriter,
    read_json,
    read_meta,
    sink_parquet,
    stable_hash,
    write_json,
)
from pipeline.schemas import INTERACTIONS, ITEMS, RAW_INTERACTION, RAW_ITEM, USERS, polars_schema
from pipeline.sources import read_interactions, read_items

log = logging.getLogger("prepare")
PARAMS = ("dataset", "prepare")  # read here; dvc.yaml lists the same

PARSER_VERSION = 1  # bump when a parser changes what it extracts: invalidates the parse cache
STREAMING = {"engine": "streaming"}


# --------------------------------------------------------------------------- parsing
def parse_file(
    fmt: str, entry: dict, max_bad_fraction: float, cache_dir: Path = paths.PARSE_CACHE
) -> Path:
    """Parse one raw file into a cached Parquet part (or reuse it); check its damage."""
    kind, source = entry["kind"], entry["path"]
    key = stable_hash([fmt, kind, entry["sha256"], PARSER_VERSION])
    part = cache_dir / f"{entry['domain']}-{kind}-{key}.parquet"
    if part.exists():
        damage = DamageLog(source, max_bad_fraction, **read_meta(part)["damage"])
        log.info("%s: parsed before (%s), reusing", source, part.name)
    else:
        damage = DamageLog(source, max_bad_fraction)
        schema, reader = (
            (RAW_INTERACTION, read_interactions) if kind == "reviews" else (RAW_ITEM, read_items)
        )
        log.info("parsing %s (%s %s)", source, fmt, kind)
        with ParquetPartWriter(part, schema) as writer:
            for batch in reader(fmt, source, damage):
                writer.write(batch)
            # The damage record travels with the part, so a resumed run reports the same.
            writer.set_meta({"damage": damage.state()})
    damage.check()
    return part


# --------------------------------------------------------------------------- merging
def _merge_rule(policy: str) -> pl.Expr:
    rating = pl.col("rating")
    if policy == "mean":
        return rating.mean()
    if policy == "max":
        return rating.max()
    # "last": the latest review by time; file order breaks ties (and orders undated rows).
    return rating.sort_by(["event_timestamp", "line"], nulls_last=False).last()


def merge_duplicates(parts: dict[str, Path], policy: str) -> pl.LazyFrame:
    frames = [pl.scan_parquet(p).with_columns(domain=pl.lit(d)) for d, p in parts.items()]
    return (
        pl.concat(frames)
        .group_by(["domain", "user_id", "item_id"])
        .agg(
            rating=_merge_rule(policy).cast(pl.Float32),
            event_timestamp=pl.col("event_timestamp").max(),
            n_duplicates=pl.len().cast(pl.Int32),
            n_distinct=pl.col("rating").n_unique(),
        )
    )


def k_core(path: Path, k: int, work: Path) -> Path:
    """Iteratively keep users and items with at least ``k`` interactions in their domain."""
    if k <= 1:
        return path
    current, n_rows = path, pl.scan_parquet(path).select(pl.len()).collect().item()
    for step in range(1, 100):
        lf = pl.scan_parquet(current)
        users = lf.group_by(["domain", "user_id"]).len().filter(pl.col("len") >= k)
        items = lf.group_by(["domain", "item_id"]).len().filter(pl.col("len") >= k)
        kept = lf.join(users, on=["domain", "user_id"], how="semi").join(
            items, on=["domain", "item_id"], how="semi"
        )
        nxt = work / f"kcore-{step}.parquet"
        kept.sink_parquet(nxt)
        n_next = pl.scan_parquet(nxt).select(pl.len()).collect().item()
        log.info("k-core %d, pass %d: %d -> %d interactions", k, step, n_rows, n_next)
        if n_next == n_rows:
            return nxt
        current, n_rows = nxt, n_next
    return current


# --------------------------------------------------------------------------- the stage
def prepare(
    params: Params, manifest_path: Path = paths.MANIFEST, out_dir: Path = paths.PREPARED
) -> dict:
    manifest = read_json(manifest_path)
    fmt, prep = manifest["format"], params.prepare
    if fmt != params.dataset.format:
        raise InputError(
            f"was written for format '{fmt}' but dataset.format is '{params.dataset.format}': "
            "run `dvc repro download` first",
            path=manifest_path,
        )
    entries = {(e["domain"], e["kind"]): e for e in manifest["files"]}
    domains = list(params.dataset.domains)
    missing = [d for d in domains if (d, "reviews") not in entries]
    if missing:
        raise InputError(f"has no reviews file for domain(s) {missing}", path=manifest_path)

    inter_parts, meta_parts, damage = {}, {}, {}
    for domain in domains:
        entry = entries[(domain, "reviews")]
        inter_parts[domain] = parse_file(fmt, entry, prep.max_bad_fraction)
        damage[entry["path"]] = read_meta(inter_parts[domain])["damage"]["bad"]
        if pl.scan_parquet(inter_parts[domain]).select(pl.len()).collect().item() == 0:
            raise InputError(f"domain '{domain}' has no usable interactions", path=entry["path"])
        if (domain, "meta") in entries:
            entry = entries[(domain, "meta")]
            meta_parts[domain] = parse_file(fmt, entry, prep.max_bad_fraction)
            damage[entry["path"]] = read_meta(meta_parts[domain])["damage"]["bad"]

    paths.PARSE_CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="prepare-", dir=paths.PARSE_CACHE.parent))
    try:
        merged_path = work / "merged.parquet"
        merge_duplicates(inter_parts, prep.duplicates).sink_parquet(merged_path)
        dup_stats = (
            pl.scan_parquet(merged_path)
            .group_by("domain")
            .agg(
                rows_parsed=pl.col("n_duplicates").sum(),
                duplicate_pairs=(pl.col("n_duplicates") > 1).sum(),
                duplicate_rows_merged=(pl.col("n_duplicates") - 1).sum(),
                conflicting_pairs=(pl.col("n_distinct") > 1).sum(),
            )
            .collect(**STREAMING)
        )
        kept = k_core(merged_path, prep.k_core, work)
        interactions = pl.scan_parquet(kept).select(INTERACTIONS.names)
        for domain in domains:
            if (
                interactions.filter(pl.col("domain") == domain).select(pl.len()).collect().item()
                == 0
            ):
                raise InputError(
                    f"domain '{domain}' has no interactions left after the {prep.k_core}-core "
                    "filter: lower prepare.k_core",
                    path=entries[(domain, "reviews")]["path"],
                )
        meta = {
            "dataset": params.dataset.name,
            "format": fmt,
            "duplicates": prep.duplicates,
            "k_core": prep.k_core,
        }
        sink_parquet(
            interactions.sort(["domain", "user_id", "item_id"]).cast(polars_schema(INTERACTIONS)),
            out_dir / "interactions.parquet",
            meta,
        )
        inter = pl.scan_parquet(out_dir / "interactions.parquet")
        items = _items(inter, meta_parts)
        sink_parquet(items, out_dir / "items.parquet", meta)
        users = (
            inter.group_by(["user_id", "domain"])
            .agg(
                n_interactions=pl.len().cast(pl.Int64),
                mean_rating=pl.col("rating").mean().cast(pl.Float32),
                first_timestamp=pl.col("event_timestamp").min(),
                last_timestamp=pl.col("event_timestamp").max(),
            )
            .select(USERS.names)
            .sort(["user_id", "domain"])
        )
        sink_parquet(users, out_dir / "users.parquet", meta)
        stats = _stats(params, inter, pl.scan_parquet(out_dir / "items.parquet"), dup_stats, damage)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json(stats, paths.DATA_STATS)
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
    return stats


def _items(inter: pl.LazyFrame, meta_parts: dict[str, Path]) -> pl.LazyFrame:
    counts = inter.group_by(["domain", "item_id"]).agg(n_interactions=pl.len().cast(pl.Int64))
    if meta_parts:
        meta = pl.concat(
            [pl.scan_parquet(p).with_columns(domain=pl.lit(d)) for d, p in meta_parts.items()]
        )
        # A catalogue may list an item twice: the first record wins (file order).
        meta = meta.unique(subset=["domain", "item_id"], keep="first", maintain_order=True)
        items = counts.join(
            meta.with_columns(has_metadata=pl.lit(True)), on=["domain", "item_id"], how="left"
        )
    else:
        empty = {n: None for n in ("title", "description", "brand", "price")}
        items = counts.with_columns(
            **{k: pl.lit(v) for k, v in empty.items()},
            categories=pl.lit(None, dtype=pl.List(pl.String)),
            image_urls=pl.lit(None, dtype=pl.List(pl.String)),
            has_metadata=pl.lit(False),
        )
    return (
        items.with_columns(
            pl.col("has_metadata").fill_null(False),
            pl.col("categories").fill_null([]),
            pl.col("image_urls").fill_null([]),
            pl.col("price").cast(pl.Float32),
            pl.col("title").cast(pl.String),
            pl.col("description").cast(pl.String),
            pl.col("brand").cast(pl.String),
        )
        .select(ITEMS.names)
        .sort(["domain", "item_id"])
    )


def _stats(
    params: Params, inter: pl.LazyFrame, items: pl.LazyFrame, dups: pl.DataFrame, damage: dict
) -> dict:
    per_domain = (
        inter.group_by("domain")
        .agg(
            interactions=pl.len(),
            users=pl.col("user_id").n_unique(),
            items=pl.col("item_id").n_unique(),
            rating_mean=pl.col("rating").mean(),
            explicit=pl.col("rating").is_not_null().all(),
        )
        .collect(**STREAMING)
    )
    item_stats = (
        items.group_by("domain")
        .agg(
            items_with_metadata=pl.col("has_metadata").sum(),
            items_with_title=pl.col("title").is_not_null().sum(),
            items_with_description=pl.col("description").is_not_null().sum(),
            items_with_image_url=(pl.col("image_urls").list.len() > 0).sum(),
        )
        .collect(**STREAMING)
    )
    table = per_domain.join(item_stats, on="domain").join(dups, on="domain", how="left")
    domains = {}
    for row in table.sort("domain").iter_rows(named=True):
        d = row.pop("domain")
        row["density"] = row["interactions"] / max(1, row["users"] * row["items"])
        row["metadata_coverage"] = row["items_with_metadata"] / max(1, row["items"])
        row["rating_mean"] = None if row["rating_mean"] is None else round(row["rating_mean"], 6)
        row["density"] = round(row["density"], 8)
        row["metadata_coverage"] = round(row["metadata_coverage"], 6)
        domains[d] = row
    users = inter.select("domain", "user_id").unique()
    overlap = {}
    for a, b in combinations(sorted(domains), 2):
        overlap[f"{a}|{b}"] = (
            users.filter(pl.col("domain") == a)
            .join(users.filter(pl.col("domain") == b), on="user_id", how="semi")
            .select(pl.len())
            .collect(**STREAMING)
            .item()
        )
    return {
        "dataset": params.dataset.name,
        "format": params.dataset.format,
        "duplicates_policy": params.prepare.duplicates,
        "k_core": params.prepare.k_core,
        "domains": domains,
        "overlap_users": overlap,
        "records_skipped": dict(sorted(damage.items())),
    }


def main(argv: Sequence[str] | None = None) -> dict:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    return prepare(cli.params_from(args, "prepare", PARAMS))


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
