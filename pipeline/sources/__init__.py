"""Parsers for the raw formats the pipeline reads, one module per family.

Every parser streams a file and yields pyarrow record batches in :data:`RAW_INTERACTION` or
:data:`RAW_ITEM` shape, reporting damaged records to a :class:`~pipeline.errors.DamageLog`
with file, line and field. Memory stays bounded by the batch size, whatever the file size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from pipeline.errors import DamageLog
from pipeline.sources import amazon, recbole


def read_interactions(fmt: str, path: str | Path, damage: DamageLog) -> Iterator[pa.RecordBatch]:
    """Reviews/ratings of one domain file in ``fmt`` as RAW_INTERACTION batches."""
    if fmt == "recbole":
        return recbole.read_inter(path, damage)
    # The embedded sample is written in the Amazon 2023 shape, so it takes the same parser.
    release = "amazon2023" if fmt == "synthetic" else fmt
    return amazon.read_reviews(release, path, damage)


def read_items(fmt: str, path: str | Path, damage: DamageLog) -> Iterator[pa.RecordBatch]:
    """Item metadata of one domain file in ``fmt`` as RAW_ITEM batches."""
    if fmt == "recbole":
        return recbole.read_item(path, damage)
    release = "amazon2023" if fmt == "synthetic" else fmt
    return amazon.read_meta(release, path, damage)
