"""`dvc repro` end to end on the embedded default, in a scratch copy of the repository.

Two changes to the default, both to the LLM profiles: shorter ones (8 new tokens instead of 32
from prompts of 2 history items instead of 6), for a quarter of the training users
(``train_fraction: 0.25``; the cold users all get one). All ~600 users' profiles took two
thirds of the run even at 8 tokens (the time goes to reading the ~190-token prompts, not to
writing); the stage runs the same code (the offline SmolLM2, batching, checks, the store)
either way, and the profile store's own tests are in tests/test_user_profiles.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def copy_repo(dest: Path) -> Path:
    """Tracked and untracked-but-not-ignored files: what a fresh clone plus local edits hold."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [str(bin_dir / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    params = (repo / "params.yaml").read_text()
    head, section = params.split("\nuser_profiles:", 1)
    section = re.sub(r"max_new_tokens: *32\b", "max_new_tokens: 8", section, count=1)
    section = re.sub(r"max_items: *6\b", "max_items: 2", section, count=1)
    section = re.sub(r"train_fraction: *1\.0\b", "train_fraction: 0.25", section, count=1)
    assert all(f in section for f in ("max_new_tokens: 8", "max_items: 2", "train_fraction: 0.25"))
    (repo / "params.yaml").write_text(f"{head}\nuser_profiles:{section}")
    shutil.rmtree(repo / "metrics", ignore_errors=True)
    (repo / "dvc.lock").unlink(missing_ok=True)
    run = dvc(repo, "repro")
    assert run.returncode == 0, run.stdout + run.stderr
    return repo


def test_repro_writes_the_tables(repo):
    for name in ("interactions", "items", "users"):
        assert pl.read_parquet(repo / f"data/prepared/{name}.parquet").height > 0
    roles = pl.read_parquet(repo / "data/split/roles.parquet")
    assert roles["role"].n_unique() == 5
    assert (repo / "metrics/data_stats.json").exists()


def test_second_repro_changes_nothing(repo):
    run = dvc(repo, "repro")
    assert run.returncode == 0, run.stderr
    assert "Running stage" not in run.stdout
    assert "Data and pipelines are up to date" in run.stdout


def test_metrics_show(repo):
    run = dvc(repo, "metrics", "show", "--json")
    assert run.returncode == 0 and "overlap_users" in run.stdout


def test_feature_stores_models_metrics_and_top_k(repo):
    import json

    items = pl.read_parquet(repo / "data/features/items.parquet")
    assert items["has_text"].all() and items["fused_emb"].dtype.shape == (384,)
    profiles = pl.concat(
        [pl.read_parquet(p) for p in (repo / "data/features/users").glob("part-*.parquet")]
    )
    roles = pl.read_parquet(repo / "data/split/roles.parquet")
    assert (profiles["model"].str.contains("smollm2")).all()
    profiled = set(profiles["user_id"])
    train = set(roles.filter(pl.col("role") == "train_overlap")["user_id"])
    cold_users = set(roles.filter(pl.col("role").is_in(["valid_cold", "test_cold"]))["user_id"])
    assert cold_users <= profiled and profiled <= train | cold_users
    assert 0.1 * len(train) < len(profiled & train) < 0.4 * len(train)  # train_fraction 0.25
    metrics = json.loads((repo / "metrics/cold_start.json").read_text())
    assert {"item_mean_user_bias", "popularity", "diffcdr", "ours"} <= set(metrics)
    # No timings: a retrain with the same seed leaves `dvc metrics diff` empty.
    assert not [k for row in metrics.values() for k in row if k.endswith("_seconds")]
    part = repo / "data/scores/dt=2026-01-01"
    assert (part / "_SUCCESS").exists()
    scores = pl.read_parquet(part / "part-*.parquet")
    cold = roles.filter(pl.col("role").is_in(["valid_cold", "test_cold"])).height
    assert scores["user_id"].n_unique() == cold and scores["rank"].max() == 20
    manifest = json.loads((part / "manifest.json").read_text())
    assert manifest["method"] in metrics
