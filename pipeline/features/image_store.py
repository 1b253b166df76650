"""The item-image store ``data/images/``: its schema, its shard writer, its manifest, its readers.

- ``part-<rank:03d>-<shard:05d>.parquet``: at most :data:`SHARD_ROWS` rows each, columns in
  :data:`STORE`, one row per (item, URL) in items-table order. Every item has at least one
  row: an item without a URL gets a ``missing`` row at position 0, so nothing is dropped
  silently. ``image`` holds the bytes as served, only for ``ok`` rows.
- ``manifest.json``: counts per status and per domain, the params used, the shard list and
  whether the stage was enabled.

A new store reuses the ``ok`` rows of the previous one (:class:`Previous`) whose (domain,
item_id, position, url) is unchanged: they are copied row group by row group, not fetched.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import paths
from pipeline.io.parts import RotatingParquetWriter

if TYPE_CHECKING:
    from pipeline.config.images import ImagesParams

log = logging.getLogger("images")

IMAGES = paths.DATA / "images"
MANIFEST = "manifest.json"
STATUSES = ("ok", "missing", "broken", "not_image", "too_large", "timeout", "http_error")
KEYS = ["domain", "item_id", "position", "url"]

# Rows per shard: small enough that a reader streams a shard in bounded memory and DVC hashes
# a few thousand files rather than millions of pictures, large enough that the file count
# stays low on a full catalogue (at ~50 kB a picture, about 100 MB a shard).
SHARD_ROWS = 2000
ROW_GROUP_ROWS = 256  # Parquet row groups stay small: readers stream images group by group
ROW_GROUP_BYTES = 64 << 20

# data/images/part-*.parquet: one row per (item, image URL).
STORE = pa.schema(
    [
        ("item_id", pa.string()),
        ("domain", pa.string()),
        ("position", pa.int16()),  # index of the URL in the item's image_urls
        ("url", pa.string()),  # null when the item has no URL (status missing)
        ("status", pa.string()),  # one of STATUSES
        ("http_status", pa.int32()),  # last HTTP status seen; null for local files, timeouts
        ("content_type", pa.string()),  # as served (guessed from the name for local files)
        ("n_bytes", pa.int64()),  # bytes received (0 when the body was not read)
        ("width", pa.int32()),  # ok rows only
        ("height", pa.int32()),
        ("sha256", pa.string()),  # of the body, when it was read in full
        ("image", pa.binary()),  # the image bytes as served, ok rows only
        ("error", pa.string()),  # a short reason, null for ok rows
    ]
)


def result(status: str, **fields: Any) -> dict:
    """The store fields of one fetch outcome (all but the keys)."""
    row = {
        "status": status,
        "http_status": None,
        "content_type": None,
        "n_bytes": 0,
        "width": None,
        "height": None,
        "sha256": None,
        "image": None,
        "error": None,
    }
    row.update(fields)
    return row


# --------------------------------------------------------------------------- the previous store
@dataclass(frozen=True)
class Reuse:
    """An ``ok`` row of the previous store, copied over instead of fetched again."""

    file: int
    row: int
    n_bytes: int


class Previous:
    """The ``ok`` rows of the store being replaced, read row group by row group."""

    def __init__(self, files: list[Path], keys: pl.DataFrame):
        self.files = files
        self.keys = keys  # KEYS + prev_file, prev_row, prev_bytes
        self._open: dict[int, tuple[pq.ParquetFile, list[int]]] = {}
        self._group: tuple[tuple[int, int], pa.Table] | None = None

    @classmethod
    def empty(cls) -> Previous:
        keys = {"domain": pl.String, "item_id": pl.String, "position": pl.Int16, "url": pl.String}
        refs = {"prev_file": pl.Int32, "prev_row": pl.UInt32, "prev_bytes": pl.Int64}
        return cls([], pl.DataFrame(schema={**keys, **refs}))

    @classmethod
    def load(cls, directory: Path, max_bytes: int) -> Previous:
        files = shard_paths(directory) if directory.is_dir() else []
        if not files:
            return cls.empty()
        frames = [
            pl.scan_parquet(f)
            .select([*KEYS, "status", "n_bytes"])
            .with_row_index("prev_row")
            .with_columns(prev_file=pl.lit(i, pl.Int32))
            for i, f in enumerate(files)
        ]
        try:
            keys = (
                pl.concat(frames)
                .filter(
                    (pl.col("status") == "ok")
                    & pl.col("url").is_not_null()
                    & (pl.col("n_bytes") <= max_bytes)
                )
                .select(*KEYS, "prev_file", "prev_row", prev_bytes=pl.col("n_bytes"))
                .unique(subset=KEYS, keep="first", maintain_order=True)
                .collect()
            )
        except (pl.exceptions.PolarsError, OSError) as exc:
            log.warning(
                "images: cannot read the previous store in %s (%s); fetching everything",
                directory,
                exc,
            )
            return cls.empty()
        return cls(files, keys)

    def row(self, ref: Reuse) -> dict:
        if ref.file not in self._open:
            pf = pq.ParquetFile(self.files[ref.file])
            sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
            self._open[ref.file] = (pf, [0, *itertools.accumulate(sizes)])
        pf, starts = self._open[ref.file]
        group = bisect.bisect_right(starts, ref.row) - 1
        if self._group is None or self._group[0] != (ref.file, group):
            table = pf.read_row_group(group).select(STORE.names).cast(STORE)
            self._group = ((ref.file, group), table)
        return self._group[1].slice(ref.row - starts[group], 1).to_pylist()[0]

    def close(self) -> None:
        for pf, _ in self._open.values():
            pf.close()
        self._open.clear()
        self._group = None


# --------------------------------------------------------------------------- writing shards
@dataclass
class Stats:
    items: int = 0
    rows: int = 0
    fetched: int = 0
    reused: int = 0
    bytes: int = 0
    status: Counter = field(default_factory=Counter)
    domains: dict[str, dict] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    shards: list[dict] = field(default_factory=list)

    def add(self, row: dict, reused: bool) -> None:
        status = row["status"]
        self.rows += 1
        self.status[status] += 1
        dom = self.domains.setdefault(row["domain"], {"items": 0, "rows": 0, "status": Counter()})
        dom["rows"] += 1
        dom["status"][status] += 1
        if row["position"] == 0:  # every item has a row at position 0
            self.items += 1
            dom["items"] += 1
        if reused:
            self.reused += 1
        elif row["url"] is not None:
            self.fetched += 1
        if status == "ok":
            self.bytes += row["n_bytes"]
        elif status != "missing" and len(self.problems) < 5:
            self.problems.append(f"{row['url']}: {status}: {row['error']}")

    def as_dict(self) -> dict:
        return {
            "items": self.items,
            "rows": self.rows,
            "fetched": self.fetched,
            "reused": self.reused,
            "bytes": self.bytes,
            "status": dict(self.status),
            "domains": {
                d: {**v, "status": dict(v["status"])} for d, v in sorted(self.domains.items())
            },
            "problems": self.problems,
            "shards": self.shards,
        }


class ShardWriter:
    """Rows (fetched, or :class:`Reuse` references) into ``part-<rank>-<shard>.parquet`` files
    of exactly :data:`SHARD_ROWS` rows (the last one fewer), in row groups of bounded size."""

    def __init__(self, directory: Path, rank: int, previous: Previous):
        self.previous = previous
        self.stats = Stats()
        self.parts = RotatingParquetWriter(
            directory, STORE, SHARD_ROWS, prefix=f"part-{rank:03d}", meta={"stage": "images"}
        )
        self._pending: list[dict | Reuse] = []
        self._pending_bytes = 0

    def add(self, row: dict | Reuse) -> None:
        self._pending.append(row)
        self._pending_bytes += row.n_bytes if isinstance(row, Reuse) else row["n_bytes"]
        full_group = len(self._pending) >= min(ROW_GROUP_ROWS, self.parts.room)
        if full_group or self._pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def close(self) -> None:
        self._flush()
        self.parts.close()  # an empty store still has one shard with the schema
        self.stats.shards = [
            {"file": name, "rows": rows}
            for name, rows in zip(self.parts.parts, self.parts.part_rows, strict=True)
        ]

    def abort(self) -> None:
        self.parts.abort()

    def _flush(self) -> None:
        if not self._pending:
            return
        rows = []
        for item in self._pending:
            reused = isinstance(item, Reuse)
            row = self.previous.row(item) if reused else item
            self.stats.add(row, reused)
            rows.append(row)
        self._pending, self._pending_bytes = [], 0
        self.parts.write(pa.Table.from_pylist(rows, schema=STORE))


def manifest(cfg: ImagesParams, per_rank: list[dict], world: int) -> dict:
    """``manifest.json``: the ranks' stats added up, with the params used."""
    status: Counter = Counter()
    domains: dict[str, dict] = {}
    for part in per_rank:
        status.update(part["status"])
        for name, d in part["domains"].items():
            into = domains.setdefault(name, {"items": 0, "rows": 0, "status": Counter()})
            into["items"] += d["items"]
            into["rows"] += d["rows"]
            into["status"].update(d["status"])
    return {
        "enabled": cfg.enabled,
        "params": cfg.model_dump(),
        "shard_rows": SHARD_ROWS,
        "world_size": world,
        "items": sum(p["items"] for p in per_rank),
        "rows": sum(p["rows"] for p in per_rank),
        "fetched": sum(p["fetched"] for p in per_rank),
        "reused": sum(p["reused"] for p in per_rank),
        "bytes": sum(p["bytes"] for p in per_rank),
        "status": {s: status.get(s, 0) for s in STATUSES},
        "domains": {
            name: {
                "items": d["items"],
                "rows": d["rows"],
                "status": {s: d["status"].get(s, 0) for s in STATUSES},
            }
            for name, d in sorted(domains.items())
        },
        "problems": [p for part in per_rank for p in part["problems"]][:5],
        "shards": sorted((s for p in per_rank for s in p["shards"]), key=lambda s: s["file"]),
    }


