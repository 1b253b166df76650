"""What a new user ran into: damaged model files, truncated downloads, bad inputs and the
messages they get. Each test here failed before its fix."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import shutil
import stat
import zipfile
from pathlib import Path

import polars as pl
import pytest
import torch

from pipeline import download, prepare
from pipeline.cdr import store
from pipeline.config import load_params
from pipeline.errors import InputError
from pipeline.io import read_json, write_json
from pipeline.io.fetch import FetchError
from pipeline.recs import trained
from tests.conftest import amazon_params
from tests.faults import copy_project, make_project, record, run_stage
from tests.records import meta2023, review2023

DATE = "2024-03-01"


@pytest.fixture(scope="module")
def project(trained_project) -> Path:
    """The session's tiny trained project (read-only: tests copy what they change)."""
    return trained_project


@pytest.fixture
def models(project, tmp_path) -> Path:
    """A copy of the project's model directory to damage."""
    return Path(shutil.copytree(project / "data/models", tmp_path / "models"))


def score_with(project: Path, models: Path, out: Path, *extra: str) -> tuple[int, str]:
    args = ["--models", str(models), "--out", str(out), "--date", DATE, *extra]
    return run_stage("score", args, project)


def one_line_error(code: int, err: str, *fragments: str) -> str:
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in err and "weights_only=False" not in err
    return lines[0]


def _rewrite_sha(models: Path, name: str) -> None:
    manifest = json.loads((models / "manifest.json").read_text())
    manifest["files"][name] = store.sha256_file(models / name)
    (models / "manifest.json").write_text(json.dumps(manifest))


# --------------------------------------------------------------------------- model files
def test_manifest_records_a_sha256_per_model_file(project):
    manifest = json.loads((project / "data/models/manifest.json").read_text())
    pts = sorted(p.name for p in (project / "data/models").glob("*.pt"))
    assert sorted(manifest["files"]) == pts
    for name, sha in manifest["files"].items():
        assert store.sha256_file(project / "data/models" / name) == sha


def test_corrupt_tensor_bytes_are_refused_naming_the_file(project, models, tmp_path):
    """Bytes of a tensor overwritten inside an intact zip: torch would load it."""
    path = models / "emcdr.pt"
    with zipfile.ZipFile(path) as zf:
        entry = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        start = entry.header_offset + 30 + len(entry.filename.encode()) + len(entry.extra)
    blob = bytearray(path.read_bytes())
    blob[start : start + 64] = bytes(64)
    path.write_bytes(bytes(blob))
    torch.load(path, weights_only=True)  # still a valid checkpoint to torch
    code, err = score_with(project, models, tmp_path / "out")
    one_line_error(code, err, str(path), "sha256", "dvc repro train")
    assert not (tmp_path / "out" / f"dt={DATE}").exists()
    record(
        "corrupt model file: tensor bytes overwritten in an intact zip",
        times=1,
        outcome="refused before loading: one line naming the file and its sha256",
        lost="none",
    )


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    "damage, expected",
    [
        ("truncate", "cannot be read as a torch file"),
        ("garbage", "not a weights-only torch file"),
        ("wrong_method", "does not hold a trained 'emcdr' model"),
        ("pickle", "not a weights-only torch file"),
    ],
)
def test_unloadable_model_files_are_one_line_errors(project, models, tmp_path, damage, expected):
    """Even with a checksum that matches (a manifest rewritten by hand), a file torch cannot
    load weights-only, or that holds another model, is an error naming it."""
    path = models / "emcdr.pt"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"\x80\x04garbage" * 10)
    elif damage == "wrong_method":
        shutil.copy(models / "popularity.pt", path)
    else:  # an object torch would have to unpickle (and run): refused, never executed
        torch.save({"state": _Evil()}, path)
    _rewrite_sha(models, "emcdr.pt")
    code, err = score_with(project, models, tmp_path / "out", "-S", "score.method=emcdr")
    one_line_error(code, err, str(path), expected)
    assert not (tmp_path / "evil-ran").exists()
    record(
        f"model file that fails to load: {damage.replace('_', ' ')}",
        times=1,
        outcome="one line naming the file; nothing unpickled; no fresh weights",
        lost="none",
    )


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path.cwd() / "evil-ran",))


