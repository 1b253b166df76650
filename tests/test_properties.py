"""Properties that hold for any input (hypothesis draws the inputs; a failure prints the
smallest one it found).

- arbitrary junk lines never crash a parser, and every line is either a row or counted as
  skipped;
- split roles partition the users, deterministically;
- no cold user's target interaction reaches a training table;
- a users file of any shape (blank lines, BOM, CRLF, duplicates, unicode, very long ids) gives
  every distinct id either a list or a reason in the rejects.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cdr import data as cdr_data
from pipeline.config.split import SplitParams
from pipeline.errors import DamageLog
from pipeline.io import WHITESPACE
from pipeline.recs import plan
from pipeline.sources import read_interactions, read_items
from pipeline.tables.roles import assign_roles
from tests.faults import record
from tests.records import meta2023, review2023

EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "60"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples every run: CI never flakes on a new draw
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --------------------------------------------------------------------------- parsers
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
REVIEW_KEYS = ["user_id", "parent_asin", "rating", "timestamp", "title", "images"]


@st.composite
def review_like(draw) -> bytes:
    """A review line: valid, a valid record with fields replaced by anything, or junk."""
    kind = draw(st.sampled_from(["valid", "mutated", "json", "text", "bytes"]))
    if kind == "valid":
        line = review2023(draw(st.text(min_size=1, max_size=12)), "b1", draw(st.integers(1, 5)))
    elif kind == "mutated":
        record_ = json.loads(review2023("u", "b", 4.0))
        for key in draw(st.lists(st.sampled_from(REVIEW_KEYS), max_size=3)):
            record_[key] = draw(json_values)
        line = json.dumps(record_)
    elif kind == "json":
        line = json.dumps(draw(json_values))
    elif kind == "text":
        line = draw(st.text(max_size=80))
    else:
        return draw(st.binary(max_size=80)).replace(b"\n", b" ")
    return line.replace("\n", " ").encode("utf-8", "surrogatepass")


def _non_blank(lines: list[bytes]) -> int:
    return sum(bool(line.strip()) for line in lines)


@SETTINGS
@given(lines=st.lists(review_like(), max_size=30), compressed=st.booleans())
def test_junk_lines_never_crash_the_review_parser_and_are_all_counted(
    tmp_path_factory, lines, compressed
):
    path = tmp_path_factory.mktemp("junk") / "reviews.jsonl.gz"
    body = b"".join(line + b"\n" for line in lines)
    path.write_bytes(gzip.compress(body, mtime=0) if compressed else body)
    damage = DamageLog(str(path), max_bad_fraction=1.0)
    rows = sum(b.num_rows for b in read_interactions("amazon2023", path, damage))
    assert rows + damage.bad == damage.total == _non_blank(lines)
    assert sum(damage.reasons.values()) == damage.bad


@st.composite
def meta_like(draw) -> bytes:
    if draw(st.booleans()):
        record_ = json.loads(meta2023(draw(st.text(min_size=1, max_size=8))))
        for key in draw(
            st.lists(
                st.sampled_from(["title", "categories", "images", "price", "description"]),
                max_size=3,
            )
        ):
            record_[key] = draw(json_values)
        return json.dumps(record_).encode("utf-8", "surrogatepass")
    return draw(review_like())


@SETTINGS
@given(lines=st.lists(meta_like(), max_size=20))
def test_junk_lines_never_crash_the_metadata_parser_and_are_all_counted(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("junk") / "meta.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    damage = DamageLog(str(path), max_bad_fraction=1.0)
    rows = sum(b.num_rows for b in read_items("amazon2023", path, damage))
    assert rows + damage.bad == damage.total == _non_blank(lines)


cell = st.text(alphabet=st.characters(blacklist_characters="\t\n\r"), max_size=12)


@SETTINGS
@given(rows=st.lists(st.lists(cell, min_size=0, max_size=6), max_size=25))
def test_junk_rows_never_crash_the_recbole_parser_and_are_all_counted(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("junk") / "x.inter"
    text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    text += "".join("\t".join(row) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    lines = [("\t".join(row)).encode("utf-8", "surrogatepass") for row in rows]
    damage = DamageLog(str(path), max_bad_fraction=1.0)
    n = sum(b.num_rows for b in read_interactions("recbole", path, damage))
    assert n + damage.bad == damage.total == _non_blank(lines)


# --------------------------------------------------------------------------- split
ids = st.text(alphabet="abcdefghij0123456789", min_size=1, max_size=6)


@SETTINGS
@given(
    source=st.sets(ids, max_size=60),
    target=st.sets(ids, max_size=60),
    seed=st.integers(0, 2**31),
    test=st.floats(0, 0.49),
    valid=st.floats(0, 0.49),
)
def test_split_roles_partition_the_users(source, target, seed, test, valid):
    params = SplitParams(seed=seed, test_fraction=test, valid_fraction=valid)
    roles = assign_roles(source, target, params)
    assert set(roles) == source | target  # every user, exactly one role (a dict)
    for user, role in roles.items():
        if user in source and user in target:
            assert role in ("train_overlap", "valid_cold", "test_cold")
        else:
            assert role == ("source_only" if user in source else "side")
    assert assign_roles(set(sorted(source)), set(sorted(target)), params) == roles


@SETTINGS
@given(
    rows=st.lists(
        st.tuples(ids, st.sampled_from(["s1", "s2", "t1", "t2", "t3"]), st.integers(1, 5)),
        min_size=1,
        max_size=80,
    ),
    seed=st.integers(0, 1000),
)
def test_no_cold_user_target_row_reaches_a_training_table(rows, seed):
    inter = pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "domain": ["src" if r[1].startswith("s") else "tgt" for r in rows],
            "rating": [float(r[2]) for r in rows],
        }
    ).unique(subset=["user_id", "item_id"], keep="first")
    by_domain = {d: set(inter.filter(pl.col("domain") == d)["user_id"]) for d in ("src", "tgt")}
    roles = assign_roles(
        by_domain["src"],
        by_domain["tgt"],
        SplitParams(seed=seed, test_fraction=0.3, valid_fraction=0.3),
    )
    table = pl.DataFrame({"user_id": list(roles), "role": list(roles.values())})
    data = cdr_data.build(inter, table, "src", "tgt")
    cold = {u for u, r in roles.items() if r in ("valid_cold", "test_cold")}
    trained = set(data.user_ids[data.tgt_train.user])
    assert not trained & cold
    held = set(data.user_ids[data.tgt_valid.user]) | set(data.user_ids[data.tgt_test.user])
    cold_target_rows = inter.filter(
        (pl.col("domain") == "tgt") & pl.col("user_id").is_in(list(cold))
    )
    assert len(data.tgt_valid) + len(data.tgt_test) == cold_target_rows.height
    assert held == set(cold_target_rows["user_id"])


# --------------------------------------------------------------------------- users files
@pytest.fixture(scope="module")
def trained(trained_project):
    """The tiny project's data and models, loaded once."""
    from pipeline.config import load_params
    from pipeline.recs import trained as trained_models
    from tests.faults import chdir

    with chdir(trained_project):
        data, fitted = trained_models.load(load_params("params.yaml"))
    return data, fitted


