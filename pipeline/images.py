"""Stage ``images``: fetch item images into a sharded Parquet store.

Reads the image URLs of ``data/prepared/items.parquet`` (the first ``images.max_per_item`` of
each item) and writes ``data/images/``:

- ``part-<rank:03d>-<shard:05d>.parquet``: at most ``images.shard_rows`` rows each, columns in
  :data:`STORE`, one row per (item, URL) in items-table order. Every item has at least one
  row: an item without a URL gets a ``missing`` row at position 0, so nothing is dropped
  silently. ``image`` holds the bytes as served, only for ``ok`` rows.
- ``manifest.json``: counts per status and per domain, the params used, the shard list and
  whether the stage was enabled.

Statuses: ``ok`` (decodes as an image), ``missing`` (no URL), ``broken`` (bytes that do not
decode), ``not_image`` (an HTML page or another non-image content type), ``too_large`` (over
``images.max_bytes``; reading stops at the cap), ``timeout`` (connect or read timeout, every
attempt), ``http_error`` (an error status, a failed connection or an unreadable local file;
``http_status`` is null when no answer came).

Downloads run on a pool of ``images.workers`` threads, one ``requests`` session per thread;
connection errors, timeouts and 5xx answers are retried ``images.retries`` times with a short
backoff. ``file://`` URLs and local paths are read directly. A second run reuses every ``ok``
row whose (domain, item_id, position, url) is unchanged and fetches the rest again; the new
store is written beside the old one and renamed into place, so a crash leaves the previous
store readable. Under ``accelerate launch`` each rank fetches every ``world``-th item and
writes its own parts; rank 0 renames the finished directory into place.

With ``images.enabled: false`` the stage writes an empty store (one empty shard and a manifest
saying so) and touches no network. :func:`read_images` and :func:`iter_ok_images` read the
store.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import logging
import mimetypes
import os
import re
import shutil
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import requests
import urllib3
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pipeline import cli, distributed, paths
from pipeline.config import ImagesParams, Params
from pipeline.io import ParquetPartWriter, atomic_dir, read_json, read_parquet, write_json

log = logging.getLogger("images")

IMAGES = paths.DATA / "images"
MANIFEST = "manifest.json"
STATUSES = ("ok", "missing", "broken", "not_image", "too_large", "timeout", "http_error")
KEYS = ["domain", "item_id", "position", "url"]

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

BACKOFF_SECONDS = 0.5  # first retry delay; doubles per retry
MAX_BACKOFF_SECONDS = 8.0
CHUNK_BYTES = 64 << 10
ROW_GROUP_ROWS = 256  # Parquet row groups stay small: readers stream images group by group
ROW_GROUP_BYTES = 64 << 20
USER_AGENT = "coldstart-cdr-images/0.1"
_NOT_IMAGE_TYPES = ("text/", "video/", "audio/", "application/json", "application/xml")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object reprs: keep messages stable across runs
_TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
)


# --------------------------------------------------------------------------- fetching one URL
def _result(status: str, **fields: Any) -> dict:
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


class ImageFetcher:
    """Fetches and checks one image URL at a time; safe to share between threads."""

    def __init__(self, timeout: float, retries: int, max_bytes: int):
        self.timeout = timeout
        self.retries = retries
        self.max_bytes = max_bytes
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def fetch(self, url: str) -> dict:
        """The store fields (all but the keys) for ``url``; never raises for a bad URL."""
        scheme = urlsplit(url).scheme.lower()
        if scheme in ("http", "https"):
            return self._fetch_http(url)
        if scheme == "file" or len(scheme) <= 1:  # one letter: a Windows drive
            return self._read_local(url)
        return _result("http_error", error=f"unsupported URL scheme '{scheme}'")

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update({"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _fetch_http(self, url: str) -> dict:
        last = _result("http_error", error="not attempted")
        attempts = self.retries + 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(BACKOFF_SECONDS * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS))
            try:
                result, transient = self._attempt(url)
            except _TRANSIENT as exc:
                if _is_timeout(exc):
                    result = _result("timeout", error=f"timed out after {self.timeout:g} s")
                else:
                    result = _result("http_error", error=_short(f"{type(exc).__name__}: {exc}"))
                transient = True
            except requests.RequestException as exc:  # a bad URL, too many redirects
                return _result("http_error", error=_short(f"{type(exc).__name__}: {exc}"))
            if not transient:
                return result
            last = result
            log.debug(
                "%s: attempt %d of %d failed (%s)", url, attempt + 1, attempts, result["error"]
            )
        if attempts > 1:
            last["error"] = f"{last['error']} ({attempts} attempts)"
        return last

    def _attempt(self, url: str) -> tuple[dict, bool]:
        """One request: ``(result, worth another attempt)``."""
        with self._session().get(url, stream=True, timeout=self.timeout) as resp:
            code, ctype = resp.status_code, resp.headers.get("Content-Type")
            answer = {"http_status": code, "content_type": ctype}
            if code >= 300:
                error = f"HTTP {code} {resp.reason}".strip()
                return _result("http_error", **answer, error=error), code >= 500 or code in (
                    408,
                    429,
                )
            mime = (ctype or "").split(";")[0].strip().lower()
            if mime.startswith(_NOT_IMAGE_TYPES):
                return _result("not_image", **answer, error=f"content type {mime}"), False
            length = resp.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > self.max_bytes:
                error = f"Content-Length {length} is over images.max_bytes {self.max_bytes}"
                return _result("too_large", **answer, error=error), False
            data, over = read_capped(resp.iter_content(CHUNK_BYTES), self.max_bytes)
            if over:
                error = f"body is over images.max_bytes {self.max_bytes}"
                return _result("too_large", **answer, n_bytes=len(data), error=error), False
            return check_image(data, **answer), False

    def _read_local(self, url: str) -> dict:
        parts = urlsplit(url)
        path = Path(url2pathname(parts.path)) if parts.scheme.lower() == "file" else Path(url)
        ctype = mimetypes.guess_type(path.name)[0]
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size > self.max_bytes:
                    error = f"file of {size} bytes is over images.max_bytes {self.max_bytes}"
                    return _result("too_large", content_type=ctype, error=error)
                data = fh.read(self.max_bytes + 1)
        except OSError as exc:
            return _result(
                "http_error",
                content_type=ctype,
                error=_short(f"cannot read {path}: {exc.strerror}"),
            )
        if len(data) > self.max_bytes:  # the file grew while we read it
            error = f"body is over images.max_bytes {self.max_bytes}"
            return _result("too_large", content_type=ctype, n_bytes=len(data), error=error)
        return check_image(data, content_type=ctype)


def read_capped(chunks: Iterator[bytes], max_bytes: int) -> tuple[bytes, bool]:
    """Read ``chunks`` until they end or pass ``max_bytes``: ``(bytes read, over the cap)``."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        if len(buf) > max_bytes:
            return bytes(buf), True
    return bytes(buf), False


