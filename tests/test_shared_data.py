"""prepare and split on the real Amazon data in ../shared/data (skipped when it is absent)."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline import download, prepare, split
from pipeline.config import load_params
from tests.conftest import SHARED, write_params

pytestmark = pytest.mark.shared


@pytest.fixture
def dense_params(workdir, shared_data):
    dense, text = shared_data / "amazon-books-movies-dense", shared_data / "amazon-item-text"
    write_params(
        workdir / "params.yaml",
        dataset={
            "name": "amazon-books-movies-dense",
            "format": "recbole",
            "domains": {
                "books": {
                    "inter": str(dense / "Amazon-Books-Dense.inter"),
                    "item": str(text / "amazon-custom-books.item"),
                },
                "movies": {
                    "inter": str(dense / "Amazon-Movies-Dense.inter"),
                    "item": str(text / "amazon-custom-movies-tv.item"),
                },
            },
        },
    )
    return load_params(workdir / "params.yaml")


def test_dense_books_movies_counts(dense_params):
    download.download(dense_params)
    stats = prepare.prepare(dense_params)
    books, movies = stats["domains"]["books"], stats["domains"]["movies"]
    assert (books["rows_parsed"], books["users"], books["items"]) == (38_149, 1_426, 723)
    assert (movies["rows_parsed"], movies["users"], movies["items"]) == (68_023, 1_381, 1_338)
    assert (books["duplicate_rows_merged"], movies["duplicate_rows_merged"]) == (6_645, 5_939)
    assert (books["conflicting_pairs"], movies["conflicting_pairs"]) == (919, 276)
    assert stats["overlap_users"]["books|movies"] == 1_329
    assert (books["items_with_metadata"], movies["items_with_metadata"]) == (232, 201)

    summary = split.split(dense_params)
    assert summary["users"] == {
        "train_overlap": 930,
        "valid_cold": 133,
        "test_cold": 266,
        "side": 52,
        "source_only": 97,
    }


def test_dense_pinned_benchmark_split(dense_params, workdir):
    pinned = SHARED / "benchmarks/splits/books2movies/beta0.2_seed1/cold_users.txt"
    if not pinned.exists():
        pytest.skip(f"{pinned} not found")
    download.download(dense_params)
    prepare.prepare(dense_params)
    params = load_params(workdir / "params.yaml", {"split.test_users_file": str(pinned)})
    split.split(params)
    roles = pl.read_parquet(workdir / "data/split/roles.parquet")
    test = set(roles.filter(pl.col("role") == "test_cold")["user_id"])
    assert test == set(pinned.read_text().split())
