"""The prepared tables written one key range at a time (:mod:`pipeline.tables.buckets`), so
that no step holds more than a range in memory: each range of users is sorted and summarised
alone, each range of items joined to its metadata alone, and the ranges are streamed into the
output files in key order (the same rows, in the same order, as one sort over everything).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from pipeline.io import sink_parquet
from pipeline.schemas import INTERACTIONS, polars_schema
from pipeline.tables import STREAMING
from pipeline.tables.buckets import bucket_count, cut_points, split_by_key
from pipeline.tables.entities import items_table, users_table
from pipeline.tables.interactions import with_domains

META_BUCKET_BYTES = 256 << 20  # item metadata (titles, descriptions) joined per item range


def write_interactions(
    ranges: list[Path], domains: list[str], out: Path, meta: Mapping[str, Any]
) -> None:
    """``interactions.parquet`` (sorted by domain, user, item) from the merged ranges of users,
    each sorted (:func:`~pipeline.tables.interactions.merge_buckets`)."""
    domain = pl.col("domain")
    pieces = [_interactions(p).filter(domain == d) for d in sorted(domains) for p in ranges]
    sink_parquet(pl.concat(pieces), out, meta)


def _interactions(path: Path) -> pl.LazyFrame:
    return pl.scan_parquet(path).select(INTERACTIONS.names).cast(polars_schema(INTERACTIONS))


def write_users(
    ranges: list[Path], domains: list[str], out: Path, meta: Mapping[str, Any], work: Path
) -> dict[str, int]:
    """``users.parquet`` from the merged ranges of users, one at a time; returns the users in
    both domains of every pair (``"a|b"``), counted per range (a user's rows all fall in one)."""
    parts, overlap = [], dict.fromkeys((f"{a}|{b}" for a, b in combinations(sorted(domains), 2)), 0)
    for i, path in enumerate(ranges):
        parts.append(work / f"users-{i}.parquet")
        users_table(_interactions(path)).sink_parquet(parts[-1])
        for pair, n in _overlap(pl.scan_parquet(parts[-1]), sorted(domains)).items():
            overlap[pair] += n
    sink_parquet(pl.concat([pl.scan_parquet(p) for p in parts]), out, meta)
    return overlap


def write_items(
    inter: Path, meta_parts: dict[str, Path], domains: list[str], out: Path,
    meta: Mapping[str, Any], work: Path,
) -> None:  # fmt: skip
    """``items.parquet`` from the final interactions, one range of item ids at a time (enough
    ranges for both the interactions and the metadata texts to fit): the interactions' item
    ids and the metadata are cut into those ranges in one pass each, then joined range by
    range."""
    rows = pl.scan_parquet(inter).select(pl.len()).collect().item()
    text = sum(_bytes(p) for p in meta_parts.values())
    n = max(bucket_count(rows), bucket_count(text, META_BUCKET_BYTES))
    if n == 1:
        catalogue = with_domains(meta_parts) if meta_parts else None
        sink_parquet(items_table(pl.scan_parquet(inter), catalogue), out, meta)
        return
    cuts = cut_points([inter], "item_id", n)
    ids = split_by_key([(inter, {})], "item_id", cuts, work / "ids", ["domain", "item_id"])
    texts = [None] * len(ids)
    if meta_parts:
        sources = [(p, {"domain": d}) for d, p in meta_parts.items()]
        texts = [pl.scan_parquet(f) for f in split_by_key(sources, "item_id", cuts, work / "meta")]
    parts = []
    for i, (path, catalogue) in enumerate(zip(ids, texts, strict=True)):
        parts.append(work / f"items-{i}.parquet")
        items_table(pl.scan_parquet(path), catalogue).sink_parquet(parts[-1])
    domain = pl.col("domain")
    pieces = [pl.scan_parquet(p).filter(domain == d) for d in sorted(domains) for p in parts]
    sink_parquet(pl.concat(pieces), out, meta)


def _bytes(part: Path) -> int:
    """Uncompressed size of a Parquet file's data."""
    info = pq.read_metadata(part)
    return sum(info.row_group(i).total_byte_size for i in range(info.num_row_groups))


def _overlap(users: pl.LazyFrame, domains: list[str]) -> dict[str, int]:
    """Users with history in both domains, for every pair (``"a|b"``)."""
    overlap = {}
    for a, b in combinations(domains, 2):
        overlap[f"{a}|{b}"] = (
            users.filter(pl.col("domain") == a)
            .join(users.filter(pl.col("domain") == b), on="user_id", how="semi")
            .select(pl.len())
            .collect(**STREAMING)
            .item()
        )
    return overlap
