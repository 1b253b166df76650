"""JSON lines a block at a time: pyarrow parses most lines of a block in one call, and the lines
it cannot vouch for are left to the per-line parser.

The per-line path (``json.loads`` per line, :mod:`pipeline.sources.lines`) decides what every
record means and reports damage with file, line and field; it runs at about 100,000 lines a
second. Here a background thread decompresses the next ~16 MB (ISA-L's gzip, three times as
fast as zlib) while pyarrow's JSON reader parses the current block's lines into the columns
asked for, several times faster. A caller
then keeps the values pyarrow read only where they are certainly what the per-line path would
have produced, and hands every other line to the per-line path, in line order, so the rows,
their line numbers and the damage log come out exactly the same.

A line skips pyarrow (goes to the per-line path) when it is blank (then it is no record at all),
does not start with ``{`` and end with ``}``, holds a control byte (a carriage return, a raw tab)
or is not UTF-8, holds a bare ``Inf`` (which pyarrow reads as a number and ``json.loads``
refuses), or makes pyarrow fail (a field of another type than asked for, malformed JSON; the
failing row is found and the rest read again, a few times per block). A line that is not one
object (pyarrow reads top-level ``null`` lines badly: it can crash) never reaches pyarrow.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.json as pj

from pipeline.errors import DamageLog
from pipeline.sources.lines import GZIP_ERRORS, iter_lines, open_binary

BLOCK_BYTES = 16 << 20
MAX_RETRIES = 4  # pyarrow failures located per block before its other lines go line by line
_ROW = re.compile(r"in row (\d+)")
_OPEN, _CLOSE, _NEWLINE = ord("{"), ord("}"), ord("\n")


@dataclass
class Block:
    """Whole lines of a file: line ``i`` is ``data[starts[i]:ends[i]]`` (without its newline),
    numbered ``first + i``."""

    data: bytes
    starts: np.ndarray
    ends: np.ndarray
    first: int

    def raw(self, i: int) -> bytes:
        """Line ``i`` as the per-line reader sees it: with its newline, where it has one."""
        return self.data[self.starts[i] : self.ends[i] + 1]

    def number(self, i: int) -> int:
        return self.first + int(i)


@dataclass
class Parsed:
    """A block's lines: ``fast`` were read by pyarrow into ``table`` (one row each, in order);
    ``slow`` are left to the per-line path; blank lines are in neither."""

    block: Block
    table: pa.Table
    fast: np.ndarray
    slow: np.ndarray
    missed: bool = False  # pyarrow failed on every try (or was not asked)


def read_blocks(path: str | Path, block_bytes: int | None = None) -> Iterator[Block]:
    """The file's lines in blocks of about ``block_bytes`` (BLOCK_BYTES), the next one
    decompressed on a background thread. A truncated or corrupt gzip file fails as
    :func:`iter_lines` does (the same error, naming the last line read)."""
    block_bytes, first = block_bytes or BLOCK_BYTES, 1
    with open_binary(path) as fh, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(fh.read, block_bytes)
        tail = b""
        while True:
            try:
                chunk = pending.result()
            except (EOFError, *GZIP_ERRORS):
                for _ in iter_lines(path, DamageLog(str(path))):  # raises the per-line error
                    pass
                raise
            if not chunk:
                break
            pending = pool.submit(fh.read, block_bytes)
            data = tail + chunk
            cut = data.rfind(b"\n") + 1
            data, tail = data[:cut], data[cut:]
            if data:
                block = _block(data, first)
                first += len(block.starts)
                yield block
        if tail:
            yield _block(tail, first)


def _block(data: bytes, first: int) -> Block:
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == _NEWLINE)
    ends = newlines if data.endswith(b"\n") else np.r_[newlines, len(data)]
    starts = np.r_[0, ends[:-1] + 1]
    return Block(data, starts, ends, first)


def parse_block(
    block: Block, schema: pa.Schema, tries: np.ndarray, scope: np.ndarray | None = None
) -> Parsed:
    """Read the columns of ``schema`` from the lines ``tries`` marks (a subset of
    :func:`candidates`); ``slow`` lists the other lines of ``scope`` (a mask, default every
    line) that are records, and those pyarrow failed on."""
    scope = np.ones(len(block.starts), dtype=bool) if scope is None else scope
    fast = tries & scope
    slow = np.flatnonzero(scope & ~fast)
    slow = slow[[bool(block.raw(i).strip()) for i in slow]]  # blank lines are no records
    fast = np.flatnonzero(fast)
    data, table, retries = _data(block, fast), None, 0
    while len(fast):
        try:
            table = _read(data, schema, threads=True)
        except pa.ArrowInvalid:
            row = _failing_row(data, schema) if retries < MAX_RETRIES else None
            retries += 1
            cut = np.ones(len(fast), dtype=bool) if row is None else np.arange(len(fast)) == row
            slow, fast = np.sort(np.r_[slow, fast[cut]]), fast[~cut]
            data = _data(block, fast)
            continue
        if table.num_rows != len(fast):  # lines that pyarrow read otherwise (two objects on one)
            slow, fast, table = np.sort(np.r_[slow, fast]), fast[:0], None
        break
    missed = table is None
    return Parsed(block, schema.empty_table() if missed else table, fast, slow, missed)


def matching(block: Block, pattern: re.Pattern) -> np.ndarray:
    """Mask of the lines in which ``pattern`` matches."""
    found = np.array([m.start() for m in pattern.finditer(block.data)], dtype=np.int64)
    mask = np.zeros(len(block.starts), dtype=bool)
    mask[np.searchsorted(block.starts, found, side="right") - 1] = True
    return mask


def _mask(block: Block, lines: np.ndarray) -> np.ndarray:
    mask = np.zeros(len(block.starts), dtype=bool)
    mask[lines] = True
    return mask


def _data(block: Block, lines: np.ndarray) -> bytes | bytearray:
    """The block with only ``lines`` (ascending) left to read, pyarrow's row k being line
    ``lines[k]``: the other lines blanked out (spaces, which pyarrow skips) or, when they are
    most, left out."""
    if len(lines) == len(block.starts):
        return block.data
    if 2 * len(lines) < len(block.starts):
        return b"".join(block.data[block.starts[i] : block.ends[i]] + b"\n" for i in lines)
    out = bytearray(block.data)
    for i in np.flatnonzero(~_mask(block, lines)):
        start, end = int(block.starts[i]), int(block.ends[i])
        out[start:end] = b" " * (end - start)
    return out


def candidates(block: Block) -> np.ndarray:
    """Mask of the lines pyarrow may read: an object on one line, printable UTF-8 without a
    bare Inf."""
    data, starts, ends = block.data, block.starts, block.ends
    buf = np.frombuffer(data, dtype=np.uint8)
    ok = ends > starts
    if not len(buf):
        return ok
    ok &= (buf[np.minimum(starts, len(buf) - 1)] == _OPEN) & (
        buf[np.maximum(ends - 1, 0)] == _CLOSE
    )
    control = np.flatnonzero(buf < 0x20)
    bad = [control[buf[control] != _NEWLINE]]
    # pyarrow reads Inf and -Inf as numbers, json.loads only Infinity: lines with "Inf" that is
    # not "Infinity" (also inside text, which costs nothing but speed) go line by line.
    inf = np.flatnonzero(buf[:-2] == ord("I"))
    inf = inf[(buf[inf + 1] == ord("n")) & (buf[inf + 2] == ord("f"))]
    bad.append(np.array([p for p in inf if data[p : p + 8] != b"Infinity"], dtype=np.int64))
    if not data.isascii():
        bad.append(_not_utf8(data, starts))
    where = np.concatenate(bad)
    if len(where):
        ok[np.searchsorted(starts, where, side="right") - 1] = False
    return ok


def _not_utf8(data: bytes, starts: np.ndarray) -> np.ndarray:
    """Byte offsets of the first invalid UTF-8 byte of each line that has one."""
    found, pos = [], 0
    while pos < len(data):
        try:
            data[pos:].decode("utf-8")
            break
        except UnicodeDecodeError as exc:
            at = pos + exc.start
            found.append(at)
            line = int(np.searchsorted(starts, at, side="right"))  # the next line's index
            pos = int(starts[line]) if line < len(starts) else len(data)
    return np.array(found, dtype=np.int64)


def _read(data: bytes | bytearray, schema: pa.Schema, threads: bool) -> pa.Table:
    read = pj.ReadOptions(use_threads=threads, block_size=max(1 << 20, len(data) + 1))
    if threads:
        read = pj.ReadOptions(use_threads=True, block_size=1 << 20)
    parse = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    return pj.read_json(BytesIO(data), read_options=read, parse_options=parse)


def _failing_row(data: bytes | bytearray, schema: pa.Schema) -> int | None:
    """The row pyarrow fails on, read in one piece so that its row number counts from 0."""
    try:
        _read(data, schema, threads=False)
    except pa.ArrowInvalid as exc:
        match = _ROW.search(str(exc))
        return int(match.group(1)) if match else None
    return None
