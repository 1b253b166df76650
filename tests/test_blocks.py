"""The block reader of review files (pyarrow a block at a time, the rest line by line) gives
exactly what the per-line reader gives: the same rows, line numbers, values and damage log,
whatever the lines hold and wherever the block boundaries fall."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import DamageLog, InputError
from pipeline.schemas import RAW_INTERACTION, RAW_ITEM
from pipeline.sources import amazon, blocks
from pipeline.sources.lines import batches, iter_lines, json_records
from tests.records import meta2023, review2018, review2023

GOOD = [review2023(f"U{i}", f"B{i % 7}", 1 + i % 5, 1_600_000_000_000 + i) for i in range(40)]
# Lines pyarrow and json.loads might read differently, or that only json.loads reads.
ODD = [
    b"",
    b"   \t",
    b"\x0c",
    b"null",
    b"[1, 2]",
    b'"a string"',
    b"{}",
    b'{"user_id": "u"',  # truncated
    review2023("U1", "B1", 4.0)[:-1].encode() + b", 'x': 1}",
    review2023("U1", "B1", 4.0).encode() + b"\r",
    review2023("U1", "B1", 4.0).encode() * 2,  # two objects on one line
    review2023("U1", "B1", 4.0).encode() + b" x",
    b"\xef\xbb\xbf" + review2023("U1", "B1", 4.0).encode(),  # BOM
    review2023("U1", "B1", 4.0, helpful_vote=0)
    .replace('"helpful_vote": 0', '"helpful_vote": Inf')
    .encode(),
    review2023("U1", "B1", 4.0).replace('"helpful_vote": 0', '"helpful_vote": -Inf').encode(),
    review2023("U1", "B1", 4.0).replace('"helpful_vote": 0', '"helpful_vote": Infinity').encode(),
    review2023("U1", "B1", 4.0).replace('"helpful_vote": 0', '"helpful_vote": NaN').encode(),
    review2023("U1", "B1", 4.0).replace("4.0", "NaN").encode(),
    review2023("U1", "B1", 4.0).replace("4.0", "1e999").encode(),
    review2023("U1", "B1", "4.0").encode(),  # rating as text
    review2023("U1", "B1", True).encode(),
    review2023("U1", "B1", 0.0).encode(),
    review2023("U1", "B1", 5.000000000000001).encode(),
    review2023(12345, "B1", 3.0).encode(),  # numeric id
    review2023(" U1 ", "B1", 3.0).encode(),  # id to trim
    review2023("\u00a0U1", "B1", 3.0).encode(),  # Unicode white space
    review2023("\x1cU1", "B1", 3.0).encode(),  # white space to str.strip only
    review2023("U1\n", "B1", 3.0).encode(),
    review2023("", "B1", 3.0).encode(),
    review2023("Ü1", "B1", 3.0).encode(),
    json.dumps(
        {"user_id": "U\u00fc", "parent_asin": "B1", "rating": 2}, ensure_ascii=False
    ).encode(),
    json.dumps({"user_id": "U\ud800", "parent_asin": "B", "rating": 3}, ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    ),  # not UTF-8
    review2023("U1", "B1", 3.0, ts=1_600_000_000_000.5).encode(),
    review2023("U1", "B1", 3.0, ts=1.6e12).encode(),
    review2023("U1", "B1", 3.0, ts="1600000000000").encode(),
    review2023("U1", "B1", 3.0, ts="").encode(),
    review2023("U1", "B1", 3.0, ts=None).encode(),
    review2023("U1", "B1", 3.0, ts=5).encode(),
    review2023("U1", "B1", 3.0, ts=631_152_000_000).encode(),
    review2023("U1", "B1", 3.0, ts=631_151_999_999).encode(),
    review2023("U1", "B1", 3.0, ts=4_102_444_800_000).encode(),
    review2023("U1", "B1", 3.0, ts=4_102_444_800_001).encode(),
    review2023("U1", "B1", 3.0, ts=10**30).encode(),
    review2023("U1", "B1", 3.0, user_id={"a": 1}).encode(),
    b'{"user_id": "U1", "user_id": "U2", "parent_asin": "B1", "rating": 3}',
    b'{"user\\u005fid": "U3", "parent_asin": "B1", "rating": 3}',
    b'{"user_id": "U1", "parent_asin": "B1", "rating": 3}\t',
    b'{"user_id": "U1\\u0000", "parent_asin": "B1", "rating": 3}',
]


def by_line(release: str, path) -> tuple[pa.Table, dict]:
    """The per-line reader: json.loads and the extract on every line."""
    damage = DamageLog(str(path), max_bad_fraction=1.0)
    records = json_records(iter_lines(path, damage), damage, literal_ok=False)
    rows = batches(
        records, amazon.review_extractor(release), RAW_INTERACTION, damage, with_line=True
    )
    return pa.Table.from_batches(list(rows), schema=RAW_INTERACTION), damage.state()


def by_block(release: str, path) -> tuple[pa.Table, dict]:
    damage = DamageLog(str(path), max_bad_fraction=1.0)
    rows = list(amazon.read_reviews(release, path, damage))
    return pa.Table.from_batches(rows, schema=RAW_INTERACTION), damage.state()


def write(path, lines: list[bytes | str], end: bool = True):
    body = b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines)
    path.write_bytes(gzip.compress(body + (b"\n" if end else b""), mtime=0))
    return path


@pytest.mark.parametrize("block_bytes", [300, 4096, 1 << 24])
@pytest.mark.parametrize("end", [True, False])
def test_odd_lines_among_good_ones_read_as_line_by_line(tmp_path, monkeypatch, block_bytes, end):
    monkeypatch.setattr(blocks, "BLOCK_BYTES", block_bytes)
    lines = [x for pair in zip(GOOD, ODD, strict=False) for x in pair] + GOOD[len(ODD) :] + ODD
    path = write(tmp_path / "r.jsonl.gz", lines, end=end)
    fast, slow = by_block("amazon2023", path), by_line("amazon2023", path)
    assert fast[0].equals(slow[0])
    assert fast[1] == slow[1]
    assert fast[0].num_rows > len(GOOD)  # the odd lines that are reviews count too


def test_seconds_release_reads_as_line_by_line(tmp_path):
    lines = [review2018(f"U{i}", f"B{i}", 1 + i % 5, 1_400_000_000 + i) for i in range(50)]
    lines += [review2018("U1", "B1", 3.0, 1_400_000_000.5), review2018("U1", "B1", 3.0, 10)]
    path = write(tmp_path / "r.json.gz", lines)
    fast, slow = by_block("amazon2018", path), by_line("amazon2018", path)
    assert fast[0].equals(slow[0]) and fast[1] == slow[1]
    assert fast[0].num_rows == 51  # a fractional second is a time too; 10 s is out of range


def test_every_line_through_pyarrow_is_a_review_read_exactly(tmp_path):
    """Plain lines are read by pyarrow (none goes line by line), with the same values."""
    path = write(tmp_path / "r.jsonl.gz", GOOD)
    block = next(blocks.read_blocks(path))
    parsed = blocks.parse_block(
        block, pa.schema([("user_id", pa.string())]), blocks.candidates(block)
    )
    assert len(parsed.fast) == len(GOOD) and not len(parsed.slow)
    assert by_block("amazon2023", path)[0].equals(by_line("amazon2023", path)[0])


def test_a_truncated_gzip_fails_naming_the_same_line(tmp_path):
    path = write(tmp_path / "r.jsonl.gz", GOOD * 50)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputError) as by_lines:
        by_line("amazon2023", path)
    with pytest.raises(InputError) as by_blocks:
        by_block("amazon2023", path)
    assert str(by_blocks.value) == str(by_lines.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def review_lines(draw) -> bytes:
    record = json.loads(review2023(draw(st.text(min_size=1, max_size=6)), "B1", 4.0))
    for key in draw(st.lists(st.sampled_from(list(record)), max_size=3)):
        record[key] = draw(json_values)
    line = json.dumps(record, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:
        line = line[: draw(st.integers(0, len(line)))]
    return line.replace("\n", " ").encode("utf-8", "surrogatepass")


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(review_lines(), min_size=1, max_size=40))
def test_any_review_lines_read_as_line_by_line(tmp_path_factory, lines):
    path = write(tmp_path_factory.mktemp("r") / "r.jsonl.gz", [*GOOD[:5], *lines])
    fast, slow = by_block("amazon2023", path), by_line("amazon2023", path)
    assert fast[0].equals(slow[0]) and fast[1] == slow[1]


def meta_by_line(path) -> tuple[pa.Table, dict]:
    damage = DamageLog(str(path), max_bad_fraction=1.0)
    records = json_records(iter_lines(path, damage), damage, literal_ok=False)
    rows = batches(records, amazon.meta_extractor("amazon2023"), RAW_ITEM, damage, with_line=False)
    return pa.Table.from_batches(list(rows), schema=RAW_ITEM), damage.state()


def meta_by_block(path) -> tuple[pa.Table, dict]:
    damage = DamageLog(str(path), max_bad_fraction=1.0)
    rows = list(amazon.read_meta("amazon2023", path, damage))
    return pa.Table.from_batches(rows, schema=RAW_ITEM), damage.state()


META_GOOD = [meta2023(f"B{i}", f"Book {i}", price=[9.99, None, 12][i % 3]) for i in range(40)]
META_ODD = [
    meta2023("B1", price="$1,299.00"),
    meta2023("B1", price="$5.99 - $9.99"),
    meta2023("B1", price="None"),
    meta2023("B1", price=""),
    meta2023("B1", price="1e5"),
    meta2023("B1", price="inf"),
    meta2023("B1", price=" 7.5 "),
    meta2023("B1", price="\u0663"),  # an Arabic-Indic digit: float() reads it
    meta2023("B1", price=-3),
    meta2023("B1", price=True),
    meta2023("B1", price=float("nan")),
    meta2023("B1", details={"price": "$3"}),  # a nested price in text, the item's a number
    meta2023("B1", title="  Two   spaces\tand a tab "),
    meta2023("B1", title="\u00a0No-break\u2003em\u3000ideographic\x1cfile-sep"),
    meta2023("B1", title=""),
    meta2023("B1", title=12),
    meta2023("B1", title=["a list"]),
    meta2023("B1", description="a string"),
    meta2023("B1", description=["", None, "  x  y ", "z"]),
    meta2023("B1", description=[]),
    meta2023("B1", description=[["nested"]]),
    meta2023("B1", categories=["Books", " Books ", "", None, "Fantasy", "Books"]),
    meta2023("B1", categories=[], category=["Old style"]),
    meta2023("B1", categories=None),
    meta2023("B1", categories="Books"),
    meta2023("B1", images=[{"large": "", "hi_res": "h", "thumb": "t"}, None, {"thumb": ""}]),
    meta2023("B1", images=[{"large": 5}]),
    meta2023("B1", images={"large": "x"}),
    meta2023("B1", images=None),
    meta2023("B1", store="  Some\n Press "),
    meta2023("B1", store=7),
    meta2023(" B1 "),
    meta2023(""),
    '{"parent_asin": "B1", "title": "x", "price": 1',
    "{}",
]


@pytest.mark.parametrize("block_bytes", [500, 1 << 24])
def test_odd_metadata_among_good_reads_as_line_by_line(tmp_path, monkeypatch, block_bytes):
    monkeypatch.setattr(blocks, "BLOCK_BYTES", block_bytes)
    lines = [x for pair in zip(META_GOOD, META_ODD, strict=False) for x in pair] + META_ODD
    path = write(tmp_path / "m.jsonl.gz", lines)
    fast, slow = meta_by_block(path), meta_by_line(path)
    assert fast[0].equals(slow[0])
    assert fast[1] == slow[1]


meta_keys = ["title", "description", "categories", "images", "store", "price", "category"]


@st.composite
def meta_lines(draw) -> bytes:
    record = json.loads(meta2023(draw(st.text(min_size=1, max_size=6))))
    for key in draw(st.lists(st.sampled_from(meta_keys), max_size=3)):
        record[key] = draw(json_values | st.lists(st.text(max_size=6), max_size=3))
    line = json.dumps(record, ensure_ascii=draw(st.booleans()))
    return line.replace("\n", " ").encode("utf-8", "surrogatepass")


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(meta_lines(), min_size=1, max_size=30))
def test_any_metadata_lines_read_as_line_by_line(tmp_path_factory, lines):
    path = write(tmp_path_factory.mktemp("m") / "m.jsonl.gz", [*META_GOOD[:5], *lines])
    fast, slow = meta_by_block(path), meta_by_line(path)
    assert fast[0].equals(slow[0]) and fast[1] == slow[1]
