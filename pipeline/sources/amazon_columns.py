"""Amazon reviews (every release) and 2023 metadata read a block at a time as columns.

pyarrow reads a block's lines into the fields a parser needs (:mod:`pipeline.sources.blocks`);
each value is kept only where it is certainly what the per-line extractor of
:mod:`pipeline.sources.amazon` makes of the same record, computed on whole columns (the same
white-space rule as ``str.split``, the same ranges, the same fallbacks from one field to
another). Every other line goes through ``json.loads`` and that extractor, in line order, so the
rows, their line numbers and the damage log are exactly the per-line parser's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import DamageLog
from pipeline.schemas import RAW_INTERACTION, RAW_ITEM, TIMESTAMP
from pipeline.sources.blocks import Block, candidates, matching, parse_block, read_blocks
from pipeline.sources.lines import batches, decode_line, json_records

Columns = Callable[[pa.Table, np.ndarray], tuple[np.ndarray, pa.Table]]
Read = tuple[pa.Schema, Columns]  # what pyarrow reads, and how it becomes rows

_IMAGE = pa.struct([(k, pa.string()) for k in ("large", "hi_res", "thumb")])
META_FIELDS = [
    ("parent_asin", pa.string()),
    ("title", pa.string()),
    ("description", pa.list_(pa.string())),
    ("categories", pa.list_(pa.string())),
    ("category", pa.list_(pa.string())),  # not in 2023 files; where it is, line by line
    ("images", pa.list_(_IMAGE)),
    ("store", pa.string()),
]
# A price is a number or null, or text ("$12.99", "None"): one read for each, text second.
TEXT_PRICE = re.compile(rb'"price"\s*:\s*"')


def review_batches(
    path: str | Path, damage: DamageLog, extract: Callable[[dict], tuple], fields: tuple
) -> Iterator[pa.RecordBatch]:
    """RAW_INTERACTION batches of a reviews file (``fields``: ``REVIEW_FIELDS`` of the release,
    ``extract``: its per-line extractor)."""
    *keys, unit = fields
    types = (pa.string(), pa.string(), pa.float64(), pa.float64())
    schema = pa.schema(list(zip(keys, types, strict=True)))

    def columns(table: pa.Table, lines: np.ndarray) -> tuple[np.ndarray, pa.Table]:
        good = _plain_reviews(table, keys, unit)
        return good, _review_rows(table.filter(good), keys, unit, lines[good])

    return _batches(path, damage, extract, [(schema, columns)], RAW_INTERACTION)


def meta_batches(
    path: str | Path, damage: DamageLog, extract: Callable[[dict], tuple]
) -> Iterator[pa.RecordBatch]:
    """RAW_ITEM batches of a 2023 metadata file, in file order (``extract``: its per-line
    extractor)."""
    with_line = pa.schema([*RAW_ITEM, ("line", pa.int64())])

    def columns(text_price: bool) -> Columns:
        def read(table: pa.Table, lines: np.ndarray) -> tuple[np.ndarray, pa.Table]:
            frame = pl.from_arrow(table)
            price_ok, price = _text_price(pl.col("price")) if text_price else (True, _price())
            ok = _plain_id(pl.col("parent_asin")) & pl.col("category").is_null() & price_ok
            good = frame.select(ok.fill_null(False)).to_series().to_numpy()
            rows = frame.filter(good).with_columns(line=pl.Series(lines[good], dtype=pl.Int64))
            values = rows.select(*_meta_values(), price, "line")
            return good, values.to_arrow().cast(with_line)

        return read

    reads = [
        (pa.schema([*META_FIELDS, ("price", pa.float64())]), columns(False)),
        (pa.schema([*META_FIELDS, ("price", pa.string())]), columns(True)),
    ]
    for batch in _batches(path, damage, extract, reads, with_line, TEXT_PRICE):
        yield batch.drop_columns(["line"])


def _batches(
    path: str | Path, damage: DamageLog, extract: Callable[[dict], tuple], reads: list[Read],
    schema: pa.Schema, second: re.Pattern | None = None,
) -> Iterator[pa.RecordBatch]:  # fmt: skip
    """``schema`` batches (with a ``line`` column), a block at a time. Each read hands pyarrow
    the lines the reads before it left (the first: all but those ``second`` matches in), and
    its columns function turns the table into rows and says which rows it vouches for; the
    rest go through ``json.loads`` and ``extract``, and all come out in line order."""
    misses = 0  # blocks in a row where pyarrow read nothing: it is tried on every 8th only
    for block in read_blocks(path):
        tries = candidates(block)
        if not (misses < 2 or misses % 8 == 0):
            tries[:] = False
        first = tries & ~matching(block, second) if second is not None else tries
        scope, rows, slow, missed = None, [], [], True
        for i, (fields, columns) in enumerate(reads):
            parsed = parse_block(block, fields, first if i == 0 else tries, scope)
            good, fast = columns(parsed.table, parsed.fast + block.first)
            rows.append(fast)
            slow.append(parsed.fast[~good])
            missed &= parsed.missed
            scope = np.zeros(len(block.starts), dtype=bool)
            scope[parsed.slow] = True
        slow.append(parsed.slow)
        misses = misses + 1 if missed else 0
        damage.total += sum(r.num_rows for r in rows)  # each counts as a record read
        lines = np.sort(np.concatenate(slow))
        yield from _merge(block, lines, rows, damage, extract, schema)


def _merge(
    block: Block, slow: np.ndarray, rows: list[pa.Table], damage: DamageLog,
    extract: Callable[[dict], tuple], schema: pa.Schema,
) -> Iterator[pa.RecordBatch]:  # fmt: skip
    """The block's rows in line order: the columns read, and the ``slow`` lines read one by one."""
    raw = ((block.number(i), block.raw(i)) for i in slow)
    texts = ((n, t) for n, r in raw if (t := decode_line(n, r, damage)) is not None)
    records = json_records(texts, damage, literal_ok=False)
    rest = [
        pa.Table.from_batches([b])
        for b in batches(records, extract, schema, damage, with_line=True)
    ]
    yield from pa.concat_tables([*rows, *rest]).sort_by("line").to_batches()


