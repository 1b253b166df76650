"""``dvc repro`` killed at seeded times across its stages, then run again (full suite only).

In a scratch copy of the repository (``tests/test_pipeline_e2e.py``'s), with the tiny embedded
sample and a small model set, the whole ``dvc repro`` process group (DVC and the stage it runs)
gets SIGKILL at times drawn from the seed within an uninterrupted run's duration, up to
:data:`KILLS` times, then ``dvc repro`` runs to the end. Its outputs must equal the
uninterrupted run's, byte for byte (timings aside), with nothing of ours left behind.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_SYNTHETIC, write_params
from tests.faults import TRAIN, leftovers, record, tree_bytes
from tests.test_pipeline_e2e import copy_repo

pytestmark = [pytest.mark.faults_full, pytest.mark.slow]

SEEDS = range(3)
KILLS = 2
OUTPUTS = [
    "data/raw",
    "data/prepared",
    "data/split",
    "data/features/items.parquet",
    "data/features/users",
    "data/models",
    "data/scores",
    "metrics/data_stats.json",
    "metrics/split.json",
]
PARAMS = {
    "synthetic": TINY_SYNTHETIC,
    "train": TRAIN,
    "user_profiles": {"enabled": False},
    "item_features": {"device": "cpu"},
    "score": {"method": "emcdr", "date": "2026-01-01", "device": "cpu"},
}


def repro(repo: Path, kill_after: float | None = None) -> subprocess.CompletedProcess | None:
    """``dvc repro``; with ``kill_after``, the whole process group is killed then (None when
    it was, the finished run otherwise)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["OMP_NUM_THREADS"] = "1"
    with subprocess.Popen(
        [str(bin_dir / "dvc"), "repro"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, _ = proc.communicate(timeout=kill_after if kill_after is not None else 1800)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def fresh(root: Path) -> Path:
    repo = copy_repo(root)
    for rel in ("metrics", "plots"):
        for path in (repo / rel).glob("*"):
            path.unlink()
    (repo / "dvc.lock").unlink(missing_ok=True)
    write_params(repo / "params.yaml", **PARAMS)
    return repo


def outputs(repo: Path) -> dict[str, bytes]:
    found = {}
    for rel in OUTPUTS:
        path = repo / rel
        if path.is_dir():
            found.update({f"{rel}/{k}": v for k, v in tree_bytes(path).items()})
        else:
            found[rel] = path.read_bytes()
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict[str, bytes], float]:
    repo = fresh(tmp_path_factory.mktemp("repro-ref"))
    start = time.perf_counter()
    run = repro(repo)
    assert run is not None and run.returncode == 0, run.stdout[-4000:]
    return outputs(repo), time.perf_counter() - start


@pytest.mark.parametrize("seed", SEEDS)
def test_dvc_repro_killed_completes_with_the_same_outputs(reference, tmp_path, seed):
    want, seconds = reference
    repo = fresh(tmp_path)
    rng = random.Random(seed)
    kills = []
    for _ in range(KILLS):
        at = round(rng.uniform(0.05, 0.95) * seconds, 1)
        if repro(repo, kill_after=at) is not None:
            kills.append(f"t={at}s (finished first)")
            break
        kills.append(f"t={at}s")
    run = repro(repo)
    assert run is not None and run.returncode == 0, f"seed {seed}, {kills}: {run.stdout[-4000:]}"
    assert leftovers(repo) == [], f"seed {seed}, {kills}"
    got = outputs(repo)
    assert sorted(got) == sorted(want), f"seed {seed}, {kills}"
    for name in want:
        assert got[name] == want[name], f"seed {seed}, {kills}: {name} differs"
    record(
        "kill -9 of `dvc repro` (the process group) at a random time",
        times=sum("first" not in k for k in kills),
        seed=seed,
        kills=kills,
        outcome="the next `dvc repro` re-ran what was unfinished; the same outputs, byte for byte",
        lost="none",
    )
