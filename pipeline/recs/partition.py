"""A dated output partition ``OUT/dt=DATE/``: list parts, rejects, manifest, ``_SUCCESS`` last.

The partition is built in a hidden temporary directory beside it, then swapped in by two
renames (:func:`pipeline.io.atomic_dir`: the old one moved aside, the new one in, the old one
deleted), so a run that crashes or is killed leaves the previous partition of that date
complete; the next run (of any date) puts back a partition a killed swap left aside and removes
the leftovers of every date. One run at a time per output directory, whatever its date
(:mod:`pipeline.io.lock`): a second run fails at once, naming the directory.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa

from pipeline.io import atomic_dir, recover_dir, write_json, write_parquet, write_text
from pipeline.io.lock import locked
from pipeline.recs.plan import REASONS

log = logging.getLogger("score")

_LEFTOVER = re.compile(r"^\.dt=(\d{4}-\d{2}-\d{2})\.(?:old|.+\.tmp)$")
REJECTS_SCHEMA = pa.schema([("user_id", pa.string()), ("reason", pa.string())])
SUCCESS = "_SUCCESS"


def partition_name(date: str) -> str:
    return f"dt={date}"


@contextlib.contextmanager
def building(out: Path, date: str) -> Iterator[Path]:
    """A temporary directory that becomes ``out/dt=date`` when the block succeeds."""
    with locked(out, "another scoring run"):
        recover(out, date)
        with atomic_dir(Path(out) / partition_name(date)) as tmp:
            yield tmp


def recover(out: Path, date: str) -> None:
    """Undo what killed runs left, for ``date`` and every other date: put back a complete
    partition a swap had moved aside, delete half-built temporary ones. Only under the lock
    (:func:`building` takes it)."""
    dates = {date} | {m.group(1) for p in Path(out).glob(".dt=*") if (m := _LEFTOVER.match(p.name))}
    for each in sorted(dates):
        path = Path(out) / partition_name(each)
        recovered = recover_dir(path, complete=lambda d: (d / SUCCESS).exists())
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
