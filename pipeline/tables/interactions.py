"""One row per (domain, user, item): repeated rows merged by a policy, then the k-core filter."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from pipeline.tables import STREAMING

log = logging.getLogger("prepare")


def _merge_rule(policy: str) -> pl.Expr:
    rating = pl.col("rating")
    if policy == "mean":
        return rating.mean()
    if policy == "max":
        return rating.max()
    # "last": the latest review by time; file order breaks ties (and orders undated rows).
    return rating.sort_by(["event_timestamp", "line"], nulls_last=False).last()


def merge_duplicates(parts: dict[str, Path], policy: str) -> pl.LazyFrame:
    """The parsed interaction parts (domain -> part) with repeated (user, item) rows of a
    domain merged by ``policy`` (mean | last | max); ``n_duplicates`` counts the rows merged
    into each, ``n_distinct`` their distinct ratings."""
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


def duplicate_stats(merged: Path) -> pl.DataFrame:
    """Per domain: rows parsed, pairs that repeat, rows merged away, pairs whose ratings differ."""
    return (
        pl.scan_parquet(merged)
        .group_by("domain")
        .agg(
            rows_parsed=pl.col("n_duplicates").sum(),
            duplicate_pairs=(pl.col("n_duplicates") > 1).sum(),
            duplicate_rows_merged=(pl.col("n_duplicates") - 1).sum(),
            conflicting_pairs=(pl.col("n_distinct") > 1).sum(),
        )
        .collect(**STREAMING)
    )


def k_core(path: Path, k: int, work: Path) -> Path:
    """Iteratively keep users and items with at least ``k`` interactions in their domain; the
    passes are written under ``work``. ``k`` <= 1 keeps everything."""
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


def empty_domains(interactions: pl.LazyFrame, domains: list[str]) -> list[str]:
    """The ``domains`` without a single interaction left."""
    present = set(interactions.select(pl.col("domain").unique()).collect()["domain"].to_list())
    return [d for d in domains if d not in present]


def rating_scale(parts: dict[str, Path]) -> dict[str, dict[str, float] | None]:
    """Per domain, the lowest and highest rating among its parsed records, before merging and
    filtering (``{"min": 1.0, "max": 5.0}``), or None where it has no ratings (implicit
    feedback): the scale of the domain's ratings, which models clip their predictions to."""
    scale = {}
    for domain, part in sorted(parts.items()):
        rating = pl.col("rating")
        row = pl.scan_parquet(part).select(min=rating.min(), max=rating.max()).collect()
        bounds = row.row(0, named=True)
        scale[domain] = None if bounds["min"] is None else bounds
    return scale
