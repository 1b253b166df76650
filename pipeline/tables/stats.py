"""``metrics/data_stats.json``: counts per domain, cross-domain overlap, duplicates merged,
records skipped, metadata coverage."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.tables import STREAMING
from pipeline.tables.buckets import row_groups


def data_stats(
    inter: pl.LazyFrame,
    items: Path,
    users: pl.LazyFrame,
    dups: pl.DataFrame,
    overlap: dict[str, int],
    scale: dict[str, dict | None],
    skipped: dict,
    header: dict,
) -> dict:
    """The statistics of the final tables (every query a streaming one over a few groups;
    ``items``, with its long texts, is read one row group at a time).
    ``dups``: :func:`~pipeline.tables.interactions.duplicate_stats`; ``overlap``: users in both
    domains of each pair (:func:`~pipeline.tables.assemble.write_users`); ``scale``:
    :func:`~pipeline.tables.interactions.rating_scale` (each domain's ``rating_min`` /
    ``rating_max``, null for implicit feedback); ``skipped``: records skipped per raw file;
    ``header``: what produced the tables."""
    per_domain = (
        inter.group_by("domain")
        .agg(
            interactions=pl.len(),
            rating_mean=pl.col("rating").mean(),
            explicit=pl.col("rating").is_not_null().all(),
        )
        .collect(**STREAMING)
    )
    # One users row per (user, domain), one items row per (domain, item) with interactions.
    counts = users.group_by("domain").agg(users=pl.len()).collect(**STREAMING)
    per_domain = per_domain.join(counts, on="domain", how="left")
    columns = ["domain", "has_metadata", "title", "description", "image_urls"]
    item_stats = (
        pl.concat([_item_counts(group) for group in row_groups(items, columns)])
        .group_by("domain")
        .sum()
    )
    table = per_domain.join(item_stats, on="domain", how="left").join(dups, on="domain", how="left")
    domains = {}
    for row in table.sort("domain").iter_rows(named=True):
        d = row.pop("domain")
        row["density"] = row["interactions"] / max(1, row["users"] * row["items"])
        row["metadata_coverage"] = row["items_with_metadata"] / max(1, row["items"])
        row["rating_mean"] = None if row["rating_mean"] is None else round(row["rating_mean"], 6)
        row["density"] = round(row["density"], 8)
        row["metadata_coverage"] = round(row["metadata_coverage"], 6)
        bounds = scale[d] or {"min": None, "max": None}
        row["rating_min"], row["rating_max"] = bounds["min"], bounds["max"]
        domains[d] = row
    return {
        **header,
        "domains": domains,
        "overlap_users": overlap,
        "records_skipped": dict(sorted(skipped.items())),
    }


def _item_counts(items: pl.DataFrame) -> pl.DataFrame:
    return items.group_by("domain").agg(
        items=pl.len(),
        items_with_metadata=pl.col("has_metadata").sum(),
        items_with_title=pl.col("title").is_not_null().sum(),
        items_with_description=pl.col("description").is_not_null().sum(),
        items_with_image_url=(pl.col("image_urls").list.len() > 0).sum(),
    )
