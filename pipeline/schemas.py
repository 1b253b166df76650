"""Column types of the tables the pipeline writes. Readers can rely on these exactly.

Every table carries its key columns explicitly (``user_id``, ``item_id``, ``domain``); vectors
are fixed-size float lists next to their key, never aligned by row order.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

TIMESTAMP = pa.timestamp("ms", tz="UTC")

# One parsed review, before cleaning (what a source parser yields).
RAW_INTERACTION = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("rating", pa.float32()),  # null for implicit feedback
        ("event_timestamp", TIMESTAMP),  # null when the source has no time
        ("line", pa.int64()),  # line number in the source file, for error messages
    ]
)

# One parsed item metadata record.
RAW_ITEM = pa.schema(
    [
        ("item_id", pa.string()),
        ("title", pa.string()),
        ("description", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("image_urls", pa.list_(pa.string())),
        ("brand", pa.string()),
        ("price", pa.float32()),
    ]
)

# data/prepared/interactions.parquet: one row per (domain, user, item), duplicates merged.
# Its metadata's rating_scale: each domain's {"min", "max"} raw rating (null: implicit).
INTERACTIONS = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("domain", pa.string()),
        ("rating", pa.float32()),
        ("event_timestamp", TIMESTAMP),
        ("n_duplicates", pa.int32()),  # how many source rows were merged into this one
    ]
)

# data/prepared/items.parquet: every item that has interactions, with or without metadata.
ITEMS = pa.schema(
    [
        ("item_id", pa.string()),
        ("domain", pa.string()),
        ("title", pa.string()),
        ("description", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("image_urls", pa.list_(pa.string())),
        ("brand", pa.string()),
        ("price", pa.float32()),
        ("has_metadata", pa.bool_()),
        ("n_interactions", pa.int64()),
    ]
)

# data/prepared/users.parquet: one row per (user, domain) with history there.
USERS = pa.schema(
    [
        ("user_id", pa.string()),
        ("domain", pa.string()),
        ("n_interactions", pa.int64()),
        ("mean_rating", pa.float32()),
        ("first_timestamp", TIMESTAMP),
        ("last_timestamp", TIMESTAMP),
    ]
)

ROLES = ("train_overlap", "valid_cold", "test_cold", "side", "source_only")

# data/split/roles.parquet: every user of the source or target domain, exactly one role.
SPLIT = pa.schema(
    [
        ("user_id", pa.string()),
        ("role", pa.string()),  # one of ROLES
        ("n_source", pa.int64()),
        ("n_target", pa.int64()),
    ]
)

# Each method's ranking metric per validation cold user with a positive (evaluate): what
# ``score.method: auto`` compares methods on, paired by user.
VALID_USERS = pa.schema(
    [
        ("method", pa.string()),
        ("user_id", pa.string()),
        ("ndcg@10", pa.float64()),
    ]
)


def polars_schema(schema: pa.Schema) -> pl.Schema:
    """The polars types of a table schema, for casting lazy queries before they are written."""
    return pl.from_arrow(schema.empty_table()).schema
