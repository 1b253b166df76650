"""The prepare stage on small raw files: canonical tables, duplicate policy, stats, errors."""

from __future__ import annotations

import json

import polars as pl
import pytest

from pipeline import download, prepare
from pipeline.config import load_params
from pipeline.errors import InputError, PipelineError
from pipeline.io import read_meta
from pipeline.schemas import INTERACTIONS, ITEMS, USERS, polars_schema
from tests.conftest import amazon_params, write_params
from tests.records import gz_lines, meta2023, review2023


def amazon_mirror(root, reviews: dict, meta: dict):
    """A local mirror laid out like the Amazon 2023 release."""
    for category, lines in reviews.items():
        gz_lines(root / "review_categories" / f"{category}.jsonl.gz", lines)
    for category, lines in meta.items():
        gz_lines(root / "meta_categories" / f"meta_{category}.jsonl.gz", lines)


def run(workdir, mirror, **prep):
    params = load_params(amazon_params(workdir, mirror.as_uri(), prepare=prep))
    download.download(params)
    return prepare.prepare(params)


@pytest.fixture
def mirror(tmp_path):
    root = tmp_path / "mirror"
    books = [
        review2023("u1", "b1", 5.0, ts=1_600_000_000_000),
        review2023("u1", "b1", 3.0, ts=1_700_000_000_000),  # duplicate, conflicting, later
        review2023("u1", "b2", 4.0),
        review2023("u2", "b1", 2.0),
        review2023("u3", "b2", 4.0),
    ]
    movies = [review2023("u1", "m1", 4.0), review2023("u2", "m1", 5.0), review2023("u4", "m2", 1.0)]
    amazon_mirror(
        root,
        {"Books": books, "Movies_and_TV": movies},
        {
            "Books": [meta2023("b1", "Dune")],
            "Movies_and_TV": [meta2023("m1", "Alien"), meta2023("m9", "Unrated")],
        },
    )
    return root


def test_tables_have_the_documented_schemas_and_keys(workdir, mirror):
    run(workdir, mirror)
    for name, schema in (("interactions", INTERACTIONS), ("items", ITEMS), ("users", USERS)):
        path = workdir / "data" / "prepared" / f"{name}.parquet"
        assert pl.read_parquet_schema(path) == dict(polars_schema(schema)), name
        assert read_meta(path)["dataset"] == "mini"
    inter = pl.read_parquet(workdir / "data/prepared/interactions.parquet")
    assert inter.height == 7
    assert inter.select(["domain", "user_id", "item_id"]).is_duplicated().sum() == 0


def test_duplicates_merged_by_mean_and_counted(workdir, mirror):
    stats = run(workdir, mirror)
    inter = pl.read_parquet(workdir / "data/prepared/interactions.parquet")
    row = inter.filter((pl.col("user_id") == "u1") & (pl.col("item_id") == "b1")).to_dicts()[0]
    assert row["rating"] == 4.0 and row["n_duplicates"] == 2
    books = stats["domains"]["books"]
    assert books["duplicate_rows_merged"] == 1 and books["conflicting_pairs"] == 1
    assert books["rows_parsed"] == 5 and books["interactions"] == 4
    assert stats["overlap_users"] == {"books|movies": 2}
    assert json.loads((workdir / "metrics/data_stats.json").read_text()) == stats


def test_duplicates_last_policy_keeps_the_latest(workdir, mirror):
    run(workdir, mirror, duplicates="last")
    inter = pl.read_parquet(workdir / "data/prepared/interactions.parquet")
    assert (
        inter.filter((pl.col("user_id") == "u1") & (pl.col("item_id") == "b1"))["rating"].item()
        == 3.0
    )


def test_items_without_metadata_are_kept_and_flagged(workdir, mirror):
    stats = run(workdir, mirror)
    items = pl.read_parquet(workdir / "data/prepared/items.parquet")
    assert set(items["item_id"]) == {"b1", "b2", "m1", "m2"}  # m9 has metadata but no ratings
    flags = dict(items.select("item_id", "has_metadata").iter_rows())
    assert flags == {"b1": True, "b2": False, "m1": True, "m2": False}
    assert items.filter(pl.col("item_id") == "b2")["categories"].to_list() == [[]]
    assert stats["domains"]["books"]["metadata_coverage"] == 0.5


