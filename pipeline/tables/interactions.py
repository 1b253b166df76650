"""One row per (domain, user, item): repeated rows merged by a policy, then the k-core filter."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from pipeline.tables import STREAMING
from pipeline.tables.buckets import bucket_count, cut_points, split_by_key

log = logging.getLogger("prepare")


def _merge_rule(policy: str) -> pl.Expr:
    rating = pl.col("rating")
    if policy == "mean":
        return rating.mean()
    if policy == "max":
        return rating.max()
    # "last": the latest review by time; file order breaks ties (and orders undated rows).
    return rating.sort_by(["event_timestamp", "line"], nulls_last=False).last()


def with_domains(parts: dict[str, Path]) -> pl.LazyFrame:
    """The parts (domain -> part) as one frame with a ``domain`` column."""
    return pl.concat([pl.scan_parquet(p).with_columns(domain=pl.lit(d)) for d, p in parts.items()])


def merge_duplicates(frame: pl.LazyFrame, policy: str) -> pl.LazyFrame:
    """Parsed interactions (with their domain) with repeated (user, item) rows of a domain
    merged by ``policy`` (mean | last | max); ``n_duplicates`` counts the rows merged into
    each, ``n_distinct`` their distinct ratings."""
    return frame.group_by(["domain", "user_id", "item_id"]).agg(
        rating=_merge_rule(policy).cast(pl.Float32),
        event_timestamp=pl.col("event_timestamp").max(),
        n_duplicates=pl.len().cast(pl.Int32),
        n_distinct=pl.col("rating").n_unique(),
    )


def merge_buckets(parts: dict[str, Path], policy: str, work: Path) -> list[Path]:
    """:func:`merge_duplicates` one range of users at a time (every row of a user lands in the
    same range, so its duplicates meet): the parts are cut into ranges of users in one pass,
    then each range is merged, sorted by domain, user and item and written to a file under
    ``work``, in user order; memory is bounded by the range, not the release."""
    frame = with_domains(parts)
    rows = frame.select(pl.len()).collect().item()
    n = bucket_count(rows)
    ranges = [frame]
    if n > 1:
        cuts = cut_points(list(parts.values()), "user_id", n)
        sources = [(p, {"domain": d}) for d, p in parts.items()]
        files = split_by_key(sources, "user_id", cuts, work / "by-user")
        ranges = [pl.scan_parquet(f) for f in files]
        log.info("merging %d parsed rows in %d ranges of users", rows, len(files))
    out = []
    for i, rows_in_range in enumerate(ranges):
        out.append(work / f"merged-{i}.parquet")
        merged = merge_duplicates(rows_in_range, policy)
        merged.sort(["domain", "user_id", "item_id"]).sink_parquet(out[-1])
    return out


def duplicate_stats(merged: list[Path]) -> pl.DataFrame:
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


def k_core(paths: list[Path], k: int, work: Path) -> list[Path]:
    """Iteratively keep users and items with at least ``k`` interactions in their domain; the
    passes are written under ``work``. ``paths``: the merged interactions, one sorted range of
    users per file (a user's count is its file's; an item's is counted over all files first).
    ``k`` <= 1 keeps everything."""
    if k <= 1:
        return paths
    current, n_rows = paths, _rows(paths)
    for step in range(1, 100):
        items = work / f"kcore-{step}-items.parquet"
        (
            pl.scan_parquet(current)
            .group_by(["domain", "item_id"])
            .len()
            .filter(pl.col("len") >= k)
            .select("domain", "item_id")
            .sink_parquet(items)
        )
        nxt = []
        for i, path in enumerate(current):
            lf = pl.scan_parquet(path)
            users = lf.group_by(["domain", "user_id"]).len().filter(pl.col("len") >= k)
            keys = {"how": "semi", "maintain_order": "left"}  # the range stays sorted
            kept = lf.join(users, on=["domain", "user_id"], **keys).join(
                pl.scan_parquet(items), on=["domain", "item_id"], **keys
            )
            nxt.append(work / f"kcore-{step}-{i}.parquet")
            kept.sink_parquet(nxt[-1])
        n_next = _rows(nxt)
        log.info("k-core %d, pass %d: %d -> %d interactions", k, step, n_rows, n_next)
        if n_next == n_rows:
            return nxt
        current, n_rows = nxt, n_next
    return current


def _rows(paths: list[Path]) -> int:
    return pl.scan_parquet(paths).select(pl.len()).collect().item()


def empty_domains(interactions: pl.LazyFrame, domains: list[str]) -> list[str]:
    """The ``domains`` without a single interaction left."""
    present = interactions.select(pl.col("domain").unique()).collect(**STREAMING)
    present = set(present["domain"].to_list())
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
