"""Parsers of every source format, on small files in the real record shapes."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.errors import DamageLog, InputError
from pipeline.sources import read_interactions, read_items
from tests.records import gz_lines, meta2014, meta2018, meta2023, review2018, review2023


def table(batches) -> pa.Table:
    return pa.Table.from_batches(list(batches))


def test_amazon2023_reviews_and_meta(tmp_path):
    reviews = gz_lines(
        tmp_path / "r.jsonl.gz", [review2023("U1", "B1", 5.0), review2023("U2", "B1", 3.0)]
    )
    damage = DamageLog(str(reviews))
    rows = table(read_interactions("amazon2023", reviews, damage)).to_pylist()
    assert [(r["user_id"], r["item_id"], r["rating"]) for r in rows] == [
        ("U1", "B1", 5.0),
        ("U2", "B1", 3.0),
    ]
    assert rows[0]["event_timestamp"].year == 2020  # milliseconds since the epoch
    assert rows[0]["line"] == 1

    meta = gz_lines(tmp_path / "m.jsonl.gz", [meta2023("B1", "The Hobbit")])
    item = table(read_items("amazon2023", meta, DamageLog(str(meta)))).to_pylist()[0]
    assert item["title"] == "The Hobbit"
    assert item["description"] == "First line. Second line."
    assert item["categories"] == ["Books", "Fantasy"]
    assert item["image_urls"] == ["https://img/B1_l.jpg"]  # 'large', not the thumbnail
    assert item["brand"] == "Some Press"
    assert item["price"] == pytest.approx(9.99)


def test_amazon2018_reviews_and_meta(tmp_path):
    reviews = gz_lines(tmp_path / "r.json.gz", [review2018("A1", "0001", 4.0)])
    row = table(read_interactions("amazon2018", reviews, DamageLog("r"))).to_pylist()[0]
    assert (row["user_id"], row["item_id"], row["rating"]) == ("A1", "0001", 4.0)
    assert row["event_timestamp"].year == 2014  # seconds since the epoch
    meta = gz_lines(tmp_path / "m.json.gz", [meta2018("0001", "Casablanca")])
    item = table(read_items("amazon2018", meta, DamageLog("m"))).to_pylist()[0]
    assert item["title"] == "Casablanca"
    assert item["categories"] == ["Movies & TV", "Drama"]
    assert item["image_urls"] == ["https://img/0001_hi.jpg"]
    assert item["price"] == pytest.approx(12.99)  # "$12.99"


def test_amazon2014_meta_is_python_literals(tmp_path):
    reviews = gz_lines(tmp_path / "r.json.gz", [review2018("A1", "C1", 2.0)])
    assert table(read_interactions("amazon2014", reviews, DamageLog("r"))).num_rows == 1
    meta = gz_lines(tmp_path / "m.json.gz", [meta2014("C1", "Abbey Road")])
    item = table(read_items("amazon2014", meta, DamageLog("m"))).to_pylist()[0]
    assert item["title"] == "Abbey Road"
    assert item["categories"] == ["CDs & Vinyl", "Rock", "Pop"]  # list of lists, flattened
    assert item["image_urls"] == ["http://img/C1.jpg"]


def test_recbole_typed_and_untyped_headers(tmp_path):
    typed = tmp_path / "a.inter"
    typed.write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\nu1\ti1\t4.5\t1400000000\n"
    )
    row = table(read_interactions("recbole", typed, DamageLog("a"))).to_pylist()[0]
    assert (row["user_id"], row["item_id"], row["rating"]) == ("u1", "i1", 4.5)
    assert row["event_timestamp"].year == 2014
    plain = tmp_path / "b.inter"
    plain.write_text("item_id\tuser_id\trating\ni1\tu1\t2.0\n")  # column order does not matter
    row = table(read_interactions("recbole", plain, DamageLog("b"))).to_pylist()[0]
    assert (row["user_id"], row["item_id"], row["rating"]) == ("u1", "i1", 2.0)


def test_recbole_without_rating_is_implicit(tmp_path):
    path = tmp_path / "c.inter"
    path.write_text("user_id:token\titem_id:token\nu1\ti1\nu2\ti1\n")
    rows = table(read_interactions("recbole", path, DamageLog("c"))).to_pylist()
    assert [r["rating"] for r in rows] == [None, None]


def test_recbole_without_rating_says_it_reads_implicit_feedback(tmp_path, caplog):
    path = tmp_path / "typo.inter"
    path.write_text("user_id:token\titem_id:token\tratng:float\nu1\ti1\t5\n")
    with caplog.at_level("WARNING"):
        rows = table(read_interactions("recbole", path, DamageLog("t"))).to_pylist()
    assert rows[0]["rating"] is None
    assert "typo.inter: no rating column" in caplog.text and "'ratng'" in caplog.text


def test_recbole_byte_order_mark_repeated_column_and_short_lines(tmp_path, caplog):
    bom = tmp_path / "bom.inter"
    bom.write_bytes("\ufeffuser_id:token\titem_id:token\trating:float\nu1\ti1\t4\n".encode())
    assert table(read_interactions("recbole", bom, DamageLog("b"))).to_pylist()[0]["rating"] == 4
    twice = tmp_path / "twice.inter"
    twice.write_text("user_id\titem_id\trating\trating\nu1\ti1\t4\t5\n")
    with pytest.raises(InputError, match=r"twice.inter:1: the header repeats .*\['rating'\]"):
        list(read_interactions("recbole", twice, DamageLog("t")))
    # Trailing empty fields left off (the last line without a newline too) are read as empty,
    # and counted in a warning: a line cut short reads the same way.
    short = tmp_path / "short.inter"
    short.write_text("user_id\titem_id\trating\ttimestamp\nu1\ti1\t4\t1400000000\nu2\ti2\t4")
    with caplog.at_level("WARNING"):
        rows = table(read_interactions("recbole", short, DamageLog(str(short)))).to_pylist()
    assert [(r["user_id"], r["event_timestamp"]) for r in rows][1] == ("u2", None)
    assert "short.inter: 1 line(s) had fewer fields than the header" in caplog.text
    assert "(first: line 3)" in caplog.text


def test_recbole_item_file(tmp_path):
    path = tmp_path / "x.item"
    path.write_text(
        "item_id:token\tcategories:token_seq\ttitle:token\tprice:float\tbrand:token\n"
        "0005\t'TV', 'Movies & TV'\tJoseph [VHS]\t6.88\t\n"
    )
    item = table(read_items("recbole", path, DamageLog("x"))).to_pylist()[0]
    assert item["categories"] == ["TV", "Movies & TV"]
    assert item["title"] == "Joseph [VHS]"
    assert item["brand"] is None


@pytest.mark.parametrize(
    ("line", "kind", "where"),
    [
        (b'{"user_id": "U1", "parent_asin": "B1", "rating": 5.0', "bad_json", ":2: malformed JSON"),
        (b'{"user_id": "U1", "parent_asin": "B1', "bad_json", ":2: malformed JSON (Unterminated"),
        (
            review2023("U1", "B1", 7.0).encode(),
            "bad_rating",
            ":2: field 'rating': rating 7.0 is outside 1..5",
        ),
        (
            b'{"user_id": "U1", "rating": 4.0, "timestamp": 1600000000000}',
            "missing_field",
            ":2: field 'parent_asin': missing",
        ),
        (
            review2023("U1", "B1", 4.0).replace('"U1"', '"U\xe9"').encode("latin-1"),
            "not_utf8",
            ":2: not valid UTF-8",
        ),
        (b'["a", "list"]', "bad_json", ":2: expected a JSON object"),
    ],
)
def test_bad_records_are_named_counted_and_skipped(tmp_path, line, kind, where):
    path = gz_lines(
        tmp_path / "r.jsonl.gz", [review2023("U0", "B0", 4.0), line, review2023("U2", "B2", 1.0)]
    )
    damage = DamageLog(str(path), max_bad_fraction=0.5)
    rows = table(read_interactions("amazon2023", path, damage))
    assert rows.num_rows == 2  # the good lines survive
    assert damage.bad == 1 and damage.reasons[kind] == 1
    assert where in damage.examples[0] and damage.examples[0].startswith(str(path))
    damage.check()  # tolerable: a warning, not a failure


def test_damage_past_the_threshold_fails_naming_file_and_line(tmp_path):
    lines = [review2023(f"U{i}", "B1", 4.0) for i in range(20)] + [b"not json", b"{}"]
    path = gz_lines(tmp_path / "r.jsonl.gz", lines)
    damage = DamageLog(str(path), max_bad_fraction=0.001)
    list(read_interactions("amazon2023", path, damage))
    with pytest.raises(InputError) as err:
        damage.check()
    message = str(err.value)
    assert str(path) in message and ":21: malformed JSON" in message
    assert "prepare.max_bad_fraction" in message


def test_empty_recbole_file_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.inter"
    path.write_text("")
    with pytest.raises(InputError, match="empty.inter:1: file is empty"):
        list(read_interactions("recbole", path, DamageLog("e")))
