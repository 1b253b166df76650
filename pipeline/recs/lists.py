"""Top-K lists as rows of ``part-NNNNN.parquet`` files, encoded on a background thread.

One row per (user, rank): ``user_id``, ``rank`` (1..K, int32), ``item_id``, ``score``
(float32), ``method``, ``model_version``; in the users' order then by rank. Each chunk of users
is one Parquet row group; a part is closed between chunks once it holds :data:`ROWS_PER_PART`
rows (:class:`pipeline.io.parts.RotatingParquetWriter`). Each time a part is finished the
writer reports its :class:`Progress` (parts, rows, users done), so that a killed run can go
on after its last finished part.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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


@dataclass
class Progress:
    """The finished parts of a partition being built and what they hold: the lists of the
    first ``users`` planned users (``non_finite`` among them got none)."""

    users: int = 0
    parts: list[str] = field(default_factory=list)
    part_rows: list[int] = field(default_factory=list)
    non_finite: list[str] = field(default_factory=list)


class ListWriter:
    """Chunks of top-K item indices and scores, as rows of :data:`SCHEMA` in rotating parts;
    after ``done`` (parts already in ``directory``), reporting each finished part to
    ``on_part``."""

    def __init__(
        self,
        directory: Path,
        item_ids: np.ndarray,
        method: str,
        version: str,
        meta: dict,
        done: Progress | None = None,
        on_part: Callable[[Progress], None] | None = None,
    ):
        done = done or Progress()
        self.items = pa.array(item_ids, pa.string())
        self.method = pa.array([method], pa.string())
        self.version = pa.array([version], pa.string())
        finished = list(zip(done.parts, done.part_rows, strict=True))
        self._parts = RotatingParquetWriter(
            directory, SCHEMA, ROWS_PER_PART, meta=meta, finished=finished
        )
        self.users = done.users
        self.non_finite = list(done.non_finite)
        self._on_part = on_part

    @property
    def parts(self) -> list[str]:
        return self._parts.parts

    @property
    def rows(self) -> int:
        return self._parts.rows

    def write(
        self,
        user_ids: np.ndarray,
        idx: np.ndarray,
        vals: np.ndarray,
        bad: np.ndarray | None = None,
    ) -> int:
        """Rows of users ``user_ids`` (c,), best items ``idx`` (c, k) with scores ``vals``;
        ``-inf`` scores are no item (fewer than k left, or no list); ``bad`` users (a vector
        that was not finite) get no list."""
        users, finished, non_finite = self.users, len(self._parts.part_rows), len(self.non_finite)
        n = self._rows(user_ids, idx, vals, bad)
        self.users += len(user_ids)
        if self._on_part is not None and len(self._parts.part_rows) > finished:
            # this write closed the open part first: it holds every user before this chunk
            part_rows = list(self._parts.part_rows)
            parts = self._parts.parts[: len(part_rows)]
            self._on_part(Progress(users, parts, part_rows, self.non_finite[:non_finite]))
        return n

    def _rows(
        self, user_ids: np.ndarray, idx: np.ndarray, vals: np.ndarray, bad: np.ndarray | None
    ) -> int:
        if bad is not None and bad.any():
            self.non_finite += user_ids[bad].tolist()
            vals = np.where(bad[:, None], -np.inf, vals).astype(vals.dtype, copy=False)
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
    done: Progress | None = None,
    on_part: Callable[[Progress], None] | None = None,
) -> Written:
    """Write every chunk's lists (users ``user_ids[chunk.lo:]``) into ``directory``'s parts.

    ``done``: what a killed run finished (the chunks start at ``done.users``); ``on_part``
    gets the :class:`Progress` each time a part is finished. On any failure the open part is
    dropped and the error raised; finished parts stay (the caller builds in a directory that
    it either swaps in or resumes).
    """
    lists = ListWriter(directory, item_ids, method, version, meta, done, on_part)
    writer = BackgroundWriter(lists)
    try:
        for chunk in chunks:
            ids = user_ids[chunk.lo : chunk.lo + len(chunk.idx)]
            writer.write(ids, chunk.idx, chunk.vals, chunk.bad)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return Written(lists.parts, lists.rows, lists.non_finite)
