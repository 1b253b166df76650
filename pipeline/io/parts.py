"""A directory of ``<prefix>-NNNNN.parquet`` parts, rotated by row count.

Large outputs (image shards, top-K lists) are written as several Parquet files so that a
reader can stream them and no single file grows without bound. :class:`RotatingParquetWriter`
opens a new part once the current one holds ``rows_per_part`` rows; every part is written
atomically by :class:`~pipeline.io.ParquetPartWriter` and carries the same footer metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.io import ParquetPartWriter


class RotatingParquetWriter:
    """Writes tables into ``directory/<prefix>-00000.parquet``, ``-00001``, ...

    A table passed to :meth:`write` is never split across parts: a part is closed only between
    two writes, once it holds ``rows_per_part`` rows or more. A caller that wants parts of
    exactly ``rows_per_part`` rows sizes its tables with :attr:`room`.
    """

    def __init__(
        self,
        directory: str | Path,
        schema: pa.Schema,
        rows_per_part: int,
        prefix: str = "part",
        meta: Mapping[str, Any] | None = None,
        finished: Sequence[tuple[str, int]] = (),
    ):
        """``finished``: ``(name, rows)`` of parts already in ``directory`` (a resumed build):
        they are kept, and numbering goes on after them."""
        if rows_per_part < 1:
            raise ValueError(f"rows_per_part must be at least 1, got {rows_per_part}")
        self.directory = Path(directory)
        self.schema = schema
        self.rows_per_part = rows_per_part
        self.prefix = prefix
        self.meta = meta
        self.parts: list[str] = [name for name, _ in finished]  # file names, in order written
        self.part_rows: list[int] = [rows for _, rows in finished]  # rows of each finished part
        self.rows = sum(self.part_rows)
        self._writer: ParquetPartWriter | None = None

    @property
    def room(self) -> int:
        """Rows the current part takes before it is full (a full ``rows_per_part`` when none)."""
        if self._writer is None or self._writer.rows >= self.rows_per_part:
            return self.rows_per_part
        return self.rows_per_part - self._writer.rows

    def write(self, table: pa.Table) -> None:
        """Append ``table`` (cast to the schema) to the current part, opening one if needed."""
        if table.num_rows == 0:
            return
        if self._writer is not None and self._writer.rows >= self.rows_per_part:
            self._finish()
        if self._writer is None:
            self._open()
        self._writer.write(table)
        self.rows += table.num_rows

    def close(self) -> None:
        """Finish the open part. With nothing written at all, one empty part keeps the schema,
        so that readers of the directory still find the columns."""
        if self._writer is None and not self.parts:
            self._open()
        if self._writer is not None:
            self._finish()

    def abort(self) -> None:
        """Drop the open part; finished parts stay (callers write into a temporary directory)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.parts):05d}.parquet"
        self._writer = ParquetPartWriter(self.directory / name, self.schema, self.meta)
        self.parts.append(name)

    def _finish(self) -> None:
        assert self._writer is not None
        self._writer.close()
        self.part_rows.append(self._writer.rows)
        self._writer = None
