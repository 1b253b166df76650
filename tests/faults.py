"""Helpers of the reliability tests: small trained projects, stages run as a user runs them (in
this process through ``cli.run``, or in a child process that is killed with SIGKILL at a
seeded point), and the checks that follow (no leftovers, the same bytes as an uninterrupted
run).

**Kill points.** A child started by :func:`run_child` with ``kill_at=n`` installs an audit hook
(:mod:`tests.killpoint`) that counts the moments where a stage changes the file system (a file
opened for writing, a rename, a delete, a directory made) and the data files it opens for
reading, and sends itself SIGKILL at the ``n``-th. :func:`count_points` runs the stage once to
count them; :func:`schedule` draws the points from a seed, so a failure names a seed that
reproduces it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.conftest import ROOT, TINY_SYNTHETIC, write_params

PYTHON = sys.executable
# A small, quick model set: the floors, a matrix-factorisation mapping and a generator-free
# bridge; enough to exercise loading, fold-in and ranking.
TRAIN = {
    "methods": ["global_mean", "popularity", "item_mean_user_bias", "emcdr"],
    "base": {"epochs": 10, "bpr_epochs": 10, "dim": 8, "bpr_dim": 8},
    "emcdr": {"epochs": 20},
}
TEMP_SUFFIXES = (".tmp", ".part", ".old", ".journal", ".journal.jsonl", ".resume", ".lock")


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def make_project(root: Path, *, train: bool = True, **sections) -> Path:
    """The embedded sample (tiny) with download, prepare, split and (``train``) train done."""
    from pipeline import download, prepare, split
    from pipeline import train as train_stage
    from pipeline.config import load_params

    root.mkdir(parents=True, exist_ok=True)
    settings = {
        "synthetic": TINY_SYNTHETIC,
        "train": TRAIN,
        "user_profiles": {"enabled": False},
        "score": {"method": "emcdr", "date": "2024-03-01"},
        **sections,
    }
    write_params(root / "params.yaml", **settings)
    with chdir(root):
        params = load_params("params.yaml")
        download.download(params)
        prepare.prepare(params)
        split.split(params)
        if train:
            train_stage.train(params)
    return root


def set_params(root: Path, **sections) -> None:
    """Merge ``sections`` into ``root/params.yaml`` (one level deep, as :func:`write_params`)."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(params.get(name), dict):
            params[name] = {**params[name], **value}
        else:
            params[name] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage(module: str, argv: Sequence[str], cwd: Path) -> tuple[int, str]:
    """``python -m pipeline.<module> argv`` in this process, as ``cli.run`` runs it: the exit
    code and what it printed on stderr."""
    import importlib

    from pipeline import cli

    stage = importlib.import_module(f"pipeline.{module}")
    err = io.StringIO()
    with chdir(cwd), contextlib.redirect_stderr(err):
        code = cli.run(lambda _: stage.main(list(argv)))
    return code, err.getvalue()


# --------------------------------------------------------------------------- child processes
@dataclass
class Child:
    code: int
    stdout: str
    stderr: str
    points: int | None  # kill points passed (counting runs)

    @property
    def killed(self) -> bool:
        return self.code == -signal.SIGKILL


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}
    env.pop("KILL_AT", None)
    env.pop("KILL_COUNT_FILE", None)
    return {**env, **extra}


