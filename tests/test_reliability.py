"""What a new user ran into: damaged model files, truncated downloads, bad inputs and the
messages they get. Each test here failed before its fix."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from pipeline.cdr import store
from pipeline.recs import trained
from tests.faults import make_project, run_stage

DATE = "2024-03-01"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A tiny trained project (read-only: tests copy what they change)."""
    torch.set_num_threads(1)
    return make_project(tmp_path_factory.mktemp("reliability") / "p")


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