def check_image(
    data: bytes, *, http_status: int | None = None, content_type: str | None = None
) -> dict:
    """Decode ``data`` with Pillow: an ``ok`` row with size and checksum, or why not."""
    answer = {"http_status": http_status, "content_type": content_type, "n_bytes": len(data)}
    if not data:
        return _result("broken", **answer, error="empty body")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()  # structure and checksums; the image cannot be used afterwards
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decodes every pixel: catches truncated files
            width, height = im.size
    except Image.DecompressionBombError as exc:
        return _result("too_large", **answer, sha256=digest, error=_short(str(exc)))
    except Exception as exc:  # Pillow's decoders raise many kinds for bad bytes
        if _looks_like_markup(data):
            return _result("not_image", **answer, sha256=digest, error="body is a text document")
        if isinstance(exc, UnidentifiedImageError):  # its message names a memory address
            reason = "cannot decode: not a known image format"
        else:
            reason = f"cannot decode: {type(exc).__name__}: {_ADDRESS.sub('', str(exc))}"
        return _result("broken", **answer, sha256=digest, error=_short(reason))
    return _result("ok", **answer, width=width, height=height, sha256=digest, image=data)


def _looks_like_markup(data: bytes) -> bool:
    head = data[:512].lstrip().lower()
    return head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"{", b"["))


def _is_timeout(exc: BaseException | None) -> bool:
    # requests wraps a read timeout inside the body stream as a ConnectionError.
    while exc is not None:
        if isinstance(exc, requests.Timeout | urllib3.exceptions.TimeoutError | TimeoutError):
            return True
        if any(isinstance(a, urllib3.exceptions.TimeoutError) for a in getattr(exc, "args", ())):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- the previous store
@dataclass(frozen=True)
class _Reuse:
    """An ``ok`` row of the previous store, copied over instead of fetched again."""

    file: int
    row: int
    n_bytes: int


class _Previous:
    """The ``ok`` rows of the store being replaced, read row group by row group."""

    def __init__(self, files: list[Path], keys: pl.DataFrame):
        self.files = files
        self.keys = keys  # KEYS + prev_file, prev_row, prev_bytes
        self._open: dict[int, tuple[pq.ParquetFile, list[int]]] = {}
        self._group: tuple[tuple[int, int], pa.Table] | None = None

    @classmethod
    def empty(cls) -> _Previous:
        keys = {"domain": pl.String, "item_id": pl.String, "position": pl.Int16, "url": pl.String}
        refs = {"prev_file": pl.Int32, "prev_row": pl.UInt32, "prev_bytes": pl.Int64}
        return cls([], pl.DataFrame(schema={**keys, **refs}))

    @classmethod
    def load(cls, directory: Path, max_bytes: int) -> _Previous:
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

    def row(self, ref: _Reuse) -> dict:
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
class _Stats:
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