@pytest.mark.parametrize("damage", ["missing_file", "bad_json", "no_checksums", "garbage_base"])
def test_broken_model_directory_is_a_one_line_error(project, models, tmp_path, damage):
    expected = {
        "missing_file": ("emcdr.pt", "missing"),
        "bad_json": ("manifest.json", "unreadable"),
        "no_checksums": ("manifest.json", "no sha256 per model file"),
        "garbage_base": ("base.pt", "sha256"),
    }[damage]
    if damage == "missing_file":
        (models / "emcdr.pt").unlink()
    elif damage == "bad_json":
        (models / "manifest.json").write_text('{"methods": [')
    elif damage == "no_checksums":
        manifest = json.loads((models / "manifest.json").read_text())
        del manifest["files"]
        (models / "manifest.json").write_text(json.dumps(manifest))
    else:
        (models / "base.pt").write_bytes(b"not a checkpoint")
    one_line_error(*score_with(project, models, tmp_path / "out"), *expected)
    record(
        f"broken model directory: {damage.replace('_', ' ')}",
        times=1,
        outcome="one line naming the file",
        lost="none",
    )


def test_model_files_hold_no_timings_so_the_same_weights_give_the_same_files(project, tmp_path):
    again = make_project(tmp_path / "again")
    a, b = project / "data/models", again / "data/models"
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for path in a.iterdir():
        assert path.read_bytes() == (b / path.name).read_bytes(), path.name
    assert trained.model_version(a) == trained.model_version(b)
    assert set(torch.load(a / "emcdr.pt", weights_only=True)) == {"state"}
    timings = json.loads((again / "metrics/train.json").read_text())
    assert set(timings["train_seconds"]) == set(
        json.loads((a / "manifest.json").read_text())["methods"]
    )


# --------------------------------------------------------------------------- downloads
def _gz(lines: list[str]) -> bytes:
    return gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)


MIRROR = {
    "review_categories/Books.jsonl.gz": _gz(
        [review2023(f"u{i}", f"b{i % 7}", 4.0) for i in range(3000)]
    ),
    "meta_categories/meta_Books.jsonl.gz": _gz([meta2023(f"b{i}") for i in range(7)]),
    "review_categories/Movies_and_TV.jsonl.gz": _gz(
        [review2023(f"u{i}", f"m{i % 5}", 5.0) for i in range(0, 3000, 3)]
    ),
    "meta_categories/meta_Movies_and_TV.jsonl.gz": _gz([meta2023(f"m{i}") for i in range(5)]),
}
REVIEWS = "review_categories/Books.jsonl.gz"


def mirror_params(workdir: Path, base_url: str):
    return load_params(amazon_params(workdir, base_url, download={"retries": 2}))


def serve(server, **overrides: bytes) -> None:
    for path, data in MIRROR.items():
        server.add(path, overrides.get(path, data))


