"""Key ranges that cut a table into buckets small enough to group and sort in memory.

A group-by or a sort holds every key it has seen; over a whole Amazon category (tens of millions
of reviews, millions of users) that is gigabytes. Cut by ranges of the key instead (users
``[a, b)``, then ``[b, c)``...), each range is grouped and sorted alone, and the ranges written one
after the other come out in key order, the same rows as one sort over everything. The cut points
are quantiles of a sample of the keys, so ranges hold about the same number of rows whatever the
ids look like (random hashes, numbers, ids sorted in the file).
"""

from __future__ import annotations

import polars as pl

from pipeline.tables import STREAMING

BUCKET_ROWS = 2_000_000  # rows per range: a few hundred MB to group and sort
SAMPLES_PER_BUCKET = 1_000


def bucket_count(rows: int, per_bucket: int | None = None) -> int:
    """Ranges needed for ``rows`` rows (or bytes) at ``per_bucket`` (default BUCKET_ROWS) each."""
    return max(1, -(-rows // (per_bucket or BUCKET_ROWS)))


def key_ranges(frame: pl.LazyFrame, key: str, rows: int, n: int) -> list[pl.Expr]:
    """``n`` filters on ``key`` that cut ``frame`` (``rows`` rows) into consecutive ranges of
    about equal size, in key order; a single always-true filter when ``n`` is 1."""
    if n <= 1:
        return [pl.lit(True)]
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
    cuts = sorted({sample[len(sample) * i // n] for i in range(1, n)}) if len(sample) else []
    col = pl.col(key)
    ranges = []
    for lo, hi in zip([None, *cuts], [*cuts, None], strict=True):
        lower = pl.lit(True) if lo is None else col >= lo
        ranges.append(lower if hi is None else lower & (col < hi))
    return ranges
