"""The one place that reads and writes artifacts.

Every output is written atomically: to a temporary file beside the target, flushed to disk,
then renamed over it, so an interrupted stage never leaves a half-written file that a later
stage would read. A temporary name carries its writer's process id; the next writer of the same
target removes the temporary files and directories of writers that are no longer running (a
killed run's), so none stays behind. Parquet files are written with pyarrow and carry a JSON document in the
file's key-value metadata under :data:`META_KEY`; :func:`read_meta` is the matching reader
(polars and pyarrow disagree on where footer metadata lives, so we use one writer/reader pair).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputError, PipelineError

META_KEY = b"coldstart_cdr"
_TEMP_SUFFIX = ".tmp"
# The writer in a temporary name: its pid and host (a hash), no dots: ".NAME.p123h456.XXXX.tmp".
_HOST = f"h{zlib.crc32(socket.gethostname().encode()):08x}"
_UMASK = os.umask(0)
os.umask(_UMASK)


# --------------------------------------------------------------------------- atomic writes
class DiskFull(PipelineError):
    """No space left while writing an output: the previous version of it is untouched."""

    def __init__(self, path: Path, exc: BaseException):
        reason = getattr(exc, "strerror", None) or "No space left on device"
        super().__init__(
            f"{path}: no space left on the device while writing it ({reason}); the previous "
            "version is untouched: free some space and run again"
        )


def disk_full(exc: BaseException, where: Path | None = None) -> bool:
    """Whether ``exc`` is a write that ran out of space: ENOSPC / EDQUOT, a library's message
    saying so, or (torch's writer reports only a position mismatch) ``where``'s file system
    left with almost nothing free."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    if "No space left on device" in text or "os error 28" in text:
        return True
    if where is None or not isinstance(exc, OSError | RuntimeError):
        return False
    try:
        st = os.statvfs(where)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.
    Running out of space is a :class:`DiskFull` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_own_prefix(path), suffix=_TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except Exception as exc:
        if not isinstance(exc, PipelineError) and disk_full(exc, path.parent):
            raise DiskFull(path, exc) from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces directory ``path`` when the block succeeds.

    The old directory is moved aside first and deleted only after the new one is in place, so
    a crash leaves either the old or the new directory readable (plus a ``.old`` leftover that
    the next run removes); :func:`recover_dir` undoes what a killed block left.
    """
    with scratch_dir(path) as tmp:
        yield tmp
        for file in sorted(tmp.rglob("*")):  # the contents on disk before the rename
            if file.is_file():
                with open(file, "rb+") as fh:
                    os.fsync(fh.fileno())
        replace_dir(tmp, path)


@contextlib.contextmanager
def scratch_dir(path: str | Path) -> Iterator[Path]:
    """A temporary directory beside ``path`` (same file system), removed when the block ends;
    one a killed run left is removed by the next run's :func:`remove_stale_temps`. Running out
    of space in the block is a :class:`DiskFull` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=_own_prefix(path), suffix=_TEMP_SUFFIX, dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; outputs get the usual mode
    try:
        yield tmp
    except DiskFull as exc:  # named after the output, not the temporary file inside
        raise DiskFull(path, exc.__cause__ or exc) from exc.__cause__
    except Exception as exc:
        if not isinstance(exc, PipelineError) and disk_full(exc, tmp):
            raise DiskFull(path, exc) from exc
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def replace_dir(new: str | Path, path: str | Path) -> None:
    """Put directory ``new`` at ``path`` (same file system): the old directory is moved aside
    to ``.<name>.old`` first and deleted only after the new one is in place.

    :func:`atomic_dir` ends with this; a writer whose temporary directory must have a name
    known in advance (several processes writing into it) calls it directly.
    """
    new, path = Path(new), Path(path)
    old = _aside(path)
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    if old.exists():
        shutil.rmtree(old)


class Recovered(NamedTuple):
    restored: bool  # the previous directory was put back
    removed: list[Path]  # temporary builds deleted


def recover_dir(
    path: str | Path, complete: Callable[[Path], bool], keep: Sequence[Path] = ()
) -> Recovered:
    """Undo what a killed :func:`atomic_dir` block (or :func:`replace_dir`) left beside ``path``.

    A kill between the swap's two renames leaves no ``path`` and the previous directory moved
    aside: it is put back when ``complete(aside)`` says it is whole. A directory moved aside
    after the new one is in place, and temporary builds or files (but those in ``keep``), are
    deleted. Only while no other writer of ``path`` runs (hold a lock: :mod:`pipeline.io.lock`).
    """
    path = Path(path)
    old = _aside(path)
    restored = False
    if not path.exists() and old.is_dir() and complete(old):
        os.replace(old, path)
        restored = True
    elif path.exists() and old.is_dir():
        shutil.rmtree(old)
    found = path.parent.glob(glob.escape(_temp_prefix(path)) + "*" + _TEMP_SUFFIX)
    removed = sorted(p for p in found if p not in set(map(Path, keep)))
    for leftover in removed:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return Recovered(restored, removed)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."  # hidden, beside the target: same file system, one rename


def _own_prefix(path: Path) -> str:
    return f"{_temp_prefix(path)}p{os.getpid()}{_HOST}."


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temporary files and directories beside ``path`` whose writer (a process of
    this host) is no longer running; return them. Those of running writers stay."""
    path = Path(path)
    prefix = _temp_prefix(path)
    removed = []
    for tmp in path.parent.glob(glob.escape(prefix) + "p*" + _TEMP_SUFFIX):
        owner = tmp.name[len(prefix) :].split(".", 1)[0]
        pid, host = owner[1:].partition("h")[0], "h" + owner.partition("h")[2]
        if host != _HOST or not pid.isdigit() or _running(int(pid)):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def write_bytes(data: bytes, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(text: str, path: str | Path) -> None:
    write_bytes(text.encode("utf-8"), path)


def write_json(obj: Any, path: str | Path) -> None:
    """Write pretty, key-sorted JSON (stable bytes, readable diffs in git)."""
    write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n", path)


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


# Unicode White_Space: what polars' ``str.strip_chars()`` trims (Python's ``str.strip()`` also
# trims the control characters 0x1C-0x1F): one definition of "spaces around an id".
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
WHITESPACE += "\u2028\u2029\u202f\u205f\u3000"


def read_id_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, id)`` of a text file with one id per line: UTF-8 (a BOM is dropped),
    any line ending, surrounding :data:`WHITESPACE` trimmed; blank lines and ``#`` comments
    skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start})", path=path) from None
    for number, raw in enumerate(text.splitlines(), start=1):
        value = raw.strip(WHITESPACE)
        if value and not value.startswith("#"):
            yield number, value


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# --------------------------------------------------------------------------- parquet
def _to_arrow(table: pa.Table | pl.DataFrame) -> pa.Table:
    return table.to_arrow() if isinstance(table, pl.DataFrame) else table


def write_parquet(
    table: pa.Table | pl.DataFrame,
    path: str | Path,
    meta: Mapping[str, Any] | None = None,
    *,
    schema: pa.Schema | None = None,
) -> None:
    """Write one Parquet file atomically, with ``meta`` as JSON in the footer.

    When ``schema`` is given the table is cast to it first, so column types are the documented
    ones whatever the producer inferred (and a missing column fails here, not downstream).
    """
    tbl = _to_arrow(table)
    if schema is not None:
        tbl = tbl.select(schema.names).cast(schema)
    tbl = tbl.replace_schema_metadata(_meta_bytes(meta, tbl.schema.metadata))
    with atomic_path(path) as tmp:
        pq.write_table(tbl, tmp, compression="zstd")


def _meta_bytes(meta: Mapping[str, Any] | None, existing: Mapping | None) -> dict:
    out = {k: v for k, v in (existing or {}).items() if k != META_KEY}
    if meta is not None:
        out[META_KEY] = json.dumps(meta, sort_keys=True, default=_json_default).encode()
    return out


class ParquetPartWriter:
    """Streams record batches into one Parquet file, renamed into place by :meth:`close`.

    Used where a table is too large to hold in memory (parsing tens of millions of reviews).
    """

    def __init__(self, path: str | Path, schema: pa.Schema, meta: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.schema = schema.with_metadata(_meta_bytes(meta, schema.metadata))
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self.rows = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows:
            with self._disk_full():
                table = batch.cast(self.schema) if isinstance(batch, pa.Table) else batch
                self._writer.write(table)
            self.rows += batch.num_rows

    def set_meta(self, meta: Mapping[str, Any]) -> None:
        """Set the footer metadata once the content is known (e.g. counts after parsing)."""
        self._writer.add_key_value_metadata(_meta_bytes(meta, None))

    def close(self) -> None:
        with self._disk_full():
            self._writer.close()
        self._ctx.__exit__(None, None, None)

    @contextlib.contextmanager
    def _disk_full(self) -> Iterator[None]:
        try:
            yield
        except (OSError, RuntimeError, pa.ArrowException) as exc:
            if disk_full(exc, self.path.parent):
                raise DiskFull(self.path, exc) from exc
            raise

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> ParquetPartWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def sink_parquet(
    frame: pl.LazyFrame, path: str | Path, meta: Mapping[str, Any] | None = None
) -> None:
    """Stream a polars query into a Parquet file (bounded memory), atomically, with ``meta``."""
    with atomic_path(path) as tmp:
        frame.sink_parquet(tmp, compression="zstd")
        if meta is not None:
            _rewrite_meta(tmp, meta)


def _rewrite_meta(path: Path, meta: Mapping[str, Any]) -> None:
    # Footer metadata cannot be appended in place: stream row groups into a new file.
    src = pq.ParquetFile(path)
    schema = src.schema_arrow
    schema = schema.with_metadata(_meta_bytes(meta, schema.metadata))
    out = path.with_suffix(".meta.tmp")
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        for i in range(src.num_row_groups):
            writer.write_table(src.read_row_group(i).replace_schema_metadata(schema.metadata))
    os.replace(out, path)


def read_meta(path: str | Path) -> dict:
    """The JSON metadata that :func:`write_parquet` stored (``{}`` if none)."""
    kv = pq.read_metadata(path).metadata or {}
    raw = kv.get(META_KEY)
    return json.loads(raw) if raw else {}


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pl.DataFrame:
    """A Parquet file (or a directory / glob of parts); a file that is truncated, not
    Parquet, or lacks a column is an :class:`~pipeline.errors.InputError` naming it."""
    path = Path(path)
    if not path.exists() and not any(c in str(path) for c in "*?["):
        raise FileNotFoundError(f"{path} does not exist: run the stage that writes it first")
    try:
        return pl.read_parquet(path, columns=columns)
    except (pl.exceptions.PolarsError, OSError, pa.ArrowException) as exc:
        raise unreadable(path, exc, "run the stage that writes it again") from None


def unreadable(path: str | Path, exc: BaseException, hint: str) -> InputError:
    """The one-line error of a table that cannot be read (truncated, not Parquet or CSV, no
    such column): the file, the reader's first line, and what to do."""
    first = (str(exc).strip().splitlines() or [""])[0] or type(exc).__name__
    if len(first) > 200:
        first = first[:197] + "..."
    return InputError(f"cannot be read ({type(exc).__name__}: {first}); {hint}", path=path)


# --------------------------------------------------------------------------- hashing
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-able object, independent of dict order and of Python's hash seed."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