def test_a_truncated_download_is_never_promoted_and_a_good_server_replaces_it(workdir, http_server):
    """A server that sends half the file with a matching short Content-Length."""
    half = MIRROR[REVIEWS][: len(MIRROR[REVIEWS]) // 2]
    serve(http_server, **{REVIEWS: half})
    params = mirror_params(workdir, http_server.url(""))
    with pytest.raises(FetchError, match=r"truncated gzip file.*Books\.jsonl\.gz"):
        download.download(params)
    raw = workdir / "data/raw/books/reviews.jsonl.gz"
    assert not raw.exists() and not raw.with_name(raw.name + ".part").exists()
    serve(http_server)
    download.download(params)
    assert raw.read_bytes() == MIRROR[REVIEWS]
    record(
        "server sends half the file with a matching Content-Length",
        times=1,
        outcome="refused by the gzip check, nothing promoted; a good server replaced it",
        lost="none",
    )


def test_a_listed_file_without_a_check_is_checked_again(workdir, http_server):
    """A manifest of an older version listed a truncated file by its size only."""
    serve(http_server)
    params = mirror_params(workdir, http_server.url(""))
    download.download(params)
    raw = workdir / "data/raw/books/reviews.jsonl.gz"
    half = MIRROR[REVIEWS][: len(MIRROR[REVIEWS]) // 2]
    raw.write_bytes(half)
    manifest = read_json(workdir / "data/raw/manifest.json")
    for entry in manifest["files"]:
        del entry["verified"]
        if entry["path"] == "data/raw/books/reviews.jsonl.gz":
            entry.update(size=len(half), sha256=hashlib.sha256(half).hexdigest())
    write_json(manifest, workdir / "data/raw/manifest.json")
    before = len(http_server.requests_for(REVIEWS))
    download.download(params)
    assert raw.read_bytes() == MIRROR[REVIEWS]
    assert len(http_server.requests_for(REVIEWS)) == before + 1
    # the intact files were checked, not fetched again
    assert all(len(http_server.requests_for(p)) == 1 for p in MIRROR if p != REVIEWS)


def test_a_failure_on_a_later_file_keeps_the_files_already_downloaded(workdir, http_server):
    last = "meta_categories/meta_Movies_and_TV.jsonl.gz"
    serve(http_server)
    http_server.add(last, MIRROR[last], status=500)
    params = mirror_params(workdir, http_server.url(""))
    with pytest.raises(FetchError, match="HTTP 500"):
        download.download(params)
    manifest = read_json(workdir / "data/raw/manifest.json")
    assert manifest["complete"] is False and len(manifest["files"]) == 3
    with pytest.raises(InputError, match="download that did not finish"):
        prepare.prepare(load_params(workdir / "params.yaml"))
    http_server.add(last, MIRROR[last])
    download.download(params)
    assert all(len(http_server.requests_for(p)) == 1 for p in MIRROR if p != last)
    assert read_json(workdir / "data/raw/manifest.json")["complete"] is True


def test_a_published_sha256_that_does_not_match_is_refused(workdir, http_server):
    serve(http_server)
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    http_server.add(REVIEWS, MIRROR[REVIEWS], headers={"Repr-Digest": f"sha-256=:{wrong}:"})
    with pytest.raises(FetchError, match="sha256 mismatch"):
        download.download(mirror_params(workdir, http_server.url("")))
    assert not (workdir / "data/raw/books/reviews.jsonl.gz").exists()


@pytest.mark.parametrize("damage, expected", [("truncated", "truncated"), ("bytes", "corrupt")])
def test_a_damaged_gzip_in_prepare_names_the_file(workdir, http_server, damage, expected):
    serve(http_server)
    params = mirror_params(workdir, http_server.url(""))
    download.download(params)
    raw = workdir / "data/raw/books/reviews.jsonl.gz"
    data = bytearray(raw.read_bytes())
    if damage == "truncated":
        data = data[:2000]
    else:  # bytes overwritten in the middle of the deflate stream
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    raw.write_bytes(bytes(data))
    code, err = run_stage("prepare", [], workdir)
    one_line_error(code, err, "data/raw/books/reviews.jsonl.gz", expected, "dvc repro download")
    record(
        f"{'truncated' if damage == 'truncated' else 'bytes overwritten in a'} raw gzip file in prepare",
        times=1,
        outcome="one line naming the file and the last line read",
        lost="none",
    )


# --------------------------------------------------------------------------- bad inputs
@pytest.fixture
def scratch(project, tmp_path) -> Path:
    """A copy of the trained project to damage."""
    return copy_project(project, tmp_path / "scratch")


def test_no_method_to_train_is_refused_at_stage_start(scratch):
    for stage in ("train", "evaluate", "score"):
        code, err = run_stage(stage, ["-S", "train.methods=[]"], scratch)
        one_line_error(code, err, "train.methods", "at least one method")
    assert not (scratch / "metrics/cold_start.json").exists()


def test_models_trained_with_other_train_params_are_not_scored_silently(scratch):
    code, err = run_stage("score", ["-S", "train.emcdr.epochs=21"], scratch)
    one_line_error(code, err, "trained with other `train` params", "dvc repro train")
    assert "train.emcdr.epochs: 20 then, 21 now" in err
    assert not (scratch / "data/scores").exists()


def test_profiles_turned_off_but_still_a_condition_input_says_what_to_change(scratch):
    code, err = run_stage("user_profiles", ["-S", "user_profiles.enabled=false"], scratch)
    assert code == 0, err
    code, err = run_stage("train", ["-S", "train.methods=[ours]"], scratch)
    one_line_error(code, err, "user_profiles.enabled: false", "train.ours.condition")


@pytest.mark.parametrize(
    "stage, damaged",
    [
        ("split", "data/prepared/users.parquet"),
        ("train", "data/prepared/interactions.parquet"),
        ("train", "data/split/roles.parquet"),
        ("score", "data/prepared/interactions.parquet"),
    ],
)
def test_a_truncated_parquet_input_names_the_file(scratch, stage, damaged):
    path = scratch / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    one_line_error(*run_stage(stage, [], scratch), damaged, "cannot be read")
    record(
        f"truncated Parquet input: {damaged} in {stage}",
        times=1,
        outcome="one line naming the file",
        lost="none",
    )


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("users.csv", b"", "is empty"),
        ("users.parquet", b"PAR1 not really", "cannot be read"),
        ("users.csv", b"id\nu1\n", "missing column(s) ['user_id']; expected a Parquet or CSV"),
        ("users.json", b"[]", "expected a Parquet or CSV file with a user_id column, or a .txt"),
    ],
)
def test_a_bad_users_file_names_the_file(scratch, name, content, expected):
    users = scratch / name
    users.write_bytes(content)
    code, err = run_stage("score", ["--users", str(users), "--out", "out", "--date", DATE], scratch)
    one_line_error(code, err, str(users), expected)
    record(
        f"bad users file: {name} {expected.split(';')[0]}",
        times=1,
        outcome="one line naming the file",
        lost="none",
    )