user_ids = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=200, max_size=2000),
    st.sampled_from(["", " ", "  padded  ", "\u00e9t\u00e9", "\U0001f600", "a,b", 'q"uote']),
    st.just("KNOWN"),
)


@SETTINGS
@given(
    users=st.lists(user_ids, max_size=25),
    bom=st.booleans(),
    crlf=st.booleans(),
    blank_lines=st.integers(0, 3),
    shape=st.sampled_from(["csv", "txt", "parquet"]),
)
def test_a_users_file_of_any_shape_gives_every_distinct_id_a_list_or_a_reason(
    trained, tmp_path_factory, users, bom, crlf, blank_lines, shape
):
    data, fitted = trained
    known = data.user_ids[data.cold_users("test")][:3].tolist()
    users = [known[i % 3] if u == "KNOWN" else u for i, u in enumerate(users)]
    users = [u.replace("\x00", "") for u in users]
    if shape == "txt":  # one id per line: no line breaks inside an id
        users = [" ".join(u.splitlines()) for u in users]
    path = tmp_path_factory.mktemp("users") / f"users.{shape}"
    end = "\r\n" if crlf else "\n"
    if shape == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator=end)
        writer.writerow(["user_id"])
        writer.writerows([u] for u in users)
        text = buf.getvalue() + end * blank_lines
    elif shape == "txt":
        text = "".join(u + end for u in users) + end * blank_lines
    if shape == "parquet":
        pl.DataFrame({"user_id": users}, schema={"user_id": pl.String}).write_parquet(path)
    else:
        path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8", "surrogatepass"))

    requested = plan.read_users(path)
    todo = plan.plan(data, fitted.ctx, requested, None)
    present = {u for u in requested if u}
    scored = set(todo.user_ids.tolist()) | set(todo.fold_ids.tolist())
    rejected = [u for u, _ in todo.rejects if u]
    assert scored | set(rejected) == present and not scored & set(rejected)
    assert len(rejected) == len(set(rejected))  # one reason per distinct id
    missing = sum(1 for u in requested if not u)
    assert sum(r == "missing_user_id" for _, r in todo.rejects) == missing
    expected = {
        u.strip(WHITESPACE)
        for u in users
        if u.strip(WHITESPACE) and not (shape == "txt" and u.strip(WHITESPACE).startswith("#"))
    }
    assert present == expected
    assert set(known) & expected <= scored


def test_the_property_runs_are_recorded():
    record(
        "hypothesis: junk lines, split roles, leakage, users files",
        times=6 * EXAMPLES,
        outcome=f"{EXAMPLES} drawn inputs per property (derandomized); no unhandled exception, "
        "every line and id accounted for",
        lost="none",
    )
