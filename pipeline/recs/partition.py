"""A dated output partition ``OUT/dt=DATE/``: list parts, rejects, manifest, ``_SUCCESS`` last.

The partition is built in a hidden directory beside it, then swapped in by two renames (the
old one moved aside, the new one in, the old one deleted: :func:`pipeline.io.replace_dir`), so
a run that crashes or is killed leaves the previous partition of that date complete. The build
directory ``.dt=DATE.resume.tmp`` keeps the list parts finished so far and their
:class:`~pipeline.recs.lists.Progress`: a run of the same date with the same inputs (the
``key``) goes on after the last finished part instead of starting over; other inputs start
afresh. The next run of any date puts back a partition a killed swap left aside and removes
what killed runs of other dates left (their build directories too). One run at a time per output directory, whatever its
date (:mod:`pipeline.io.lock`): a second run fails at once, naming the directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.io import (
    DiskFull,
    atomic_dir,
    read_json,
    recover_dir,
    replace_dir,
    write_json,
    write_parquet,
    write_text,
)
from pipeline.io.lock import locked
from pipeline.recs.lists import Progress
from pipeline.recs.plan import REASONS

log = logging.getLogger("score")

_LEFTOVER = re.compile(r"^\.dt=(\d{4}-\d{2}-\d{2})\.(?:old|.+\.tmp)$")
PROGRESS = ".progress.json"  # in the build directory only; removed before the swap
REJECTS_SCHEMA = pa.schema([("user_id", pa.string()), ("reason", pa.string())])
SUCCESS = "_SUCCESS"


def partition_name(date: str) -> str:
    return f"dt={date}"


@dataclass
class Build:
    dir: Path  # where the partition's files go
    done: Progress  # the parts a killed run finished there (nothing when starting afresh)
    save: Callable[[Progress], None] | None  # records a finished part (None: not resumable)


@contextlib.contextmanager
def building(out: Path, date: str, key: str | None = None) -> Iterator[Build]:
    """A directory that becomes ``out/dt=date`` when the block succeeds. With ``key`` (a hash
    of everything the lists depend on) it is ``.dt=DATE.resume.tmp``, kept when the block fails
    so that the next run with the same key resumes; without, a temporary one."""
    with locked(out, "another scoring run"):
        recover(out, date)
        final = Path(out) / partition_name(date)
        if key is None:
            with atomic_dir(final) as tmp:
                yield Build(tmp, Progress(), None)
            return
        path = _resume_dir(final)
        done = _resumable(path, key)

        def save(progress: Progress) -> None:
            write_json({"key": key, **dataclasses.asdict(progress)}, path / PROGRESS)

        try:
            yield Build(path, done, save)
        except DiskFull as exc:  # named after the partition; the finished parts stay
            raise DiskFull(final, exc.__cause__ or exc) from exc.__cause__
        (path / PROGRESS).unlink(missing_ok=True)
        replace_dir(path, final)


def _resume_dir(partition: Path) -> Path:
    return partition.with_name(f".{partition.name}.resume.tmp")


def _resumable(path: Path, key: str) -> Progress:
    """What the build directory ``path`` holds for ``key``; anything else in it goes."""
    try:
        state = read_json(path / PROGRESS)
    except (OSError, ValueError):
        state = {}
    fields = {f.name for f in dataclasses.fields(Progress)}
    ok = isinstance(state, dict) and state.get("key") == key and fields <= set(state)
    if ok and all((path / name).is_file() for name in state["parts"]):
        done = Progress(**{name: state[name] for name in fields})
        for entry in path.iterdir():  # a part, rejects or manifest written after the record
            if entry.name in {*done.parts, PROGRESS}:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        log.info(
            "%s: resuming after %d users (%d finished parts) of an interrupted run",
            path,
            done.users,
            len(done.parts),
        )
        return done
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return Progress()


def recover(out: Path, date: str) -> None:
    """Undo what killed runs left, for ``date`` and every other date: put back a complete
    partition a swap had moved aside, delete half-built temporary ones. Only under the lock
    (:func:`building` takes it)."""
    found = {m.group(1) for p in Path(out).glob(".dt=*") if (m := _LEFTOVER.match(p.name))}
    for each in sorted(found | {date}):
        path = Path(out) / partition_name(each)
        keep = [_resume_dir(path)] if each == date else []  # this date's build is resumed
        recovered = recover_dir(path, complete=lambda d: (d / SUCCESS).exists(), keep=keep)
        if recovered.restored:
            log.warning("%s: restored the previous partition left aside by a killed run", path)
        for leftover in recovered.removed:
            log.info("removed %s (left by an interrupted run)", leftover)


def write_rejects(directory: Path, rejects: Sequence[tuple[str | None, str]]) -> dict[str, int]:
    """``rejects.parquet`` (``user_id``, ``reason``; sorted), the reasons in its metadata;
    returns the count by reason."""
    rows = sorted(rejects, key=lambda r: ("" if r[0] is None else r[0], r[1]))
    write_parquet(
        pa.table(
            {"user_id": [r[0] for r in rows], "reason": [r[1] for r in rows]},
            schema=REJECTS_SCHEMA,
        ),
        Path(directory) / "rejects.parquet",
        {"reasons": REASONS},
        schema=REJECTS_SCHEMA,
    )
    return dict(sorted(Counter(r[1] for r in rows).items()))


def finish(directory: Path, manifest: dict) -> None:
    """``manifest.json``, then ``_SUCCESS``: the last file, the partition is complete."""
    write_json(manifest, Path(directory) / "manifest.json")
    write_text("", Path(directory) / SUCCESS)
