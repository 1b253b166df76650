"""Kill -9 at seeded points of every long stage, then run it again.

For each stage and seed, a copy of a project is killed (SIGKILL: no cleanup code runs) at up
to :data:`KILLS` points drawn from the seed, each on the state the previous kill left, then
run to the end. The re-run must complete, resume where the stage can (download, item
features, profiles, scoring), leave no temporary file, journal or lock, and write what an
uninterrupted run writes: the same bytes, except files that record timings (compared without
them). Points are moments where the stage touches the file system (:mod:`tests.killpoint`) or,
for the download, times within an uninterrupted run's duration.

CI runs one seed of the quick stages; ``pytest -m faults_full`` runs :data:`FULL_SEEDS` seeds
of all of them (docs/reliability.md has the table).
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest

from tests import faults
from tests.conftest import amazon_params
from tests.faults import (
    Child,
    copy_project,
    count_points,
    leftovers,
    run_child,
    tree_bytes,
)
from tests.httpserver import LocalHTTPServer
from tests.records import meta2023, review2023

KILLS = 2  # kills per seed before the run that must finish (1 for the seed CI runs)
FULL_SEEDS = range(10)
FAST_SEED = 0
DATE = "2024-03-01"


@dataclass
class Stage:
    """A stage run as a child process on a copy of ``base``."""

    name: str
    base: Path
    args: list[str]
    outputs: list[str]  # files and directories compared with the uninterrupted run
    volatile: set[str] = field(default_factory=set)  # file names holding timings
    progress: Callable[[Path], bool] | None = None  # did a killed run leave work to resume?
    resumed: Callable[[Path, Child], bool] | None = None  # did this run resume it?
    timed: float | None = None  # kill by time (seconds of an uninterrupted run) too
    reference: Path | None = None
    points: int = 0


def outputs_of(stage: Stage, root: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for rel in stage.outputs:
        path = root / rel
        if path.is_dir():
            found.update({f"{rel}/{k}": v for k, v in tree_bytes(path, stage.volatile).items()})
        elif path.name not in stage.volatile:
            found[rel] = path.read_bytes()
    return found


def prepared(stage: Stage, tmp_path_factory) -> Stage:
    """Count the stage's kill points on one uninterrupted run: the reference outputs."""
    ref = copy_project(stage.base, tmp_path_factory.mktemp(f"{stage.name}-ref") / "p")
    start = time.perf_counter()
    stage.points = count_points(stage.args, ref)
    stage.timed = time.perf_counter() - start if stage.timed is not None else None
    stage.reference = ref
    return stage


def kill_and_rerun(stage: Stage, seed: int, root: Path) -> dict:
    """Kill ``stage`` on a copy of its base at the seed's points, then run it to the end; the
    run that completes must resume what the killed runs left (where they left anything)."""
    work = copy_project(stage.base, root)
    rng = random.Random(seed)
    n_kills, kills = (1 if seed == FAST_SEED else KILLS), []
    for _ in range(n_kills + 1):
        progress = stage.progress is not None and stage.progress(work)
        if len(kills) == n_kills:
            child = run_child(stage.args, work)
            kills.append("none (run to the end)")
        elif stage.timed is not None and rng.random() < 0.5:
            at = round(rng.uniform(0.05, 1.0) * stage.timed, 2)
            child = run_child(stage.args, work, kill_after=at)
            kills.append(f"t={at}s")
        else:
            at = rng.randint(1, stage.points)
            child = run_child(stage.args, work, kill_at=at)
            kills.append(f"point {at}/{stage.points}")
        if not child.killed:
            if len(kills) <= n_kills:
                kills[-1] += " (finished first)"
            break
    assert child.code == 0, f"seed {seed}, kills {kills}: {child.stderr[-3000:]}"
    resumed = bool(progress and stage.resumed is not None and stage.resumed(work, child))
    assert resumed or not progress, f"seed {seed}, kills {kills}: did not resume"
    assert leftovers(work) == [], f"seed {seed}, kills {kills}"
    got, want = outputs_of(stage, work), outputs_of(stage, stage.reference)
    assert sorted(got) == sorted(want), f"seed {seed}, kills {kills}"
    for name in want:
        assert got[name] == want[name], f"seed {seed}, kills {kills}: {name} differs"
    return {"seed": seed, "kills": kills, "resumed": resumed}


# --------------------------------------------------------------------------- the stages
def _gz(lines: list[str]) -> bytes:
    return gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0)