class _ShardWriter:
    """Streams rows into ``part-<rank>-<shard>.parquet`` files of at most ``shard_rows`` rows."""

    def __init__(self, directory: Path, rank: int, shard_rows: int, previous: _Previous):
        self.directory = directory
        self.rank = rank
        self.shard_rows = shard_rows
        self.previous = previous
        self.stats = _Stats()
        self._pending: list[dict | _Reuse] = []
        self._pending_bytes = 0
        self._writer: ParquetPartWriter | None = None
        self._in_shard = 0

    def add(self, row: dict | _Reuse) -> None:
        self._pending.append(row)
        self._pending_bytes += row.n_bytes if isinstance(row, _Reuse) else row["n_bytes"]
        room = self.shard_rows - self._in_shard
        if (
            len(self._pending) >= min(ROW_GROUP_ROWS, room)
            or self._pending_bytes >= ROW_GROUP_BYTES
        ):
            self._flush()

    def close(self) -> None:
        self._flush()
        if self._writer is not None:
            self._finish_shard()
        if not self.stats.shards:  # an empty store still has the schema, for glob readers
            self._open_shard()
            self._finish_shard()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def _flush(self) -> None:
        if not self._pending:
            return
        rows = []
        for item in self._pending:
            reused = isinstance(item, _Reuse)
            row = self.previous.row(item) if reused else item
            self.stats.add(row, reused)
            rows.append(row)
        self._pending, self._pending_bytes = [], 0
        if self._writer is None:
            self._open_shard()
        self._writer.write(pa.Table.from_pylist(rows, schema=STORE))
        self._in_shard += len(rows)
        if self._in_shard >= self.shard_rows:
            self._finish_shard()

    def _open_shard(self) -> None:
        name = f"part-{self.rank:03d}-{len(self.stats.shards):05d}.parquet"
        meta = {"stage": "images", "rank": self.rank, "shard": len(self.stats.shards)}
        self._writer = ParquetPartWriter(self.directory / name, STORE, meta)
        self._in_shard = 0

    def _finish_shard(self) -> None:
        assert self._writer is not None
        self._writer.close()
        self.stats.shards.append({"file": self._writer.path.name, "rows": self._writer.rows})
        self._writer = None
        self._in_shard = 0


# --------------------------------------------------------------------------- the stage
def work_list(items_path: Path, max_per_item: int, rank: distributed.Rank) -> pl.DataFrame:
    """This rank's (domain, item_id, position, url) slots, one per item at least."""
    items = read_parquet(items_path, columns=["item_id", "domain", "image_urls"])
    mine = rank.shard(items.height)
    if items.height:
        items = items.gather_every(mine.step, offset=mine.start)
    head = min(max_per_item, 2**15 - 1)
    no_url = pl.lit([None], dtype=pl.List(pl.String))
    url = pl.col("url").str.strip_chars()
    return (
        items.with_row_index("item_index")
        .select(
            "item_index",
            "domain",
            "item_id",
            url=pl.col("image_urls").fill_null([]).list.head(head),
        )
        .with_columns(
            url=pl.when(pl.col("url").list.len() == 0).then(no_url).otherwise(pl.col("url"))
        )
        .with_columns(position=pl.int_ranges(0, pl.col("url").list.len(), dtype=pl.Int16))
        .explode(["url", "position"])
        .with_columns(url=pl.when(url == "").then(None).otherwise(url))
    )


def _fetch_item(fetcher: ImageFetcher | None, slots: list[dict]) -> list[dict | _Reuse]:
    rows: list[dict | _Reuse] = []
    for slot in slots:
        keys = {k: slot[k] for k in ("item_id", "domain", "position", "url")}
        if slot["url"] is None:
            rows.append({**keys, **_result("missing", error="no image URL")})
        elif slot["prev_file"] is not None:
            rows.append(_Reuse(slot["prev_file"], slot["prev_row"], slot["prev_bytes"]))
        else:
            assert fetcher is not None
            rows.append({**keys, **fetcher.fetch(slot["url"])})
    return rows


