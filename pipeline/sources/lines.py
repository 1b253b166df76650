"""Streaming line reader and batch builder shared by the parsers."""

from __future__ import annotations

import ast
import gzip
import json
import math
import zlib
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from isal import igzip, isal_zlib

from pipeline.errors import DamageLog, InputError

BATCH_ROWS = 65_536
GZIP_ERRORS = (gzip.BadGzipFile, zlib.error, isal_zlib.error)  # a corrupt gzip stream


class BadField(Exception):
    """Raised by record extractors: one field of one record is unusable."""

    def __init__(self, field: str | None, reason: str, kind: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason
        self.kind = kind


def open_binary(path: str | Path):
    """The file's bytes, decompressed by ISA-L (3x zlib's speed) where it is gzip."""
    path = Path(path)
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return igzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")  # noqa: SIM115


def iter_lines(path: str | Path, damage: DamageLog) -> Iterator[tuple[int, str]]:
    """(line number, decoded text) for every non-blank line; non-UTF-8 lines are skipped. A
    gzip file that is cut short or corrupt fails with :class:`InputError` naming the file and
    the last line read: the rest of the file is lost, so nothing of it is used."""
    number = 0
    try:
        with open_binary(path) as fh:
            for number, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                text = decode_line(number, raw, damage)
                if text is not None:
                    yield number, text
    except EOFError:
        reason = "the gzip file is truncated (it ends before the gzip end marker)"
    except GZIP_ERRORS as exc:
        reason = f"the gzip file is corrupt ({exc})"
    else:
        return
    raise InputError(
        f"{reason} after line {number}: download it again (`dvc repro download`)", path=path
    )


def decode_line(number: int, raw: bytes, damage: DamageLog) -> str | None:
    """The text of line ``number``, or None (and a skip recorded) where it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        damage.skip(number, None, f"not valid UTF-8 (byte {exc.start})", "not_utf8")
        return None


def json_records(
    lines: Iterable[tuple[int, str]], damage: DamageLog, *, literal_ok: bool
) -> Iterator[tuple[int, dict]]:
    """(line number, record) for every line that is a JSON object; Python dict literals too
    where ``literal_ok`` (the 2014 metadata files); the others are skipped into ``damage``."""
    for number, text in lines:
        try:
            record = json.loads(text.rstrip("\r\n"))  # a cut line: "Unterminated string"
        except json.JSONDecodeError as exc:
            record = _literal(text) if literal_ok else None
            if record is None:
                damage.skip(
                    number, None, f"malformed JSON ({exc.msg}, column {exc.colno})", "bad_json"
                )
                continue
        if not isinstance(record, dict):
            damage.skip(
                number, None, f"expected a JSON object, got {type(record).__name__}", "bad_json"
            )
            continue
        yield number, record


def _literal(text: str) -> dict | None:
    # The 2014 metadata files are Python dict literals ({'asin': ...}), not JSON.
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def batches(
    records: Iterator[tuple[int, Any]],
    extract: Callable[[Any], tuple],
    schema: pa.Schema,
    damage: DamageLog,
    *,
    with_line: bool,
) -> Iterator[pa.RecordBatch]:
    """Turn (line, parsed record) pairs into record batches of ``schema``.

    ``extract`` returns the values of the schema's columns (without ``line``) or raises
    :class:`BadField`; bad records are reported to ``damage`` and skipped.
    """
    names = schema.names
    columns: list[list] = [[] for _ in names]
    for number, record in records:
        try:
            values = extract(record)
        except BadField as bad:
            damage.skip(number, bad.field, bad.reason, bad.kind)
            continue
        damage.ok()
        if with_line:
            values = (*values, number)
        for column, value in zip(columns, values, strict=True):
            column.append(value)
        if len(columns[0]) >= BATCH_ROWS:
            yield pa.RecordBatch.from_arrays(
                [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)],
                schema=schema,
            )
            columns = [[] for _ in names]
    if columns[0]:
        yield pa.RecordBatch.from_arrays(
            [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
        )


# --------------------------------------------------------------------------- field helpers
def require_id(record: dict, key: str) -> str:
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadField(key, "missing or empty", "missing_field")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadField(key, f"expected a string id, got {type(value).__name__}", "bad_field")
    return str(value).strip()


def rating_value(value: Any, field: str) -> float:
    """A rating must be a number in 1..5 (``"4.0"`` is accepted, ``true`` is not)."""
    if value is None:
        raise BadField(field, "missing", "missing_field")
    if isinstance(value, bool):
        raise BadField(field, f"not a number: {value!r}", "bad_rating")
    try:
        rating = float(value)
    except (TypeError, ValueError):
        raise BadField(field, f"not a number: {value!r}", "bad_rating") from None
    if math.isnan(rating) or not 1.0 <= rating <= 5.0:
        raise BadField(field, f"rating {value!r} is outside 1..5", "bad_rating")
    return rating


def timestamp_value(value: Any, field: str, unit: str) -> datetime | None:
    """Epoch seconds or milliseconds to an aware datetime; None stays None."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadField(field, f"not an epoch time: {value!r}", "bad_timestamp") from None
    seconds = number / 1000.0 if unit == "ms" else number
    # Reviews predate nothing before 1990 and nothing after 2100: anything else is damage.
    if not math.isfinite(seconds) or not 631_152_000 <= seconds <= 4_102_444_800:
        raise BadField(field, f"epoch time {value!r} ({unit}) is out of range", "bad_timestamp")
    return datetime.fromtimestamp(seconds, tz=UTC)


def text_value(value: Any) -> str | None:
    """Free text: a string, or a list of strings joined by newlines; whitespace collapsed."""
    if value is None:
        return None
    if isinstance(value, list):
        value = "\n".join(str(v) for v in value if v is not None and str(v).strip())
    elif not isinstance(value, str):
        value = str(value)
    value = " ".join(value.split())
    return value or None


def string_list(value: Any) -> list[str]:
    """A list of strings from a string, a list, or a list of lists (flattened, de-duplicated)."""
    out: list[str] = []

    def visit(v: Any) -> None:
        if v is None:
            return
        if isinstance(v, list | tuple):
            for x in v:
                visit(x)
        else:
            s = " ".join(str(v).split())
            if s and s not in out:
                out.append(s)

    visit(value)
    return out


def price_value(value: Any) -> float | None:
    """Prices come as 12.99, "$12.99", "$5.99 - $9.99", "None" or "": best effort, else null."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) and value >= 0 else None
    text = str(value).replace("$", "").replace(",", "").split("-")[0].strip()
    try:
        price = float(text)
    except ValueError:
        return None
    return price if math.isfinite(price) and price >= 0 else None