MIRROR = {
    "review_categories/Books.jsonl.gz": _gz(
        [
            review2023(f"u{i}", f"b{i % 97}", 1.0 + i % 5, ts=1_600_000_000_000 + i)
            for i in range(12000)
        ]
    ),
    "meta_categories/meta_Books.jsonl.gz": _gz([meta2023(f"b{i}") for i in range(97)]),
    "review_categories/Movies_and_TV.jsonl.gz": _gz(
        [review2023(f"u{i}", f"m{i % 89}", 1.0 + i % 4) for i in range(0, 12000, 2)]
    ),
    "meta_categories/meta_Movies_and_TV.jsonl.gz": _gz([meta2023(f"m{i}") for i in range(89)]),
}
RATE = 400_000  # bytes per second: a download takes long enough to be killed mid-file


@pytest.fixture(scope="module")
def mirror():
    with LocalHTTPServer() as server:
        for path, data in MIRROR.items():
            server.add(path, data, rate=RATE)
        yield server


def _download_progress(root: Path) -> bool:
    """A part file with bytes in it, or a file listed as downloaded."""
    raw = root / "data/raw"
    if any(p.stat().st_size for p in raw.rglob("*.part")):
        return True
    manifest = raw / "manifest.json"
    return manifest.exists() and bool(json.loads(manifest.read_text())["files"])


def _download_resumed(root: Path, final: Child) -> bool:
    """It asked only for the rest of a kept part, or kept a finished file."""
    return "already downloaded" in final.stderr or "resuming at byte" in final.stderr


@pytest.fixture(scope="module")
def download_stage(mirror, tmp_path_factory) -> Stage:
    base = tmp_path_factory.mktemp("download") / "p"
    base.mkdir()
    amazon_params(base, mirror.url(""), download={"timeout_seconds": 30.0})
    stage = Stage(
        "download",
        base,
        ["-m", "pipeline.download"],
        ["data/raw"],
        progress=_download_progress,
        resumed=_download_resumed,
        timed=0.0,
    )
    return prepared(stage, tmp_path_factory)


@pytest.fixture(scope="module")
def project(trained_project) -> Path:
    """The session's tiny trained project (read-only: tests copy what they change)."""
    return trained_project


@pytest.fixture(scope="module")
def prepare_stage(project, tmp_path_factory) -> Stage:
    base = copy_project(project, tmp_path_factory.mktemp("prepare") / "p")
    for rel in ("data/prepared", "data/cache", "data/split", "data/models"):
        _remove(base / rel)

    stage = Stage(
        "prepare",
        base,
        ["-m", "pipeline.prepare"],
        ["data/prepared", "metrics/data_stats.json"],
        progress=lambda root: any((root / "data/cache/parsed").glob("*.parquet")),
        resumed=lambda root, final: "parsed before" in final.stderr,
    )
    return prepared(stage, tmp_path_factory)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def train_stage(project, tmp_path_factory) -> Stage:
    base = copy_project(project, tmp_path_factory.mktemp("train") / "p")
    _remove(base / "data/models")
    stage = Stage("train", base, ["-m", "pipeline.train"], ["data/models"])
    return prepared(stage, tmp_path_factory)


SCORE = """
import sys
from pipeline import cli, score
from pipeline.recs import lists
lists.ROWS_PER_PART = 60  # several parts, so that a killed run has some to resume from
raise SystemExit(cli.run(lambda _: score.main(sys.argv[1:])))
"""


@pytest.fixture(scope="module")
def score_stage(project, tmp_path_factory) -> Stage:
    base = copy_project(project, tmp_path_factory.mktemp("score") / "p")
    args = ["-c", SCORE, "--out", "out", "--date", DATE, "-S", "score.chunk_size=8"]

    stage = Stage(
        "score",
        base,
        args,
        ["out"],
        progress=lambda root: (root / f"out/.dt={DATE}.resume.tmp/.progress.json").exists(),
        resumed=lambda root, final: "resuming after" in final.stderr,
    )
    return prepared(stage, tmp_path_factory)


ITEMS = """
import sys
from pipeline import cli, item_features
item_features.CHUNK_ITEMS = 48  # several chunks, each journalled
raise SystemExit(cli.run(lambda _: item_features.main(sys.argv[1:])))
"""


@pytest.fixture(scope="module")
def item_features_stage(project, tmp_path_factory) -> Stage:
    base = copy_project(project, tmp_path_factory.mktemp("items") / "p")
    _remove(base / "data/features")

    def resumed(root: Path, final: Child) -> bool:
        stats = json.loads((root / "metrics/item_features.json").read_text())
        return stats["reused"] > 0

    stage = Stage(
        "item_features",
        base,
        ["-c", ITEMS, "-S", "item_features.device=cpu"],
        ["data/features/items.parquet"],
        progress=lambda root: any(root.glob("data/features/.items.parquet.journal/chunk-*")),
        resumed=resumed,
    )
    return prepared(stage, tmp_path_factory)


