"""The images stage against a local HTTP server: every status, sharding, resume, the off switch,
and the embedded sample's own pictures fetched end to end. Timeouts come from a server that
holds its answer, so no test depends on how fast the machine answers."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from PIL import Image

from pipeline import download, prepare
from pipeline import images as stage
from pipeline.config import load_params
from pipeline.features import image_fetch, image_store
from pipeline.features.image_fetch import ImageFetcher, read_capped
from pipeline.features.image_store import STORE, iter_ok_images, read_images, shard_paths
from pipeline.io import read_json, write_parquet
from pipeline.schemas import ITEMS
from pipeline.sources import synthetic
from pipeline.sources.synthetic_images import draw_item_image
from tests.conftest import write_params
from tests.httpserver import LocalHTTPServer

STORE_DIR = Path("data/images")
ITEMS_PATH = Path("data/prepared/items.parquet")
IMAGE_PARAMS = {
    "enabled": True,
    "workers": 4,
    "timeout_seconds": 30.0,  # no healthy local answer comes near it; see test_timeouts_*
    "retries": 1,
    "max_bytes": 20_000,
    "max_per_item": 2,
}
SHARD_ROWS = 3
SMALL_SAMPLE = {"n_users": 30, "n_items": 20, "min_per_user": 3, "max_per_user": 6}


def encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


PNG = encode(Image.new("RGB", (32, 24), (200, 30, 30)), "PNG")
JPEG = encode(Image.new("RGB", (40, 30), (20, 120, 220)), "JPEG")
NOISE = np.random.default_rng(0).integers(0, 256, size=(120, 120, 3), dtype=np.uint8)
BIG_PNG = encode(Image.fromarray(NOISE, "RGB"), "PNG")  # incompressible: ~43 kB
BROKEN = PNG[:8] + b"this is not the rest of a png file" * 4
HTML = b"<!DOCTYPE html><html><body>Image not found</body></html>"


@pytest.fixture(autouse=True)
def _quick_retries_small_shards(monkeypatch):
    monkeypatch.setattr(image_fetch, "BACKOFF_SECONDS", 0.0)
    monkeypatch.setattr(image_store, "SHARD_ROWS", SHARD_ROWS)


def write_items(items: list[tuple[str, str, list[str | None]]], path: Path = ITEMS_PATH) -> None:
    rows = [
        {
            "item_id": item_id,
            "domain": domain,
            "title": f"title of {item_id}",
            "description": None,
            "categories": [],
            "image_urls": urls,
            "brand": None,
            "price": None,
            "has_metadata": True,
            "n_interactions": 1,
        }
        for domain, item_id, urls in items
    ]
    write_parquet(pa.Table.from_pylist(rows, schema=ITEMS), path, schema=ITEMS)


def run_stage(workdir: Path, **overrides) -> dict:
    write_params(workdir / "params.yaml", images={**IMAGE_PARAMS, **overrides})
    return stage.images(load_params(workdir / "params.yaml"))


def by_key(frame) -> dict[tuple[str, int], dict]:
    return {(r["item_id"], r["position"]): r for r in frame.iter_rows(named=True)}


@pytest.fixture
def catalogue(workdir, http_server: LocalHTTPServer):
    """Items whose URLs cover every outcome; returns the server and the expected statuses."""
    s = http_server
    local = workdir / "local.png"
    local.write_bytes(PNG)
    write_items(
        [
            ("books", "B1", [s.add("png.png", PNG, content_type="image/png"),
                             s.add("photo.jpg", JPEG, content_type="image/jpeg"),
                             s.add("third.png", PNG, content_type="image/png")]),  # past max_per_item
            ("books", "B2", [s.add("broken.png", BROKEN, content_type="image/png")]),
            ("books", "B3", [s.add("page", HTML, content_type="text/html; charset=utf-8")]),
            ("books", "B5", [s.add("sniffed", HTML)]),  # HTML served as octet-stream
            ("movies", "M1", [s.add("gone.png", PNG, status=404)]),
            ("movies", "M2", [s.add("flaky.png", PNG, content_type="image/png", status=500, times=1)]),
            ("movies", "M3", [s.add("big.png", BIG_PNG, content_type="image/png")]),
            ("movies", "M4", []),
            ("movies", "M5", [local.as_uri()]),
        ]
    )  # fmt: skip
    expected = {
        ("B1", 0): "ok",
        ("B1", 1): "ok",
        ("B2", 0): "broken",
        ("B3", 0): "not_image",
        ("B5", 0): "not_image",
        ("M1", 0): "http_error",
        ("M2", 0): "ok",
        ("M3", 0): "too_large",
        ("M4", 0): "missing",
        ("M5", 0): "ok",
    }
    return s, expected


def test_every_outcome_gets_its_status(workdir, catalogue):
    server, expected = catalogue
    manifest = run_stage(workdir)
    frame = read_images(STORE_DIR)
    rows = by_key(frame)
    assert {k: r["status"] for k, r in rows.items()} == expected
    assert frame["item_id"].n_unique() == 9  # every item has a row, the one without a URL too

    for key, row in rows.items():
        if row["status"] == "ok":
            with Image.open(io.BytesIO(row["image"])) as im:
                im.load()
                assert (row["width"], row["height"]) == im.size
            assert row["sha256"] == hashlib.sha256(row["image"]).hexdigest()
            assert row["n_bytes"] == len(row["image"]) and row["error"] is None
        else:
            assert row["image"] is None and row["width"] is None, key
            assert row["error"], key
    assert (rows[("B1", 1)]["width"], rows[("B1", 1)]["height"]) == (40, 30)
    assert rows[("B1", 1)]["content_type"] == "image/jpeg"
    assert rows[("B3", 0)]["content_type"].startswith("text/html")
    assert rows[("M1", 0)]["http_status"] == 404
    assert rows[("M2", 0)]["http_status"] == 200
    assert rows[("M3", 0)]["n_bytes"] <= IMAGE_PARAMS["max_bytes"]
    assert rows[("M4", 0)]["url"] is None
    assert rows[("M5", 0)]["http_status"] is None and rows[("M5", 0)]["content_type"] == "image/png"

    # Retries: the 500 once; never past max_per_item.
    assert len(server.requests_for("flaky.png")) == 2
    assert len(server.requests_for("gone.png")) == 1  # a 404 is final
    assert server.requests_for("third.png") == []
    assert rows[("M2", 0)]["error"] is None  # the retry succeeded: nothing to report

    shards = shard_paths(STORE_DIR)
    assert [p.name for p in shards] == [f"part-000-{i:05d}.parquet" for i in range(4)]
    sizes = [len(pl.read_parquet(p)) for p in shards]
    assert sizes == [3, 3, 3, 1]
    assert frame.schema["position"] == pl.Int16 and frame.schema["image"] == pl.Binary

    assert manifest == read_json(STORE_DIR / "manifest.json")
    assert manifest["enabled"] is True and manifest["shard_rows"] == SHARD_ROWS
    assert (manifest["items"], manifest["rows"], manifest["fetched"]) == (9, 10, 9)
    assert manifest["status"]["ok"] == 4 and manifest["status"]["not_image"] == 2
    assert manifest["domains"]["books"]["items"] == 4
    assert manifest["domains"]["movies"]["status"]["missing"] == 1
    assert [s["rows"] for s in manifest["shards"]] == sizes

    ok = [(r["item_id"], r["domain"], r["position"], r["image"]) for r in frame.iter_rows(named=True) if r["status"] == "ok"]  # fmt: skip
    assert list(iter_ok_images(STORE_DIR, batch_rows=2)) == ok


def test_timeouts_are_retried_recorded_and_fetched_again(workdir, http_server):
    # The server holds its answer until the test ends: every attempt times out, however
    # loaded the machine is. Nothing else is fetched here, so the short timeout hurts nobody.
    held = http_server.add("slow.png", PNG, content_type="image/png", hold=True)
    write_items([("books", "B4", [held])])
    manifest = run_stage(workdir, timeout_seconds=0.05)
    row = by_key(read_images(STORE_DIR))[("B4", 0)]
    assert row["status"] == "timeout" and row["http_status"] is None and row["image"] is None
    assert row["error"] == "timed out after 0.05 s (2 attempts)"
    assert manifest["status"]["timeout"] == 1 and manifest["fetched"] == 1
    assert len(http_server.wait_for("slow.png", 2)) == 2  # retries: 1

    again = run_stage(workdir, timeout_seconds=0.05)  # a timeout is not kept: fetched again
    assert (again["reused"], again["fetched"]) == (0, 1)
    assert len(http_server.wait_for("slow.png", 4)) == 4


def test_second_run_reuses_ok_rows_and_retries_the_rest(workdir, catalogue):
    server, expected = catalogue
    run_stage(workdir)
    before = read_images(STORE_DIR)
    seen = len(server.requests)
    manifest = run_stage(workdir)
    again = sorted(r.path.lstrip("/") for r in server.requests[seen:])
    # ok rows (png, photo, flaky, the local file) are not fetched again; failures are.
    assert again == ["big.png", "broken.png", "gone.png", "page", "sniffed"]
    assert (manifest["reused"], manifest["fetched"]) == (4, 5)
    after = read_images(STORE_DIR)
    assert after.equals(before)
    assert {k: r["status"] for k, r in by_key(after).items()} == expected


def test_changed_url_is_fetched_again(workdir, http_server):
    a = http_server.add("a.png", PNG, content_type="image/png")
    b = http_server.add("b.jpg", JPEG, content_type="image/jpeg")
    write_items([("books", "B1", [a]), ("books", "B2", [a])])
    run_stage(workdir)
    write_items([("books", "B1", [a]), ("books", "B2", [b]), ("books", "B3", [b])])
    seen = len(http_server.requests)
    manifest = run_stage(workdir)
    assert [r.path for r in http_server.requests[seen:]] == ["/b.jpg", "/b.jpg"]
    assert (manifest["reused"], manifest["fetched"]) == (1, 2)
    rows = by_key(read_images(STORE_DIR))
    assert rows[("B2", 0)]["url"] == b and rows[("B2", 0)]["width"] == 40


def test_a_failed_run_leaves_the_previous_store(workdir, http_server, monkeypatch):
    write_items([("books", f"B{i}", [http_server.add(f"{i}.png", PNG)]) for i in range(7)])
    run_stage(workdir)
    before = read_images(STORE_DIR)
    write_items([("books", f"B{i}", [http_server.add(f"new-{i}.png", PNG)]) for i in range(7)])

    def fail(self, url):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ImageFetcher, "fetch", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        run_stage(workdir)
    assert read_images(STORE_DIR).equals(before)
    assert sorted(p.name for p in Path("data").iterdir()) == ["images", "prepared"]


def test_disabled_writes_an_empty_store_and_fetches_nothing(workdir, http_server, caplog):
    write_items([("books", "B1", [http_server.add("a.png", PNG)])])
    run_stage(workdir)  # a store from an earlier enabled run is replaced
    seen = len(http_server.requests)
    write_params(workdir / "params.yaml", images={**IMAGE_PARAMS, "enabled": True})
    with caplog.at_level(logging.INFO, logger="images"):
        manifest = stage.main(["-S", "images.enabled=false"])
    assert "images: off (images.enabled is false)" in caplog.text
    assert len(http_server.requests) == seen
    assert manifest["enabled"] is False and manifest["rows"] == 0
    assert read_json(STORE_DIR / "manifest.json")["enabled"] is False
    frame = read_images(STORE_DIR)
    assert frame.height == 0 and frame.columns == STORE.names
    assert [p.name for p in shard_paths(STORE_DIR)] == ["part-000-00000.parquet"]
    assert list(iter_ok_images(STORE_DIR)) == []


def test_reading_stops_at_the_size_cap():
    consumed = []

    def endless():
        while True:
            consumed.append(1)
            yield b"x" * 1000

    data, over = read_capped(endless(), 2500)
    assert over and len(data) == 3000 and len(consumed) == 3
    assert read_capped(iter([b"ab", b"cd"]), 4) == (b"abcd", False)


# --------------------------------------------------------------------------- the embedded sample
def test_item_pictures_are_deterministic_pngs():
    first = draw_item_image("fantasy", "horror", 0.4, seed=11)
    assert first == draw_item_image("fantasy", "horror", 0.4, seed=11)
    with Image.open(io.BytesIO(first)) as im:
        assert (im.format, im.size, im.mode) == ("PNG", (96, 96), "RGB")
    others = [
        draw_item_image("romance", "horror", 0.4, seed=11),
        draw_item_image("fantasy", "comedy", 0.4, seed=11),
        draw_item_image("fantasy", "horror", -0.6, seed=11),
        draw_item_image("fantasy", "horror", 0.4, seed=12),
        draw_item_image("unknown genre", "also unknown", 0.0, seed=11),
    ]
    assert len({first, *others}) == 6
    with Image.open(io.BytesIO(draw_item_image("history", "history", 0.0, 1, size=32))) as im:
        assert im.size == (32, 32)


def _sample(out: Path, **extra) -> None:
    synthetic.generate(out, ["books", "movies"], seed=3, **SMALL_SAMPLE, **extra)


def _meta_without_images(path: Path) -> list[dict]:
    records = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    for record in records:
        record.pop("images")
    return records


def test_default_sample_is_unchanged_by_images(tmp_path):
    _sample(tmp_path / "a")
    _sample(tmp_path / "b")
    _sample(tmp_path / "c", image_base_url="http://mirror.example/raw/")
    for domain in ("books", "movies"):
        a, b, c = (tmp_path / x / domain for x in "abc")
        assert not (a / "images").exists()
        for name in ("reviews.jsonl.gz", "meta.jsonl.gz"):
            assert (a / name).read_bytes() == (b / name).read_bytes()
        # The pictures draw from their own generator: reviews and metadata stay the same.
        assert (a / "reviews.jsonl.gz").read_bytes() == (c / "reviews.jsonl.gz").read_bytes()
        assert _meta_without_images(a / "meta.jsonl.gz") == _meta_without_images(
            c / "meta.jsonl.gz"
        )
        meta = gzip.decompress((c / "meta.jsonl.gz").read_bytes()).splitlines()
        first = json.loads(meta[0])
        assert first["images"][0]["large"] == (
            f"http://mirror.example/raw/{domain}/images/{first['parent_asin']}.png"
        )
        assert len(list((c / "images").glob("*.png"))) == SMALL_SAMPLE["n_items"]


def test_sample_pictures_are_served_and_fetched_end_to_end(workdir, tmp_path):
    raw = workdir / "data" / "raw"
    with LocalHTTPServer(directory=raw) as server:
        sample = {**SMALL_SAMPLE, "image_base_url": server.url("")}
        write_params(workdir / "params.yaml", synthetic=sample, images=IMAGE_PARAMS)
        params = load_params(workdir / "params.yaml")
        download.download(params)
        prepare.prepare(params)
        manifest = stage.images(params)
        n_requests = len(server.requests)

    frame = read_images(STORE_DIR)
    n_items = pl.read_parquet(ITEMS_PATH).height
    assert manifest["items"] == frame.height == n_items == n_requests
    assert set(frame["status"]) == {"ok"}
    for row in frame.iter_rows(named=True):
        assert (
            row["image"] == (raw / row["domain"] / "images" / f"{row['item_id']}.png").read_bytes()
        )
        assert (row["width"], row["height"]) == (96, 96)

    # The pictures are deterministic: a second generation writes the same bytes.
    synthetic.generate(tmp_path / "again", ["books", "movies"], **params.synthetic.model_dump())
    for domain in ("books", "movies"):
        for png in (raw / domain / "images").glob("*.png"):
            assert (
                png.read_bytes() == (tmp_path / "again" / domain / "images" / png.name).read_bytes()
            )