def fetch_rank(
    cfg: ImagesParams,
    slots: pl.DataFrame | None,
    previous_dir: Path,
    out_dir: Path,
    rank: distributed.Rank,
) -> dict:
    """Fetch this rank's slots (none when disabled) into parts under ``out_dir``; its stats."""
    if slots is None or slots.height == 0:
        writer = _ShardWriter(out_dir, rank.index, cfg.shard_rows, _Previous.empty())
        writer.close()
        return writer.stats.as_dict()
    previous = _Previous.load(previous_dir, cfg.max_bytes)
    writer = _ShardWriter(out_dir, rank.index, cfg.shard_rows, previous)
    plan = slots.join(previous.keys, on=KEYS, how="left", maintain_order="left")
    n_items = plan.select(pl.col("item_index").n_unique()).item()
    fetcher = ImageFetcher(cfg.timeout_seconds, cfg.retries, cfg.max_bytes)
    pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="images")
    window: deque[Future | list] = deque()
    bar = tqdm(total=n_items, unit="item", desc="images", disable=None if rank.is_main else True)

    def drain() -> None:
        entry = window.popleft()
        for row in entry.result() if isinstance(entry, Future) else entry:
            writer.add(row)
        bar.update(1)

    try:
        rows = plan.iter_rows(named=True)
        for _, group in itertools.groupby(rows, key=lambda r: r["item_index"]):
            item = list(group)
            if any(s["url"] is not None and s["prev_file"] is None for s in item):
                window.append(pool.submit(_fetch_item, fetcher, item))
            else:
                window.append(_fetch_item(None, item))
            while len(window) > 4 * cfg.workers:
                drain()
        while window:
            drain()
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        fetcher.close()
        previous.close()
        bar.close()
    return writer.stats.as_dict()


def images(params: Params, items_path: Path = paths.ITEMS, out_dir: Path = IMAGES) -> dict:
    """Fetch (or reuse) the item images of this rank; on rank 0 return the manifest written."""
    cfg = params.images
    rank = distributed.rank("cpu")  # downloads need no accelerator
    if cfg.enabled:
        slots = work_list(items_path, cfg.max_per_item, rank)
        log.info(
            "images: %d image URL slots of %d items (rank %d of %d), %d workers",
            slots.height,
            slots.select(pl.col("item_index").n_unique()).item(),
            rank.index,
            rank.world,
            cfg.workers,
        )
    else:
        log.info("images: off (images.enabled is false)")
        slots = None

    if rank.world == 1:
        with atomic_dir(out_dir) as tmp:
            stats = fetch_rank(cfg, slots, out_dir, tmp, rank)
            manifest = _manifest(cfg, [stats], rank.world)
            write_json(manifest, tmp / MANIFEST)
    else:
        manifest = _gather_ranks(cfg, slots, out_dir, rank)
    if rank.is_main:
        _log_summary(manifest, out_dir)
    return manifest


def _gather_ranks(
    cfg: ImagesParams, slots: pl.DataFrame | None, out_dir: Path, rank: distributed.Rank
) -> dict:
    """Every rank writes its parts into one shared directory; rank 0 renames it into place."""
    incoming = out_dir.with_name(f".{out_dir.name}.incoming")
    if rank.is_main:
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir(parents=True)
    distributed.barrier()
    stats = fetch_rank(cfg, slots, out_dir, incoming, rank)
    write_json(stats, incoming / f"stats-{rank.index:03d}.json")
    distributed.barrier()
    manifest = None
    if rank.is_main:
        parts = sorted(incoming.glob("stats-*.json"))
        manifest = _manifest(cfg, [read_json(p) for p in parts], rank.world)
        for p in parts:
            p.unlink()
        write_json(manifest, incoming / MANIFEST)
        _replace_dir(incoming, out_dir)
    distributed.barrier()
    return manifest if manifest is not None else read_json(out_dir / MANIFEST)


def _replace_dir(new: Path, path: Path) -> None:
    """Put directory ``new`` at ``path``; the old one is moved aside, then deleted."""
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def _manifest(cfg: ImagesParams, per_rank: list[dict], world: int) -> dict:
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


def _log_summary(manifest: dict, out_dir: Path) -> None:
    if not manifest["enabled"]:
        log.info("images: wrote an empty store to %s", out_dir)
        return
    counts = ", ".join(f"{s} {n}" for s, n in manifest["status"].items() if n)
    log.info(
        "images: %d items -> %d rows in %s (%d shards): %s; fetched %d, reused %d",
        manifest["items"],
        manifest["rows"],
        out_dir,
        len(manifest["shards"]),
        counts or "nothing",
        manifest["fetched"],
        manifest["reused"],
    )
    if manifest["problems"]:
        log.warning("images: first problems:\n  %s", "\n  ".join(manifest["problems"]))


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
        with pq.ParquetFile(file) as pf:
            for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
                cols = batch.to_pydict()
                for item_id, domain, position, status, image in zip(
                    *(cols[c] for c in columns), strict=True
                ):
                    if status == "ok":
                        yield item_id, domain, position, image


def main(argv: Sequence[str] | None = None) -> dict:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    return images(cli.params_from(args))


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