@pytest.fixture(scope="module")
def user_profiles_stage(project, tiny_lm, tmp_path_factory) -> Stage:
    from tests.conftest import ROOT

    base = copy_project(project, tmp_path_factory.mktemp("profiles") / "p")
    _remove(base / "data/features")
    args = [
        "-m",
        "pipeline.user_profiles",
        "-S",
        "user_profiles.enabled=true",
        "-S",
        f"user_profiles.model={tiny_lm}",
        "-S",
        "user_profiles.max_new_tokens=8",
        "-S",
        "user_profiles.batch_size=8",
        "-S",
        f"user_profiles.template={ROOT / 'prompts/user_profile_v1.txt'}",
        "-S",
        "user_profiles.device=cpu",
    ]

    journal = "data/features/.users.journal.jsonl"
    # The store's metadata holds the generation speed: compared as rows (see below).
    stage = Stage(
        "user_profiles",
        base,
        args,
        [],
        progress=lambda root: (root / journal).exists() and (root / journal).stat().st_size > 0,
        resumed=lambda root, final: "resuming:" in final.stderr,
    )
    return prepared(stage, tmp_path_factory)


def profile_rows(root: Path) -> pl.DataFrame:
    return pl.concat(
        [pl.read_parquet(p) for p in sorted((root / "data/features/users").glob("part-*.parquet"))]
    ).sort("user_id")


# --------------------------------------------------------------------------- the tests
def _seeds(fast: bool) -> list:
    full = [pytest.param(s, marks=pytest.mark.faults_full) for s in FULL_SEEDS if s != FAST_SEED]
    return (
        [FAST_SEED] if fast else [pytest.param(FAST_SEED, marks=pytest.mark.faults_full)]
    ) + full


@pytest.mark.parametrize("seed", _seeds(fast=True))
def test_download_killed_resumes_and_keeps_every_byte(download_stage, seed, tmp_path):
    result = kill_and_rerun(download_stage, seed, tmp_path / "p")
    manifest = json.loads((tmp_path / "p/data/raw/manifest.json").read_text())
    assert manifest["complete"] and all(e["verified"] for e in manifest["files"])
    record(download_stage, result)


@pytest.mark.parametrize("seed", _seeds(fast=True))
def test_prepare_killed_completes_with_the_same_tables(prepare_stage, seed, tmp_path):
    record(prepare_stage, kill_and_rerun(prepare_stage, seed, tmp_path / "p"))


@pytest.mark.parametrize("seed", _seeds(fast=True))
def test_score_killed_resumes_after_its_last_finished_part(score_stage, seed, tmp_path):
    result = kill_and_rerun(score_stage, seed, tmp_path / "p")
    assert (tmp_path / "p/out" / f"dt={DATE}" / "_SUCCESS").exists()
    record(score_stage, result)


@pytest.mark.parametrize("seed", _seeds(fast=False))
def test_train_killed_completes_with_the_same_model_files(train_stage, seed, tmp_path):
    record(train_stage, kill_and_rerun(train_stage, seed, tmp_path / "p"))


@pytest.mark.parametrize("seed", _seeds(fast=False))
def test_item_features_killed_resumes_from_its_journal(item_features_stage, seed, tmp_path):
    record(item_features_stage, kill_and_rerun(item_features_stage, seed, tmp_path / "p"))


@pytest.mark.parametrize("seed", _seeds(fast=False))
def test_user_profiles_killed_resumes_from_its_journal(user_profiles_stage, seed, tmp_path):
    result = kill_and_rerun(user_profiles_stage, seed, tmp_path / "p")
    got = profile_rows(tmp_path / "p")
    want = profile_rows(user_profiles_stage.reference)
    assert got.equals(want), f"seed {seed}: {result}"
    record(user_profiles_stage, result)


# --------------------------------------------------------------------------- the record
def record(stage: Stage, result: dict) -> None:
    killed = [k for k in result["kills"] if k.startswith(("point", "t=")) and "first" not in k]
    faults.record(
        f"kill -9 at a random point: {stage.name}",
        times=len(killed),
        outcome=OUTCOME[stage.name],
        points=stage.points,
        lost="none",
        **result,
    )


OUTCOME = {
    "download": "killed mid-file or between files; the re-run kept finished files, resumed "
    "the part with a Range request, verified the gzip; same bytes",
    "prepare": "re-run reused the parsed parts cached by checksum; same tables, byte for byte",
    "train": "re-run trained again (no resume); the same model files, byte for byte",
    "item_features": "re-run reused the journalled chunks; the same store, byte for byte",
    "user_profiles": "re-run kept the journalled profiles and generated the rest; the same rows",
    "score": "previous partition stayed readable; the re-run went on after the last finished "
    "part; the same partition, byte for byte",
}
