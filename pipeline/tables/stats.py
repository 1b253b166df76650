"""``metrics/data_stats.json``: counts per domain, cross-domain overlap, duplicates merged,
records skipped, metadata coverage."""

from __future__ import annotations

from itertools import combinations

import polars as pl

from pipeline.tables import STREAMING


def data_stats(
    inter: pl.LazyFrame,
    items: pl.LazyFrame,
    dups: pl.DataFrame,
    scale: dict[str, dict | None],
    skipped: dict,
    header: dict,
) -> dict:
    """The statistics of the final tables. ``dups``: :func:`~pipeline.tables.interactions.
    duplicate_stats`; ``scale``: :func:`~pipeline.tables.interactions.rating_scale` (each
    domain's ``rating_min`` / ``rating_max``, null for implicit feedback); ``skipped``: records
    skipped per raw file; ``header``: what produced the tables."""
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
        bounds = scale[d] or {"min": None, "max": None}
        row["rating_min"], row["rating_max"] = bounds["min"], bounds["max"]
        domains[d] = row
    return {
        **header,
        "domains": domains,
        "overlap_users": _overlap(inter, sorted(domains)),
        "records_skipped": dict(sorted(skipped.items())),
    }


def _overlap(inter: pl.LazyFrame, domains: list[str]) -> dict[str, int]:
    """Users with history in both domains, for every pair (``"a|b"``)."""
    users = inter.select("domain", "user_id").unique()
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