def test_k_core_filters_per_domain(workdir, tmp_path):
    root = tmp_path / "kc"
    books = [review2023(u, b, 4.0) for u in ("u1", "u2") for b in ("b1", "b2")]
    movies = [review2023(u, m, 4.0) for u in ("u1", "u2") for m in ("m1", "m2")]
    amazon_mirror(
        root,
        {
            "Books": [*books, review2023("u3", "b1", 4.0)],
            "Movies_and_TV": [*movies, review2023("u4", "m2", 2.0)],
        },
        {"Books": [], "Movies_and_TV": []},
    )
    stats = run(workdir, root, k_core=2)
    assert stats["domains"]["books"]["interactions"] == 4  # u3 (one rating) removed
    assert stats["domains"]["movies"]["users"] == 2  # u4 removed


def test_empty_domain_after_k_core_is_a_clear_error(workdir, mirror):
    with pytest.raises(InputError, match="no interactions left after the 2-core filter"):
        run(workdir, mirror, k_core=2)


def test_domain_without_usable_rows_names_the_file(workdir, tmp_path):
    root = tmp_path / "m2"
    amazon_mirror(
        root,
        {"Books": [review2023("u1", "b1", 4.0)], "Movies_and_TV": ["", "   "]},
        {"Books": [], "Movies_and_TV": []},
    )
    with pytest.raises(
        InputError, match=r"reviews\.jsonl\.gz: domain 'movies' has no usable interactions"
    ):
        run(workdir, root)


def test_resumed_run_reuses_parsed_parts(workdir, mirror, caplog):
    run(workdir, mirror)
    caplog.clear()
    with caplog.at_level("INFO"):
        run(workdir, mirror)
    assert "parsed before" in caplog.text


def test_rating_scale_of_each_domain_from_its_raw_records(workdir, mirror):
    stats = run(workdir, mirror)
    # books: raw ratings 2..5 (the 5 and the 3 of u1/b1 merge into a 4, the scale keeps the 5)
    scale = {"books": {"min": 2.0, "max": 5.0}, "movies": {"min": 1.0, "max": 5.0}}
    assert read_meta(workdir / "data/prepared/interactions.parquet")["rating_scale"] == scale
    for domain, bounds in scale.items():
        row = stats["domains"][domain]
        assert (row["rating_min"], row["rating_max"]) == (bounds["min"], bounds["max"])
    assert json.loads((workdir / "metrics/data_stats.json").read_text()) == stats


def _recbole_params(workdir, files: dict):
    write_params(
        workdir / "params.yaml",
        dataset={
            "name": "local",
            "format": "recbole",
            "domains": {d: {"inter": str(path)} for d, path in files.items()},
        },
    )
    return load_params(workdir / "params.yaml")


def test_implicit_feedback_has_no_rating_scale(workdir, tmp_path):
    files = {}
    for domain, rows in (("books", ["u1\tb1", "u2\tb1"]), ("movies", ["u1\tm1", "u3\tm1"])):
        files[domain] = tmp_path / f"{domain}.inter"
        files[domain].write_text("\n".join(["user_id:token\titem_id:token", *rows]) + "\n")
    params = _recbole_params(workdir, files)
    download.download(params)
    stats = prepare.prepare(params)
    meta = read_meta(workdir / "data/prepared/interactions.parquet")
    assert meta["rating_scale"] == {"books": None, "movies": None}
    assert stats["domains"]["books"]["rating_min"] is None
    assert stats["domains"]["movies"]["rating_max"] is None
    assert stats["domains"]["movies"]["explicit"] is False


def test_errors_name_the_given_file_and_a_failed_download_is_never_prepared(workdir, tmp_path):
    files = {}
    for domain, rows in (("books", ["u1\tb1\t4", "u2\tb1\t5"]), ("movies", ["u1\tm1\t3"])):
        files[domain] = tmp_path / f"{domain}.inter"
        files[domain].write_text("\n".join(["user_id\titem_id\trating", *rows]) + "\n")
    download.download(_recbole_params(workdir, files))
    prepare.prepare(_recbole_params(workdir, files))

    bad = tmp_path / "bad.inter"
    bad.write_text("user_id\titem_id\trating\n" + "".join(f"u{i}\tb1\tfive\n" for i in range(3)))
    params = _recbole_params(workdir, {**files, "books": bad})
    download.download(params)
    with pytest.raises(InputError, match=rf"reviews.inter: 3 of 3 .* is a copy of {bad}\)\n"):
        prepare.prepare(params)

    # A download that fails on its first file leaves a manifest prepare refuses: the tables
    # are never rebuilt from the previous run's files under the new params.
    params = _recbole_params(workdir, {**files, "books": tmp_path / "nope.inter"})
    with pytest.raises(PipelineError):
        download.download(params)
    with pytest.raises(InputError, match="a download that did not finish"):
        prepare.prepare(params)