# --------------------------------------------------------------------------- reviews
def _plain_reviews(table: pa.Table, keys: list[str], unit: str) -> np.ndarray:
    """Rows whose values are what the per-line extract takes them to be: ids that need no
    trimming, a rating in 1..5, a whole-number time in range (or none)."""
    user, item, rating, time = (table.column(k) for k in keys)
    ok = pc.and_(_plain_id_arrow(user), _plain_id_arrow(item))
    in_scale = pc.and_(pc.greater_equal(rating, 1.0), pc.less_equal(rating, 5.0))
    ok = pc.and_(ok, pc.fill_null(in_scale, False))
    scale = 1000.0 if unit == "ms" else 1.0  # timestamp_value's range, in the file's unit
    in_range = pc.and_(
        pc.and_(pc.greater_equal(time, 631_152_000 * scale), pc.less_equal(time, 4_102_444_800 * scale)),
        pc.equal(pc.floor(time), time),
    )  # fmt: skip
    ok = pc.and_(ok, pc.or_kleene(pc.is_null(time), in_range))
    return ok.to_numpy(zero_copy_only=False)


def _plain_id_arrow(ids: pa.ChunkedArray) -> pa.ChunkedArray:
    # First and last character printable ASCII: str.strip() leaves it as it is.
    first = pc.match_substring_regex(ids, r"\A[!-~]")
    return pc.fill_null(pc.and_(first, pc.match_substring_regex(ids, r"[!-~]\z")), False)


def _review_rows(table: pa.Table, keys: list[str], unit: str, lines: np.ndarray) -> pa.Table:
    user, item, rating, time = (table.column(k) for k in keys)
    ms = pc.multiply(time, 1000.0) if unit == "s" else time
    columns = [
        user,
        item,
        pc.cast(rating, pa.float32()),
        pc.cast(pc.cast(ms, pa.int64()), TIMESTAMP),
        pa.array(lines, pa.int64()),
    ]
    return pa.Table.from_arrays(columns, schema=RAW_INTERACTION)


# --------------------------------------------------------------------------- 2023 metadata
def _plain_id(ids: pl.Expr) -> pl.Expr:
    """An id ``require_id`` keeps as it is (first and last character printable ASCII)."""
    return ids.str.contains(r"\A[!-~]") & ids.str.contains(r"[!-~]\z")


@cache
def _white_space(space: bool = True) -> str:
    """A regex class of exactly the characters ``str.split()`` splits on (``str.isspace``),
    or all of them but the space."""
    chars = [c for c in range(0x110000) if chr(c).isspace() and (space or c != 0x20)]
    return "[" + "".join(f"\\x{{{c:x}}}" for c in chars) + "]"


def _text(value: pl.Expr) -> pl.Expr:
    """``" ".join(value.split())``: runs of white space to one space, none at the ends (text
    with single spaces between words, the most, is left as it is)."""
    odd = f"{_white_space(space=False)}|^ | $|  "
    tidy = value.str.replace_all(_white_space() + "+", " ").str.strip_chars(" ")
    return pl.when(value.str.contains(odd)).then(tidy).otherwise(value)


def _meta_values() -> list[pl.Expr]:
    """RAW_ITEM's columns but the price, as ``meta_extractor("amazon2023")`` computes them."""
    col, element = pl.col, pl.element()
    texts = col("description").list.eval(_text(element)).list.eval(element.filter(element != ""))
    categories = (
        col("categories").list.eval(_text(element)).list.eval(element.filter(element != ""))
    )
    url = pl.coalesce(
        [element.struct.field(k).replace("", None) for k in ("large", "hi_res", "thumb")]
    )
    return [
        col("parent_asin").alias("item_id"),
        _text(col("title")).replace("", None).alias("title"),
        texts.list.join(" ").replace("", None).alias("description"),
        categories.list.unique(maintain_order=True).fill_null([]).alias("categories"),
        col("images").list.eval(url).list.drop_nulls().fill_null([]).alias("image_urls"),
        _text(col("store")).replace("", None).alias("brand"),
    ]


def _price() -> pl.Expr:
    """``price_value`` of a number or null: kept where finite and not negative."""
    price = pl.col("price")
    return pl.when(price.is_finite() & (price >= 0)).then(price).alias("price")


def _text_price(price: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """``price_value`` of text: (rows it is sure of, the value). After dropping ``$`` and
    ``,`` and what follows a ``-``, plain decimals are numbers and text without a digit is no
    price (``float`` reads no other digitless text but inf and nan); the rest goes line by
    line."""
    text = price.str.replace_all("$", "", literal=True).str.replace_all(",", "", literal=True)
    ws = _white_space() + "+"
    text = text.str.split("-").list.first().str.replace_all(f"^{ws}|{ws}$", "")
    plain = text.str.contains(r"^[0-9]+(\.[0-9]+)?$")
    sure = price.is_null() | plain | ~text.str.contains(r"\d")
    return sure, pl.when(plain).then(text.cast(pl.Float64, strict=False)).alias("price")