# --------------------------------------------------------------------------- reading the store
def shard_paths(path: str | Path = IMAGES) -> list[Path]:
    return sorted(Path(path).glob("part-*.parquet"))


def _check_store(path: Path) -> list[Path]:
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist: run the images stage first")
    return shard_paths(path)


def read_images(path: str | Path = IMAGES, columns: list[str] | None = None) -> pl.DataFrame:
    """Every shard of the store as one frame (``columns`` to skip the image bytes)."""
    files = _check_store(Path(path))
    if not files:
        return pl.from_arrow(STORE.empty_table()).select(columns or STORE.names)
    return pl.concat([pl.read_parquet(f, columns=columns) for f in files], how="vertical")


def iter_ok_images(
    path: str | Path = IMAGES, batch_rows: int = 64
) -> Iterator[tuple[str, str, int, bytes]]:
    """``(item_id, domain, position, image bytes)`` of every ``ok`` row, shard by shard."""
    columns = ["item_id", "domain", "position", "status", "image"]
    for file in _check_store(Path(path)):
        with pq.ParquetFile(file, pre_buffer=False) as pf:  # not the whole shard ahead
            for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
                cols = batch.to_pydict()
                for item_id, domain, position, status, image in zip(
                    *(cols[c] for c in columns), strict=True
                ):
                    if status == "ok":
                        yield item_id, domain, position, image
