"""prepare on Amazon-2023-shaped data with its mess (benchmarks.amazon_like): the tables built
one key range at a time equal the tables built in one piece, and the damage the generator
injected is what prepare reports."""

from __future__ import annotations

import json
import logging

import polars as pl
import pytest

from benchmarks.amazon_like import generate
from pipeline import download, prepare, split
from pipeline.config import load_params
from pipeline.tables import assemble, buckets
from tests.conftest import amazon_params, write_params

TABLES = ("interactions", "items", "users")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("amazon_like")
    generate(root, rows=12_000, seed=3)
    return root


def run(workdir, mirror, **prep) -> tuple[dict, dict[str, pl.DataFrame]]:
    params = load_params(amazon_params(workdir, mirror.as_uri(), prepare=prep))
    download.download(params)
    stats = prepare.prepare(params)
    return stats, {t: pl.read_parquet(f"data/prepared/{t}.parquet") for t in TABLES}


@pytest.mark.parametrize(("duplicates", "k_core"), [("mean", 0), ("last", 3), ("max", 2)])
def test_tables_built_in_key_ranges_equal_one_piece(
    workdir, mirror, monkeypatch, caplog, duplicates, k_core
):
    whole = run(workdir, mirror, duplicates=duplicates, k_core=k_core)
    monkeypatch.setattr(buckets, "BUCKET_ROWS", 1_000)
    monkeypatch.setattr(assemble, "META_BUCKET_BYTES", 100_000)
    with caplog.at_level(logging.INFO, logger="prepare"):
        ranged = run(workdir, mirror, duplicates=duplicates, k_core=k_core)
    assert "in 12 ranges of users" in caplog.text  # 11,99x parsed rows
    assert ranged[0] == whole[0]
    for name in TABLES:
        assert ranged[1][name].equals(whole[1][name]), name


def test_key_ranges_cut_in_order_without_overlap(tmp_path):
    ids = pl.DataFrame({"k": [f"u{i:05d}" for i in range(10_000)][::-1]})
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]  # read as one table, in order
    ids[:3_000].write_parquet(paths[0], row_group_size=700)
    ids[3_000:].write_parquet(paths[1], row_group_size=900)
    ranges = buckets.key_ranges(paths, "k", 7)
    sizes = [ids.filter(r).height for r in ranges]
    firsts = [ids.filter(r)["k"].min() for r in ranges]
    assert sum(sizes) == 10_000 and min(sizes) > 1_000
    assert firsts == sorted(firsts)
    assert len(buckets.key_ranges(paths, "k", 1)) == 1


def test_the_injected_damage_is_what_prepare_reports(workdir, mirror):
    stats, tables = run(workdir, mirror)
    truth = json.loads((mirror / "truth.json").read_text())
    for domain, category in (("books", "Books"), ("movies", "Movies_and_TV")):
        made = truth["categories"][category]
        bad = sum(made[k] for k in ("truncated", "no_user", "no_rating", "bad_rating", "not_utf8"))
        assert stats["records_skipped"][f"data/raw/{domain}/reviews.jsonl.gz"] == bad
        assert (
            stats["records_skipped"][f"data/raw/{domain}/meta.jsonl.gz"] == made["meta_truncated"]
        )
        counts = stats["domains"][domain]
        assert counts["rows_parsed"] == made["review_lines"] - bad - made["blank"]
        assert counts["duplicate_rows_merged"] >= made["duplicate_lines_injected"] // 2
        assert counts["users"] <= made["users"] and counts["items"] <= made["items_reviewed"]
        assert 0.9 < counts["metadata_coverage"] < 1.0  # reviewed items without a record
    assert stats["overlap_users"]["books|movies"] > 0


@pytest.mark.parametrize("pinned", [False, True])
def test_roles_read_in_key_ranges_equal_one_piece(workdir, mirror, monkeypatch, pinned):
    run(workdir, mirror)
    overrides = {}
    if pinned:
        users = pl.read_parquet("data/prepared/users.parquet")
        both = users.group_by("user_id").len().filter(pl.col("len") == 2)["user_id"].sort()
        (workdir / "test_users.txt").write_text("\n".join(both[::7].to_list()) + "\n")
        overrides = {"test_users_file": str(workdir / "test_users.txt")}
    write_params(workdir / "p2.yaml", split=overrides)
    whole = split.split(load_params(workdir / "p2.yaml"))
    roles = pl.read_parquet("data/split/roles.parquet")
    monkeypatch.setattr(buckets, "BUCKET_ROWS", 700)
    assert split.split(load_params(workdir / "p2.yaml")) == whole
    assert pl.read_parquet("data/split/roles.parquet").equals(roles)
    assert roles["role"].value_counts().height == 5
