"""Key ranges that cut a table into buckets small enough to group and sort in memory.

A group-by or a sort holds every key it has seen; over a whole Amazon category (tens of millions
of reviews, millions of users) that is gigabytes. Cut by ranges of the key instead (users
``[a, b)``, then ``[b, c)``...), each range is grouped and sorted alone, and the ranges written one
after the other come out in key order, the same rows as one sort over everything. The cut points
are quantiles of a sample of the keys, so ranges hold about the same number of rows whatever the
ids look like (random hashes, numbers, ids sorted in the file).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from pipeline.tables import STREAMING

BUCKET_ROWS = 1_000_000  # rows per range: a few hundred MB to group and sort
SAMPLES_PER_BUCKET = 1_000
BATCH_ROWS = 262_144  # rows read at a time while cutting a file into ranges


def bucket_count(rows: int, per_bucket: int | None = None) -> int:
    """Ranges needed for ``rows`` rows (or bytes) at ``per_bucket`` (default BUCKET_ROWS) each."""
    return max(1, -(-rows // (per_bucket or BUCKET_ROWS)))


def cut_points(frame: pl.LazyFrame, key: str, rows: int, n: int) -> list[str]:
    """The ``n - 1`` values of ``key`` that cut ``frame`` (``rows`` rows) into ``n``
    consecutive ranges of about equal size (quantiles of an even sample of its rows)."""
    if n <= 1:
        return []
    step = max(1, rows // (n * SAMPLES_PER_BUCKET))
    sample = (
        frame.select(key)
        .with_row_index("_row")
        .filter(pl.col("_row") % step == 0)
        .select(key)
        .collect(**STREAMING)
        .to_series()
        .drop_nulls()
        .sort()
    )
    return sorted({sample[len(sample) * i // n] for i in range(1, n)}) if len(sample) else []


def key_ranges(frame: pl.LazyFrame, key: str, rows: int, n: int) -> list[pl.Expr]:
    """``n`` filters on ``key`` that cut ``frame`` into ranges (:func:`cut_points`), in key
    order; for a file sorted by ``key``, whose row groups a filter can skip."""
    cuts, col = cut_points(frame, key, rows, n), pl.col(key)
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
            for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
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
