"""The download stage against a local HTTP mirror: manifest, resume, no refetch, failures."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from pipeline import download
from pipeline.config import load_params
from pipeline.io import read_json
from pipeline.io.fetch import FetchError
from tests.conftest import amazon_params
from tests.records import meta2023, review2023


def gz(lines: list[str]) -> bytes:
    return gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)


@pytest.fixture
def mirror(http_server):
    files = {
        "review_categories/Books.jsonl.gz": gz(
            [review2023(f"u{i}", "b1", 4.0) for i in range(2000)]
        ),
        "meta_categories/meta_Books.jsonl.gz": gz([meta2023("b1")]),
        "review_categories/Movies_and_TV.jsonl.gz": gz([review2023("u1", "m1", 5.0)]),
        "meta_categories/meta_Movies_and_TV.jsonl.gz": gz([meta2023("m1")]),
    }
    for path, data in files.items():
        http_server.add(path, data)
    return http_server, files


def params_for(workdir, base_url):
    # a local mirror: no healthy answer comes near the timeout
    download = {"retries": 2, "timeout_seconds": 30.0}
    return load_params(amazon_params(workdir, base_url, download=download))


def test_manifest_records_size_and_checksum(workdir, mirror):
    server, files = mirror
    manifest = download.download(params_for(workdir, server.url("")))
    assert manifest["format"] == "amazon2023" and len(manifest["files"]) == 4
    for entry in manifest["files"]:
        data = (workdir / entry["path"]).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["url"].startswith(server.url(""))
    assert read_json(workdir / "data/raw/manifest.json") == manifest


def test_finished_files_are_never_fetched_again(workdir, mirror):
    server, _ = mirror
    params = params_for(workdir, server.url(""))
    download.download(params)
    n = len(server.requests)
    download.download(params)
    assert len(server.requests) == n


def test_connection_dropped_mid_file_resumes(workdir, mirror):
    server, files = mirror
    path = "review_categories/Books.jsonl.gz"
    server.add(path, files[path], drop_after=1000, times=1)
    download.download(params_for(workdir, server.url("")))
    ranges = [r.range for r in server.requests_for(path)]
    assert ranges == [None, "bytes=1000-"]
    assert (workdir / "data/raw/books/reviews.jsonl.gz").read_bytes() == files[path]


def test_server_error_is_retried_then_fails_clearly(workdir, mirror):
    server, files = mirror
    path = "meta_categories/meta_Movies_and_TV.jsonl.gz"
    server.add(path, files[path], status=500)
    with pytest.raises(FetchError, match=r"HTTP 500.*meta_Movies_and_TV\.jsonl\.gz.*3 attempts"):
        download.download(params_for(workdir, server.url("")))
    assert len(server.requests_for(path)) == 3
    assert not (workdir / "data/raw/movies/meta.jsonl.gz").exists()


def test_file_mirror(workdir, tmp_path, mirror):
    _, files = mirror
    root = tmp_path / "mirror"
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    manifest = download.download(params_for(workdir, root.as_uri()))
    assert {e["domain"] for e in manifest["files"]} == {"books", "movies"}


def test_synthetic_sample_is_deterministic(workdir):
    params = load_params(workdir / "params.yaml")
    first = download.download(params)
    second = download.download(params)
    assert [e["sha256"] for e in first["files"]] == [e["sha256"] for e in second["files"]]
