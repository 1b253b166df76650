"""The items and users tables, derived from the final interactions (and item metadata)."""

from __future__ import annotations

import polars as pl

from pipeline.schemas import ITEMS, USERS


def items_table(inter: pl.LazyFrame, meta: pl.LazyFrame | None) -> pl.LazyFrame:
    """Every item with interactions, with its metadata where the source has some
    (``has_metadata`` false otherwise); ``meta``: the parsed metadata of every domain, with a
    ``domain`` column, in file order (None: the source has none)."""
    counts = inter.group_by(["domain", "item_id"]).agg(n_interactions=pl.len().cast(pl.Int64))
    if meta is not None:
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


def users_table(inter: pl.LazyFrame) -> pl.LazyFrame:
    """One row per (user, domain) with history there."""
    return (
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
