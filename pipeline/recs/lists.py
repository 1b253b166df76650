"""Top-K lists as rows of ``part-NNNNN.parquet`` files, encoded on a background thread.

One row per (user, rank): ``user_id``, ``rank`` (1..K, int32), ``item_id``, ``score``
(float32), ``method``, ``model_version``; in the users' order then by rank. Each chunk of users
is one Parquet row group; a part is closed between chunks once it holds :data:`ROWS_PER_PART`
rows (:class:`pipeline.io.parts.RotatingParquetWriter`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.io.parts import RotatingParquetWriter
from pipeline.recs.rank import Chunk

SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("rank", pa.int32()),
        ("item_id", pa.string()),
        ("score", pa.float32()),
        ("method", pa.string()),
        ("model_version", pa.string()),
    ]
)
# Rows per part file: at K = 100, 50,000 users, some tens of MB of zstd Parquet, small enough
# for a reader to stream one part at a time and large enough to keep the file count low.
ROWS_PER_PART = 5_000_000


class ListWriter:
    """Chunks of top-K item indices and scores, as rows of :data:`SCHEMA` in rotating parts."""

    def __init__(
        self, directory: Path, item_ids: np.ndarray, method: str, version: str, meta: dict
    ):
        self.items = pa.array(item_ids, pa.string())
        self.method = pa.array([method], pa.string())
        self.version = pa.array([version], pa.string())
        self._parts = RotatingParquetWriter(directory, SCHEMA, ROWS_PER_PART, meta=meta)

    @property
    def parts(self) -> list[str]:
        return self._parts.parts

    @property
    def rows(self) -> int:
        return self._parts.rows

    def write(self, user_ids: np.ndarray, idx: np.ndarray, vals: np.ndarray) -> int:
        """Rows of users ``user_ids`` (c,), best items ``idx`` (c, k) with scores ``vals``;
        ``-inf`` scores are no item (fewer than k left, or no list)."""
        c, k = idx.shape
        valid = np.isfinite(vals)
        if valid.all():
            counts = np.full(c, k)
            flat_idx, flat_vals = idx.reshape(-1), vals.reshape(-1)
            rank = np.tile(np.arange(1, k + 1, dtype=np.int32), c)
        else:  # -inf entries come last in a row
            counts = valid.sum(1)
            flat_idx, flat_vals = idx[valid], vals[valid]
            rank = np.cumsum(valid, 1, dtype=np.int32)[valid]
        n = int(counts.sum())
        if n == 0:
            return 0
        zeros = pa.array(np.zeros(n, dtype=np.int32))
        table = pa.table(
            {
                "user_id": pa.array(user_ids, pa.string()).take(
                    pa.array(np.repeat(np.arange(c, dtype=np.int32), counts))
                ),
                "rank": pa.array(rank, pa.int32()),
                "item_id": self.items.take(pa.array(flat_idx)),
                "score": pa.array(flat_vals.astype(np.float32, copy=False), pa.float32()),
                "method": self.method.take(zeros),
                "model_version": self.version.take(zeros),
            },
            schema=SCHEMA,
        )
        self._parts.write(table)
        return n

    def close(self) -> None:
        """Finish the last part (an empty part when no row was written: the schema stays)."""
        self._parts.close()

    def abort(self) -> None:
        self._parts.abort()


class BackgroundWriter:
    """Runs a writer's ``write`` calls in one worker thread, in order, ``depth`` chunks ahead,
    so Parquet encoding overlaps the next chunk's scoring. A failure in the worker is raised
    by the next ``write`` or by ``close``."""

    def __init__(self, writer: ListWriter, depth: int = 2):
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="parquet-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after a failure, drain without writing
                try:
                    self.writer.write(*item)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    self._error = exc

    def write(self, *args) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(args)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        self.writer.close()

    def abort(self) -> None:
        if self._thread.is_alive():
            self._error = self._error or RuntimeError("aborted")
            self._queue.put(None)
            self._thread.join()
        self.writer.abort()


@dataclass
class Written:
    parts: list[str]  # file names, in order
    rows: int
    non_finite: list[str]  # users whose vector was not finite: no list


def write_lists(
    directory: Path,
    user_ids: np.ndarray,
    chunks: Iterable[Chunk],
    item_ids: np.ndarray,
    method: str,
    version: str,
    meta: dict,
) -> Written:
    """Write every chunk's lists (users ``user_ids[chunk.lo:]``) into ``directory``'s parts.

    On any failure the open part is dropped and the error raised; the caller writes into a
    temporary directory that it then discards.
    """
    lists = ListWriter(directory, item_ids, method, version, meta)
    writer = BackgroundWriter(lists)
    non_finite: list[str] = []
    try:
        for chunk in chunks:
            ids = user_ids[chunk.lo : chunk.lo + len(chunk.idx)]
            if chunk.bad.any():
                non_finite += ids[chunk.bad].tolist()
                chunk.vals[chunk.bad] = -np.inf
            writer.write(ids, chunk.idx, chunk.vals)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return Written(lists.parts, lists.rows, non_finite)
