"""Two jobs at once: two scoring runs on one output, and CPU-heavy jobs sharing the cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch

from pipeline import cpu
from tests.faults import child_env, copy_project, leftovers, record, run_child

DATE = "2024-03-01"
SLOW_SCORE = """
import sys, time
from pipeline import cli, score
from pipeline.recs import lists
from pathlib import Path
real = lists.write_lists
def slow(*a, **kw):
    while not Path(sys.argv[1]).exists():  # holds the output's lock meanwhile
        time.sleep(0.05)
    return real(*a, **kw)
lists.write_lists = slow
raise SystemExit(cli.run(lambda _: score.main(sys.argv[2:])))
"""


@pytest.fixture(scope="module")
def project(trained_project) -> Path:
    """The session's tiny trained project (read-only: tests copy what they change)."""
    return trained_project


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "second_date", [DATE, pytest.param("2024-03-02", marks=pytest.mark.faults_full)]
)
def test_a_second_scoring_run_on_the_same_output_fails_at_once(project, tmp_path, second_date):
    work = copy_project(project, tmp_path / "p")
    args = ["--out", "out", "--date", DATE]
    first = subprocess.Popen(
        [sys.executable, "-c", SLOW_SCORE, str(tmp_path / "go"), *args],
        cwd=work,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(work / "out" / f".dt={DATE}.resume.tmp", first)  # built under the lock
    second = run_child(["-m", "pipeline.score", "--out", "out", "--date", second_date], work)
    (tmp_path / "go").touch()
    assert second.code == 1
    assert second.stderr.strip().splitlines()[-1] == (
        "error: out: another scoring run holds it; wait for it"
    )
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    part = work / "out" / f"dt={DATE}"
    assert (part / "_SUCCESS").exists()
    manifest = json.loads((part / "manifest.json").read_text())
    assert pl.read_parquet(part / "part-*.parquet").height == manifest["counts"]["rows"]
    assert sorted(p.name for p in (work / "out").iterdir()) == [f"dt={DATE}"]
    assert leftovers(work) == []
    record(
        "two score runs on one output"
        + (" (same date)" if second_date == DATE else " (two dates)"),
        times=1,
        outcome="the second failed at once naming the output; the first wrote a complete partition",
        lost="none",
    )


# --------------------------------------------------------------------------- sharing cores
HOLD = """
import sys, time
from pathlib import Path
from pipeline import cpu
with cpu.Job("holder", Path(sys.argv[1])):
    print("ready", flush=True)
    time.sleep(600)
"""


def hold_job(directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)],
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_jobs_share_the_cores_and_a_killed_job_stops_counting(tmp_path, monkeypatch):
    monkeypatch.delenv(cpu.ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu, "cores", lambda: 8)
    before = torch.get_num_threads()
    jobs = tmp_path / "jobs"
    with cpu.Job("a", jobs) as job:
        assert cpu.running_jobs(jobs) == 1 and job.threads == 8 == torch.get_num_threads()
        others = [hold_job(jobs) for _ in range(3)]
        assert cpu.running_jobs(jobs) == 4
        assert job.rebalance() == 2 == torch.get_num_threads()
        others[0].send_signal(signal.SIGKILL)
        others[0].wait()
        assert job.rebalance() == 2  # 8 // 3
        for proc in others[1:]:
            proc.kill()
            proc.wait()
        assert job.rebalance() == 8 and cpu.running_jobs(jobs) == 1
        assert len(list(jobs.glob("*.job"))) == 1  # the killed jobs' files went
        monkeypatch.setenv("OMP_NUM_THREADS", "4")  # caps the share
        assert job.rebalance() == 4
        monkeypatch.setenv(cpu.ENV, "3")  # fixes it
        assert job.rebalance() == 3
    assert list(jobs.glob("*.job")) == [] and torch.get_num_threads() == before


def test_cores_follow_the_affinity_mask():
    mask = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(mask)})
        assert cpu.cores() == 1
    finally:
        os.sched_setaffinity(0, mask)