def test_a_truncated_interactions_file_for_scoring_names_the_file(scratch):
    fresh = scratch / "fresh.parquet"
    data = (scratch / "data/prepared/interactions.parquet").read_bytes()
    fresh.write_bytes(data[: len(data) // 2])
    (scratch / "users.txt").write_text("u1\n")
    args = ["--users", "users.txt", "--interactions", str(fresh), "--out", "out", "--date", DATE]
    one_line_error(*run_stage("score", args, scratch), str(fresh), "cannot be read")


@pytest.mark.parametrize(
    "rating, expected",
    [
        ("9", "9 is off the books rating scale of the training data, 1 to 5"),
        ("five", "'five' is not a number"),
    ],
)
def test_fresh_ratings_off_the_scale_or_not_numbers_name_file_line_and_field(
    scratch, rating, expected
):
    inter = pl.read_parquet(scratch / "data/prepared/interactions.parquet")
    rows = inter.filter(pl.col("domain") == "books").head(6).select("item_id", "domain", "rating")
    fresh = rows.with_columns(user_id=pl.lit("NEW1"), rating=pl.col("rating").cast(pl.String))
    fresh = fresh.with_columns(
        rating=pl.when(pl.int_range(pl.len()) == 3).then(pl.lit(rating)).otherwise("rating")
    )
    fresh.write_csv(scratch / "fresh.csv")
    (scratch / "users.txt").write_text("NEW1\n")
    args = ["--users", "users.txt", "--interactions", "fresh.csv", "--out", "out", "--date", DATE]
    line = one_line_error(
        *run_stage("score", args, scratch), "fresh.csv:5: field 'rating'", expected
    )
    assert "(1 such row)" in line and not (scratch / "out").exists()


def test_out_pointing_at_a_file_is_a_one_line_error(scratch):
    (scratch / "taken").write_text("not a directory")
    code, err = run_stage("score", ["--out", "taken"], scratch)
    one_line_error(code, err, "taken", "not a directory")


# --------------------------------------------------------------------------- users files
def _cold(project: Path, n: int) -> list[str]:
    roles = pl.read_parquet(project / "data/split/roles.parquet")
    return sorted(roles.filter(pl.col("role") == "test_cold")["user_id"])[:n]


def _rejects(root: Path, out: str = "out") -> dict:
    df = pl.read_parquet(root / out / f"dt={DATE}" / "rejects.parquet")
    return dict(zip(df["user_id"], df["reason"], strict=True))


def _scored(root: Path, out: str = "out") -> list[str]:
    df = pl.read_parquet(root / out / f"dt={DATE}" / "part-*.parquet")
    return sorted(df["user_id"].unique())


def test_users_file_ids_are_trimmed_and_blank_ids_are_missing(scratch):
    a, b = _cold(scratch, 2)
    (scratch / "users.csv").write_text(f"user_id\n  {a}\n{b}\t\n   \n\n")
    code, err = run_stage(
        "score", ["--users", "users.csv", "--out", "out", "--date", DATE], scratch
    )
    assert code == 0, err
    assert _scored(scratch) == [a, b]
    manifest = json.loads((scratch / "out" / f"dt={DATE}" / "manifest.json").read_text())
    assert manifest["rejected_by_reason"] == {"missing_user_id": 2}


def test_a_text_file_with_one_id_per_line_is_a_users_file(scratch):
    a, b = _cold(scratch, 2)
    (scratch / "users.txt").write_text(f"\ufeff{a}\r\n# a comment\r\n\r\n{b}\r\nNOBODY\r\n")
    code, err = run_stage(
        "score", ["--users", "users.txt", "--out", "out", "--date", DATE], scratch
    )
    assert code == 0, err
    assert _scored(scratch) == [a, b] and _rejects(scratch) == {"NOBODY": "unknown_user"}


def test_a_new_user_whose_source_rows_have_no_rating_is_told_so(scratch):
    inter = pl.read_parquet(scratch / "data/prepared/interactions.parquet")
    item = inter.filter(pl.col("domain") == "books")["item_id"][0]
    rows = pl.DataFrame(
        {
            "user_id": ["NEW"] * 2,
            "item_id": [item] * 2,
            "domain": ["books"] * 2,
            "rating": [None] * 2,
        },
        schema_overrides={"rating": pl.Float32},
    )
    rows.write_csv(scratch / "fresh.csv")
    (scratch / "users.txt").write_text("NEW\n")
    args = ["--users", "users.txt", "--interactions", "fresh.csv", "--out", "out", "--date", DATE]
    # The only user requested: nobody to score, so the run fails and says why.
    one_line_error(*run_stage("score", args, scratch), "no_rated_source_items: 1")
    (scratch / "users.txt").write_text(f"NEW\n{_cold(scratch, 1)[0]}\n")
    code, err = run_stage("score", args, scratch)
    assert code == 0, err
    assert _rejects(scratch) == {"NEW": "no_rated_source_items"}


def test_a_scoring_run_removes_what_killed_runs_of_other_dates_left(scratch):
    out = scratch / "out"
    (out / ".dt=2024-01-01.abc123.tmp").mkdir(parents=True)
    (out / ".dt=2024-01-01.abc123.tmp" / "part-00000.parquet").write_bytes(b"half")
    (out / ".dt=2024-01-02.old").mkdir()
    (out / ".dt=2024-01-02.old" / "_SUCCESS").write_text("")
    code, err = run_stage("score", ["--out", "out"], scratch)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["dt=2024-01-02", f"dt={DATE}"]


def test_outputs_get_the_usual_permissions(scratch):
    assert run_stage("user_profiles", [], scratch)[0] == 0
    assert run_stage("score", [], scratch)[0] == 0
    umask = os.umask(0)
    os.umask(umask)
    for rel in ("data/models", "data/features/users", f"data/scores/dt={DATE}"):
        path = scratch / rel
        assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask, rel
        for file in path.iterdir():
            assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask, file
