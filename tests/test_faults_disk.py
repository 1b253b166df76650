"""Disk full while writing an output: a clear one-line error, the previous output intact and
readable, and the next run succeeds once space is back.

Where this machine lets the test mount a small tmpfs (as root), the outputs live on one and a
ballast file leaves too little room: every writer (pyarrow, polars, torch, plain files) meets a
real ENOSPC. Elsewhere an ENOSPC is injected at the moment an output is made durable (the
``fsync`` of every atomic write), which runs everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from pipeline.cdr import store
from tests.conftest import amazon_params
from tests.faults import (
    copy_project,
    leftovers,
    record,
    run_stage,
    tree_bytes,
)

DATE = "2024-03-01"


@pytest.fixture(scope="module")
def project(trained_project) -> Path:
    """The session's tiny trained project (read-only: tests copy what they change)."""
    return trained_project


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip()}): the injected test runs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def ballast(where: Path, leave: int) -> Iterator[None]:
    """Fill ``where``'s file system but ``leave`` bytes, for the block."""
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    path = where / "ballast"
    with open(path, "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, max(free - leave, 1))
    try:
        yield
    finally:
        path.unlink()


def disk_full_error(code: int, err: str, name: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and "no space left on the device" in lines[0], err
    assert name in lines[0], lines[0]


def on_tmpfs(project: Path, root: Path, size: str = "64m") -> Path:
    """A copy of ``project`` whose ``data/`` lives on a tmpfs (mounted by the caller)."""
    work = copy_project(project, root / "p")
    shutil.copytree(work / "data", root / "fs", dirs_exist_ok=True)
    shutil.rmtree(work / "data")
    (work / "data").symlink_to(root / "fs")
    return work


@pytest.mark.parametrize("stage", ["prepare", "train", "score"])
def test_a_full_tmpfs_fails_clearly_and_keeps_the_previous_output(project, tmp_path, stage):
    with tmpfs(tmp_path / "fs", "64m"):
        work = on_tmpfs(project, tmp_path)
        assert run_stage("score", [], work)[0] == 0  # a previous partition too
        output = {
            "prepare": "data/prepared",
            "train": "data/models",
            "score": f"data/scores/dt={DATE}",
        }[stage]
        before = tree_bytes(work / output)
        args = ["-S", "score.k=40"] if stage == "score" else []  # another, bigger partition
        with ballast(tmp_path / "fs", leave=4096):
            code, err = run_stage(stage, args, work)
        disk_full_error(code, err, "data/")
        assert tree_bytes(work / output) == before
        if stage == "score":
            assert pl.read_parquet(work / output / "part-*.parquet").height > 0
        else:
            run_stage("score", ["--out", "check"], work)  # the previous output still loads
        code, err = run_stage(stage, args, work)
        assert code == 0, err
        assert leftovers(work / "data/") == []
    record(
        f"disk full (tmpfs): {stage}",
        times=1,
        outcome="one-line 'no space left' error; previous output unchanged and readable; the "
        "next run succeeded",
        lost="none",
    )


def test_a_full_tmpfs_during_download_keeps_what_was_fetched(tmp_path, http_server):
    from tests.test_faults_kill import MIRROR  # the same mirror files

    for path, data in MIRROR.items():
        http_server.add(path, data)
    work = tmp_path / "p"
    work.mkdir()
    amazon_params(work, http_server.url(""))
    with tmpfs(tmp_path / "fs", "4m"):
        (work / "data").symlink_to(tmp_path / "fs")
        first = "review_categories/Books.jsonl.gz"
        with ballast(tmp_path / "fs", leave=len(MIRROR[first]) + 16_384):
            code, err = run_stage("download", [], work)
        disk_full_error(code, err, "data/raw")
        assert (work / "data/raw/books/reviews.jsonl.gz").read_bytes() == MIRROR[first]
        code, err = run_stage("download", [], work)
        assert code == 0, err
        assert len(http_server.requests_for(first)) == 1  # kept, not fetched again
        assert all(len(http_server.requests_for(path)) <= 2 for path in MIRROR)
        assert leftovers(work / "data/") == []
    record(
        "disk full (tmpfs): download",
        times=1,
        outcome="one-line error; finished files kept; the next run resumed",
        lost="none",
    )


# --------------------------------------------------------------------------- injected ENOSPC
def failing_fsync(after: int):
    """``os.fsync`` that fails with ENOSPC from its ``after``-th call on."""
    real, calls = os.fsync, [0]

    def fsync(fd: int) -> None:
        calls[0] += 1
        if calls[0] >= after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    return fsync


@pytest.mark.parametrize("stage, after", [("train", 1), ("score", 2)])
def test_injected_enospc_fails_clearly_and_keeps_the_previous_output(
    project, tmp_path, monkeypatch, stage, after
):
    work = copy_project(project, tmp_path / "p")
    assert run_stage("score", [], work)[0] == 0
    output = {"train": "data/models", "score": f"data/scores/dt={DATE}"}[stage]
    before = tree_bytes(work / output)
    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", failing_fsync(after))
        code, err = run_stage(stage, ["-S", "score.k=40"] if stage == "score" else [], work)
    disk_full_error(code, err, output)
    assert tree_bytes(work / output) == before
    if stage == "train":
        assert store.load(work / output, *_data_and_train(work)).methods
    code, err = run_stage(stage, [], work)
    assert code == 0, err
    assert leftovers(work / "data") == []
    record(
        f"disk full (injected ENOSPC at fsync): {stage}",
        times=1,
        outcome="one-line 'no space left' error; previous output unchanged; the next run succeeded",
        lost="none",
    )


def _data_and_train(work: Path):
    from pipeline.cdr import data as cdr_data
    from pipeline.config import load_params

    params = load_params(work / "params.yaml")
    data = cdr_data.load(
        work / "data/prepared/interactions.parquet",
        work / "data/split/roles.parquet",
        "books",
        "movies",
    )
    return data, params.train
