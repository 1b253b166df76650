"""Streaming, resumable downloads of source files over HTTP(S), ``file://`` or a local path.

The body is streamed into ``<dest>.part``. When a download breaks off (a dropped connection, a
timeout, a killed run) the part file stays, and the next attempt asks the server only for the
missing bytes with a ``Range`` request. Only a complete file is renamed onto ``dest``, so a
stage never reads a truncated download. Complete means: as long as the server said, with the
sha256 the caller expects (``expected_sha256``) or the server publishes (a ``Repr-Digest`` or
``Digest`` header, RFC 9530 / 3230), and accepted by the caller's content ``check`` (e.g.
:func:`check_gzip`: a gzip file must decompress to its end marker, which catches a server that
sends a short file with a matching short Content-Length). A resumed file that fails a check is
fetched once more from its first byte (the part may have come from an older version of the
remote file); otherwise the part is deleted and :class:`FetchError` names the check. Requests,
timeouts and retries go through the one client, :class:`pipeline.io.http.HttpClient`.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import logging
import os
import re
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit
from urllib.request import url2pathname

import requests
from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.io import DiskFull, disk_full
from pipeline.io.http import (
    TRANSIENT,
    Fail,
    Failed,
    HttpClient,
    Retry,
    describe,
    retry_for,
    status_reason,
    transient_status,
)

log = logging.getLogger(__name__)

MAX_DELAY = 60.0  # longest wait between attempts, Retry-After included
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")
# sha-256=:BASE64: (Repr-Digest, RFC 9530) or SHA-256=BASE64 (Digest, RFC 3230)
_SHA256_DIGEST = re.compile(r"(?:^|,)\s*sha-256=:?([A-Za-z0-9+/=]+):?\s*(?:,|$)", re.IGNORECASE)
Check = Callable[[Path], "str | None"]  # a complete file's content check: the problem, or None


@dataclass(frozen=True)
class FetchResult:
    url: str
    path: Path
    size: int
    sha256: str
    attempts: int
    resumed: bool


class FetchError(PipelineError):
    """A download that failed for good: names the URL, the attempts made and the last reason."""

    def __init__(self, url: str, reason: str, attempts: int):
        self.url = url
        self.reason = reason
        self.attempts = attempts
        plural = "" if attempts == 1 else "s"
        super().__init__(f"{reason} for {url} ({attempts} attempt{plural})")


def fetch(
    url: str,
    dest: str | Path,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    expected_sha256: str | None = None,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    sleep: Callable[[float], Any] = time.sleep,
    check: Check | None = None,
) -> FetchResult:
    """Download ``url`` to ``dest`` atomically, resuming from ``dest.part`` where possible.

    Transient failures are retried ``retries`` times, waiting ``backoff * 2**n`` seconds (at
    most 60, or the server's Retry-After) through ``sleep``. The complete file must match
    ``expected_sha256`` (or the server's published sha256) and pass ``check``. Raises
    :class:`FetchError` when the download fails.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    bar = {"desc": dest.name, "unit": "B", "unit_scale": True, "unit_divisor": 1024}
    # disable=None lets tqdm hide the bar when stderr is not a terminal (logs, CI).
    bar["disable"] = None if progress else True
    options = (retries, backoff, timeout, chunk_size, bar, sleep)
    digest, size, attempts, resumed, published = _download(url, part, *options)
    problem = _problem(part, digest, expected_sha256 or published, check)
    if problem and resumed:  # the kept part may belong to an older version of the file
        log.warning("%s: resumed file failed its check (%s); downloading it again", url, problem)
        part.unlink(missing_ok=True)
        digest, size, again, resumed, published = _download(url, part, *options)
        attempts += again
        problem = _problem(part, digest, expected_sha256 or published, check)
    if problem:
        part.unlink(missing_ok=True)  # a complete but wrong file: resuming cannot fix it
        raise FetchError(url, f"{problem}; the file was not kept", attempts)
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(part, dest)
    log.info("fetched %s -> %s (%d bytes, sha256 %s)", url, dest, size, digest)
    return FetchResult(url, dest, size, digest, attempts, resumed)


def _download(
    url: str, part: Path, retries: int, backoff: float, timeout: float, chunk_size: int,
    bar: dict, sleep: Callable[[float], Any],
) -> tuple[str, int, int, bool, str | None]:  # fmt: skip
    """Fill ``part``: ``(sha256, size, attempts, resumed, sha256 the server publishes)``."""
    attempts, resumed, published = 1, False, None
    if part.exists() and part.stat().st_size:
        log.info("%s: resuming at byte %d of an interrupted download", url, part.stat().st_size)
    try:
        if urlsplit(url).scheme.lower() in ("http", "https"):
            client = HttpClient(
                timeout=timeout,
                retries=retries,
                backoff=backoff,
                max_backoff=MAX_DELAY,
                sleep=sleep,
            )
            with client:
                (digest, size, resumed, published), attempts = client.run(
                    url, lambda: _attempt(client, url, part, chunk_size, bar)
                )
        else:
            digest, size = _copy_local(url, part, chunk_size, bar)
    except Failed as exc:
        raise FetchError(url, exc.reason, exc.attempts) from exc.__cause__
    except Fail as exc:  # a local file that cannot be read
        raise FetchError(url, exc.reason, attempts) from exc.__cause__
    except OSError as exc:  # the part keeps what was written: the next run resumes it
        if disk_full(exc):
            raise DiskFull(part, exc) from exc
        raise
    return digest, size, attempts, resumed, published


def _problem(part: Path, digest: str, expected: str | None, check: Check | None) -> str | None:
    """What is wrong with the complete file ``part`` (None: nothing)."""
    if expected is not None and digest != expected.lower():
        return f"sha256 mismatch (expected {expected.lower()}, got {digest})"
    return check(part) if check is not None else None


def check_gzip(path: Path, chunk: int = 1 << 20) -> str | None:
    """A gzip file must decompress without error to the end marker of its last member (a
    truncated download ends before it); files that are not gzip pass."""
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return None
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(chunk):
                pass
    except EOFError:
        return "truncated gzip file (it ends before the gzip end marker)"
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        return f"not a valid gzip file ({exc})"
    return None


def _attempt(
    client: HttpClient, url: str, part: Path, chunk_size: int, bar: dict
) -> tuple[str, int, bool, str | None]:
    """One request: append the rest of the body to ``part``; return ``(sha256, size, resumed,
    the sha256 the server publishes for the whole file)``."""
    have = part.stat().st_size if part.exists() else 0
    # Identity encoding: Range offsets and published checksums refer to the bytes as stored.
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with client.get(url, headers=headers, stream=True) as resp:
            status = resp.status_code
            start, total = _content_range(resp.headers.get("Content-Range"))
            if status == 416 and have:
                if total == have:  # the part already holds the whole file (killed before rename)
                    return _hash_prefix(part, have).hexdigest(), have, True, None
                resp.close()
                part.unlink()  # the part does not fit the remote file: start over
                return _attempt(client, url, part, chunk_size, bar)
            if transient_status(status):
                raise retry_for(resp)
            if status not in (200, 206):
                raise Fail(status_reason(resp))
            if status == 206 and start != have:
                part.unlink()
                raise Retry(f"server resumed at byte {start}, not at {have}")
            resumed = status == 206 and have > 0
            offset = have if resumed else 0  # a 200 answer is the whole file: start over
            length = resp.headers.get("Content-Length")
            expected = offset + int(length) if length and length.isdigit() else total
            hasher = _hash_prefix(part, offset) if resumed else hashlib.sha256()
            with open(part, "ab" if resumed else "wb") as fh:
                size = _copy(
                    resp.raw.stream(chunk_size, decode_content=False),
                    fh,
                    hasher,
                    bar,
                    initial=offset,
                    total=expected,
                )
            if expected is not None and size < expected:
                raise Retry(f"body ended after {size} of {expected} bytes")
            return hasher.hexdigest(), size, resumed, published_sha256(resp.headers)
    except TRANSIENT as exc:
        done = part.stat().st_size if part.exists() else 0
        raise Retry(f"{describe(exc, client.timeout)}, {done} bytes on disk") from exc
    except requests.RequestException as exc:  # a bad URL, too many redirects: not transient
        raise Fail(f"{type(exc).__name__}: {exc}") from exc


def _copy_local(url: str, part: Path, chunk_size: int, bar: dict) -> tuple[str, int]:
    """Copy a ``file://`` URL or a local path into ``part``; return ``(sha256, size)``."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "file":
        src = Path(url2pathname(parts.path))
    elif len(parts.scheme) <= 1:  # a plain path (one letter: a Windows drive)
        src = Path(url)
    else:
        raise Fail(f"unsupported URL scheme '{parts.scheme}'")
    try:
        fin = open(src, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise Fail(f"cannot read {src}: {exc.strerror}") from exc
    hasher = hashlib.sha256()
    with fin, open(part, "wb") as fout:
        blocks = iter(lambda: fin.read(chunk_size), b"")
        size = _copy(blocks, fout, hasher, bar, initial=0, total=os.fstat(fin.fileno()).st_size)
    return hasher.hexdigest(), size


def _copy(
    blocks: Iterable[bytes],
    out: BinaryIO,
    hasher: Any,
    bar: dict,
    *,
    initial: int,
    total: int | None,
) -> int:
    """Write ``blocks`` to ``out`` and the hash; return the file size (``initial`` + written)."""
    size = initial
    with tqdm(total=total, initial=initial, **bar) as progress:
        for block in blocks:
            out.write(block)
            hasher.update(block)
            size += len(block)
            progress.update(len(block))
    return size


def _hash_prefix(path: Path, length: int, chunk: int = 1 << 20) -> Any:
    """sha256 state after the first ``length`` bytes of ``path`` (the part being resumed)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while length > 0 and (block := fh.read(min(chunk, length))):
            hasher.update(block)
            length -= len(block)
    return hasher


def published_sha256(headers: Any) -> str | None:
    """The hex sha256 of the whole file from ``Repr-Digest`` or ``Digest``, if published."""
    for name in ("Repr-Digest", "Digest"):
        match = _SHA256_DIGEST.search(headers.get(name) or "")
        if match:
            try:
                raw = base64.b64decode(match.group(1), validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(raw) == 32:
                return raw.hex()
    return None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(start, total)`` of a Content-Range header; None where absent or ``*``."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total.isdigit() else None)
