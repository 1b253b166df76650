"""Item images fetched and checked: one URL at a time by :class:`ImageFetcher`, a rank's whole
work list by :func:`fetch_rank` on a thread pool.

Statuses: ``ok`` (decodes as an image), ``missing`` (no URL), ``broken`` (bytes that do not
decode), ``not_image`` (an HTML page or another non-image content type), ``too_large`` (over
``images.max_bytes``; reading stops at the cap), ``timeout`` (connect or read timeout, every
attempt), ``http_error`` (an error status, a failed connection or an unreadable local file;
``http_status`` is null when no answer came).

HTTP goes through :class:`pipeline.io.http.HttpClient` (one session per worker thread);
connection errors, timeouts and 5xx answers are retried ``images.retries`` times with a short
backoff. ``file://`` URLs and local paths are read directly.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import mimetypes
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import polars as pl
import requests
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pipeline import distributed
from pipeline.features.image_store import KEYS, Previous, Reuse, ShardWriter, result
from pipeline.io import read_parquet
from pipeline.io.http import (
    TRANSIENT,
    Failed,
    HttpClient,
    Retry,
    describe,
    is_timeout,
    retry_for,
    short,
    status_reason,
    transient_status,
)

if TYPE_CHECKING:
    from pipeline.config.images import ImagesParams

log = logging.getLogger("images")

BACKOFF_SECONDS = 0.5  # first retry delay; doubles per retry
MAX_BACKOFF_SECONDS = 8.0
CHUNK_BYTES = 64 << 10
WINDOW_PER_WORKER = 4  # items in flight per worker thread: bounds memory, keeps the pool busy
USER_AGENT = "coldstart-cdr-images/0.1"
_NOT_IMAGE_TYPES = ("text/", "video/", "audio/", "application/json", "application/xml")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # object reprs: keep messages stable across runs


# --------------------------------------------------------------------------- one URL
class ImageFetcher:
    """Fetches and checks one image URL at a time; safe to share between threads."""

    def __init__(
        self,
        timeout: float,
        retries: int,
        max_bytes: int,
        sleep: Callable[[float], Any] = time.sleep,
    ):
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.client = HttpClient(
            timeout=timeout,
            retries=retries,
            backoff=BACKOFF_SECONDS,
            max_backoff=MAX_BACKOFF_SECONDS,
            headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"},
            sleep=sleep,
            retry_log_level=logging.DEBUG,  # one line per image would flood the log
        )

    def fetch(self, url: str) -> dict:
        """The store fields (all but the keys) for ``url``; never raises for a bad URL."""
        scheme = urlsplit(url).scheme.lower()
        if scheme in ("http", "https"):
            return self._fetch_http(url)
        if scheme == "file" or len(scheme) <= 1:  # one letter: a Windows drive
            return self._read_local(url)
        return result("http_error", error=f"unsupported URL scheme '{scheme}'")

    def close(self) -> None:
        self.client.close()

    def _fetch_http(self, url: str) -> dict:
        try:
            return self.client.run(url, lambda: self._attempt(url))[0]
        except Failed as exc:  # every attempt failed: the last one's row, saying how many
            last = exc.result if exc.result is not None else result("http_error", error=exc.reason)
            if exc.attempts > 1:
                last["error"] = f"{last['error']} ({exc.attempts} attempts)"
            return last
        except requests.RequestException as exc:  # a bad URL, too many redirects
            return result("http_error", error=short(f"{type(exc).__name__}: {exc}"))

    def _attempt(self, url: str) -> dict:
        """One request: the row, or :class:`Retry` carrying it when another attempt may help."""
        try:
            with self.client.get(url, stream=True) as resp:
                return self._answer(resp)
        except TRANSIENT as exc:
            if is_timeout(exc):
                row = result("timeout", error=f"timed out after {self.timeout:g} s")
            else:
                row = result("http_error", error=describe(exc, self.timeout))
            raise Retry(row["error"], result=row) from exc

    def _answer(self, resp: requests.Response) -> dict:
        code, ctype = resp.status_code, resp.headers.get("Content-Type")
        answer = {"http_status": code, "content_type": ctype}
        if code >= 300:
            row = result("http_error", **answer, error=status_reason(resp))
            if transient_status(code):
                raise retry_for(resp, row)
            return row
        mime = (ctype or "").split(";")[0].strip().lower()
        if mime.startswith(_NOT_IMAGE_TYPES):
            return result("not_image", **answer, error=f"content type {mime}")
        length = resp.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            error = f"Content-Length {length} is over images.max_bytes {self.max_bytes}"
            return result("too_large", **answer, error=error)
        data, over = read_capped(resp.iter_content(CHUNK_BYTES), self.max_bytes)
        if over:
            error = f"body is over images.max_bytes {self.max_bytes}"
            return result("too_large", **answer, n_bytes=len(data), error=error)
        return check_image(data, **answer)

    def _read_local(self, url: str) -> dict:
        parts = urlsplit(url)
        path = Path(url2pathname(parts.path)) if parts.scheme.lower() == "file" else Path(url)
        ctype = mimetypes.guess_type(path.name)[0]
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size > self.max_bytes:
                    error = f"file of {size} bytes is over images.max_bytes {self.max_bytes}"
                    return result("too_large", content_type=ctype, error=error)
                data = fh.read(self.max_bytes + 1)
        except OSError as exc:
            error = short(f"cannot read {path}: {exc.strerror}")
            return result("http_error", content_type=ctype, error=error)
        if len(data) > self.max_bytes:  # the file grew while we read it
            error = f"body is over images.max_bytes {self.max_bytes}"
            return result("too_large", content_type=ctype, n_bytes=len(data), error=error)
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
        return result("broken", **answer, error="empty body")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()  # structure and checksums; the image cannot be used afterwards
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decodes every pixel: catches truncated files
            width, height = im.size
    except Image.DecompressionBombError as exc:
        return result("too_large", **answer, sha256=digest, error=short(str(exc)))
    except Exception as exc:  # Pillow's decoders raise many kinds for bad bytes
        if _looks_like_markup(data):
            return result("not_image", **answer, sha256=digest, error="body is a text document")
        if isinstance(exc, UnidentifiedImageError):  # its message names a memory address
            reason = "cannot decode: not a known image format"
        else:
            reason = f"cannot decode: {type(exc).__name__}: {_ADDRESS.sub('', str(exc))}"
        return result("broken", **answer, sha256=digest, error=short(reason))
    return result("ok", **answer, width=width, height=height, sha256=digest, image=data)


def _looks_like_markup(data: bytes) -> bool:
    head = data[:512].lstrip().lower()
    return head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"{", b"["))


# --------------------------------------------------------------------------- a rank's work
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


def _fetch_item(fetcher: ImageFetcher | None, slots: list[dict]) -> list[dict | Reuse]:
    rows: list[dict | Reuse] = []
    for slot in slots:
        keys = {k: slot[k] for k in KEYS}
        if slot["url"] is None:
            rows.append({**keys, **result("missing", error="no image URL")})
        elif slot["prev_file"] is not None:
            rows.append(Reuse(slot["prev_file"], slot["prev_row"], slot["prev_bytes"]))
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
    """Fetch this rank's slots (none when disabled) into shards under ``out_dir``; its stats.

    ``ok`` rows of the store in ``previous_dir`` whose keys are unchanged are copied over
    instead of fetched again. Items are written in work-list order.
    """
    if slots is None or slots.height == 0:
        writer = ShardWriter(out_dir, rank.index, Previous.empty())
        writer.close()
        return writer.stats.as_dict()
    previous = Previous.load(previous_dir, cfg.max_bytes)
    writer = ShardWriter(out_dir, rank.index, previous)
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
            while len(window) > WINDOW_PER_WORKER * cfg.workers:
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