def run_child(
    args: Sequence[str],
    cwd: Path,
    *,
    kill_at: int | None = None,
    kill_after: float | None = None,
    count: bool = False,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> Child:
    """``python -m tests.killpoint args``: a stage (``-m pipeline.x ...``) or a script
    (``-c CODE ...``) with the kill-point hook. ``kill_at``: SIGKILL at that point;
    ``kill_after``: SIGKILL after that many seconds (if still running); ``count``: report the
    points passed."""
    extra = {}
    counter = cwd / ".killpoints.count"
    if kill_at is not None:
        extra["KILL_AT"] = str(kill_at)
    if count:
        counter.unlink(missing_ok=True)
        extra["KILL_COUNT_FILE"] = str(counter)
    with subprocess.Popen(
        [PYTHON, "-m", "tests.killpoint", *args],
        cwd=cwd,
        env={**child_env(), **(env or {}), **extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=kill_after if kill_after is not None else timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            if kill_after is None:
                raise
    points = None
    if count:
        points = int(counter.read_text()) if counter.exists() else 0
        counter.unlink(missing_ok=True)
    return Child(proc.returncode, out, err, points)


def count_points(args: Sequence[str], cwd: Path, **kw) -> int:
    """Kill points one uninterrupted run passes (it must succeed)."""
    child = run_child(args, cwd, count=True, **kw)
    assert child.code == 0, child.stderr[-3000:]
    assert child.points, "no kill point reached"
    return child.points


def schedule(seed: int, points: int, n: int) -> list[int]:
    """``n`` distinct kill points in ``1..points``, drawn from ``seed`` (sorted)."""
    rng = random.Random(seed)
    return sorted(rng.sample(range(1, points + 1), min(n, points)))


# --------------------------------------------------------------------------- checks
def leftovers(root: Path, ignore: Iterable[str] = ()) -> list[str]:
    """Temporary files, journals, part files and locks under ``root`` (relative paths)."""
    skip = {".dvc", ".git", *ignore}
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] in skip:
            continue
        name = path.name
        if name == "dvc.lock":  # DVC's record of the pipeline, not a lock
            continue
        if name.endswith(TEMP_SUFFIXES) or name.startswith(".killpoints"):
            found.append(str(rel))
    return sorted(found)


def tree_bytes(root: Path, skip: Iterable[str] = ()) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), but the names in ``skip``."""
    skip = set(skip)
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def copy_project(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


# --------------------------------------------------------------------------- the report
def record(fault: str, **fields: object) -> None:
    """Append what one test injected and what happened to ``$FAULTS_RECORD`` (JSON lines), when
    set: ``python -m tests.faults FILE`` turns it into docs/reliability.md's table."""
    path = os.environ.get("FAULTS_RECORD")
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    entry = {"fault": fault, "test": test.split("[")[0], **fields}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, default=str) + "\n")


def table(path: Path) -> str:
    """The report table: one row per fault, with the runs and seeds counted."""
    rows: dict[str, dict] = {}
    for line in Path(path).read_text().splitlines():
        entry = json.loads(line)
        row = rows.setdefault(
            entry["fault"],
            {"n": 0, "seeds": set(), "runs": 0, "resumed": 0, "lost": set(), "tests": set()},
        )
        row.update(outcome=entry["outcome"], points=entry.get("points"))
        row["n"] += entry.get("times", 1)
        row["runs"] += 1
        row["resumed"] += bool(entry.get("resumed"))
        if "seed" in entry:
            row["seeds"].add(entry["seed"])
        row["lost"].add(entry.get("lost", "none"))
        row["tests"].add(entry["test"])
    out = [
        "| fault injected | times | seeds | what happened | data lost | reproduce |",
        "|---|---|---|---|---|---|",
    ]
    for fault, row in rows.items():
        seeds = ", ".join(map(str, sorted(row["seeds"]))) or "-"
        outcome = row["outcome"]
        if row["points"]:
            outcome += f" (points drawn from 1..{row['points']}"
            if row["resumed"]:
                outcome += (
                    f"; resumed wherever a kill had left work: {row['resumed']} of "
                    f"{row['runs']} seeds"
                )
            outcome += ")"
        command = f'`pytest -m "" {" ".join(sorted(row["tests"]))}`'
        lost = ", ".join(sorted(row["lost"]))
        out.append(f"| {fault} | {row['n']} | {seeds} | {outcome} | {lost} | {command} |")
    return "\n".join(out)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
