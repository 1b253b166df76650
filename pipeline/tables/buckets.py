"""Key ranges that cut a table into buckets small enough to group and sort in memory.

A group-by or a sort holds every key it has seen; over a whole Amazon category (tens of millions
of reviews, millions of users) that is gigabytes. Cut by ranges of the key instead (users
``[a, b)``, then ``[b, c)``...), each range is grouped and sorted alone, and the ranges written one
after the other come out in key order, the same rows as one sort over everything. The cut points
are quantiles of a sample of the keys, so ranges hold about the same number of rows whatever the
ids look like (random hashes, numbers, ids sorted in the file).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

BUCKET_ROWS = 1_000_000  # rows per range: a few hundred MB to group and sort
SAMPLES_PER_BUCKET = 1_000
BATCH_ROWS = 262_144  # rows read at a time while cutting a file into ranges


def bucket_count(rows: int, per_bucket: int | None = None) -> int:
    """Ranges needed for ``rows`` rows (or bytes) at ``per_bucket`` (default BUCKET_ROWS) each."""
    return max(1, -(-rows // (per_bucket or BUCKET_ROWS)))


def cut_points(paths: Sequence[Path], key: str, n: int) -> list[str]:
    """The ``n - 1`` values of ``key`` that cut the rows of the Parquet files ``paths`` (taken
    in order, as one table) into ``n`` consecutive ranges of about equal size: quantiles of an
    even sample of the rows, read one row group of the key column at a time, so that the
    sample, not the column, is what is held."""
    if n <= 1:
        return []
    rows = sum(pq.read_metadata(p).num_rows for p in paths)
    step = max(1, rows // (n * SAMPLES_PER_BUCKET))
    sample, seen = [], 0
    for path in paths:
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            column = parquet.read_row_group(group, columns=[key]).column(0)
            # pyarrow's take copies the strings out; a polars gather would keep every row
            # group's buffers alive, which is the whole column again.
            sample.append(column.take(np.arange(-seen % step, len(column), step)))
            seen += len(column)
    if not sample:
        return []
    keys = pl.concat([pl.from_arrow(part) for part in sample]).drop_nulls().sort()
    return sorted({keys[len(keys) * i // n] for i in range(1, n)}) if len(keys) else []


def row_groups(path: Path, columns: list[str]) -> Iterator[pl.DataFrame]:
    """``columns`` of a Parquet file, one row group at a time (however large the file)."""
    parquet = pq.ParquetFile(path, pre_buffer=False)
    for group in range(parquet.num_row_groups):
        yield pl.from_arrow(parquet.read_row_group(group, columns=columns, use_threads=False))


def key_ranges(paths: Sequence[Path], key: str, n: int) -> list[pl.Expr]:
    """``n`` filters on ``key`` that cut the rows of ``paths`` into ranges (:func:`cut_points`),
    in key order; for a file sorted by ``key``, whose row groups a filter can skip."""
    cuts, col = cut_points(paths, key, n), pl.col(key)
    ranges = []
    for lo, hi in zip([None, *cuts], [*cuts, None], strict=True):
        lower = pl.lit(True) if lo is None else col >= lo
        ranges.append(lower if hi is None else lower & (col < hi))
    return ranges


def split_by_key(
    sources: list[tuple[Path, dict[str, str]]], key: str, cuts: list[str], out: Path,
    columns: list[str] | None = None,
) -> list[Path]:  # fmt: skip
    """Copy the rows of the Parquet files ``sources`` (each with the constant columns of its
    dict added, e.g. its domain) into one file per range of ``key`` (``cuts``: the values
    that start the second range, the third...) under ``out``, in one pass, in source order
    within a range; ``columns``: only these (the constants included)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"range-{i}.parquet" for i in range(len(cuts) + 1)]
    starts = pl.Series(cuts, dtype=pl.String)

    def rows(table, constants: dict[str, str]) -> pl.DataFrame:
        frame = pl.from_arrow(table).with_columns(
            **{name: pl.lit(value) for name, value in constants.items()}
        )
        return frame.select(columns) if columns else frame

    schema = rows(pq.read_schema(sources[0][0]).empty_table(), sources[0][1]).to_arrow().schema
    writers = [pq.ParquetWriter(p, schema, compression="zstd") for p in paths]
    try:
        for path, constants in sources:
            # pre_buffer (pyarrow's default) would read the whole file ahead of the batches.
            parquet = pq.ParquetFile(path, pre_buffer=False)
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, use_threads=False):
                frame = rows(batch, constants)
                which = starts.search_sorted(frame[key], side="right")
                parts = frame.with_columns(_range=which).partition_by(
                    "_range", as_dict=True, maintain_order=True, include_key=False
                )
                for (i,), part in parts.items():
                    writers[i].write_table(part.to_arrow().cast(schema))
    finally:
        for writer in writers:
            writer.close()
    return paths
