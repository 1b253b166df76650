"""Where a batch stage runs: ``local`` (this process) or ``ray`` (Ray Data, one machine or many).

``item_features``, ``user_profiles`` and ``score`` take ``engine: local | ray``. With ``ray``
the stage hands its rows to Ray Data in blocks; a fixed pool of actors runs the stage's own
per-batch code, each actor loading its model once (in its constructor), with one GPU per actor
where the cluster has GPUs; the results stream back to this process in input order, and the
stage writes its usual outputs from them. An actor that dies is restarted and its batch run
again (Ray Data's actor pools retry by default), so a lost worker costs time, not rows.

The cluster: ``RAY_ADDRESS`` (``auto``, ``ray://head:10001``, ...) names an existing one; without
it a Ray instance is started on this machine for the run and stopped after it. Every node
needs the project installed (the same ``.venv`` or image) and the stage's inputs and outputs on
a path it can read (a shared filesystem), as paths are handed to the actors as they are.

The ``ray`` params of a stage (``<stage>.ray``: actors, CPUs per actor, rows per batch) and the
engine itself change how a stage runs, never what it writes: :data:`EXECUTION_KEYS` are kept
out of the params hashes that outputs record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger("engine")

ENGINES = ("local", "ray")
EXECUTION_KEYS = {"engine", "ray"}  # a section's keys that choose how it runs, not what


class RaySettings(Protocol):
    actors: int  # actors in the pool (each holds the model)
    cpus_per_actor: float  # CPUs reserved per actor (its torch threads too)
    batch_size: int  # rows per actor call


# --------------------------------------------------------------------------- the cluster
@contextlib.contextmanager
def session() -> Iterator[None]:
    """Ray connected for the block: the cluster ``RAY_ADDRESS`` names, else a local instance
    started here and stopped afterwards. Inside a session already open, just that one."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = os.environ.get("RAY_ADDRESS") or None
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    log.info("ray: %s, resources %s", address or "local instance", ray.cluster_resources())
    try:
        yield
    finally:
        ray.shutdown()


def running(name: str) -> contextlib.AbstractContextManager:
    """A Ray :func:`session` for engine ``ray``; nothing to open for ``local``."""
    return session() if name == "ray" else contextlib.nullcontext()


def gpus_per_actor(device: str) -> int:
    """One GPU per actor where the cluster has GPUs and ``device`` allows them, else none."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if device == "cpu":
        return 0
    if device.startswith("cuda") and gpus < 1:
        raise PipelineError(f"device {device} requested but the Ray cluster has no GPU")
    return 1 if gpus >= 1 else 0


# --------------------------------------------------------------------------- datasets
def from_tables(tables: Sequence[pa.Table]) -> ray.data.Dataset:
    """A dataset whose blocks are ``tables``, in order (a batch never spans two of them when
    the map's batch size is their row count)."""
    import ray.data

    return ray.data.from_arrow(list(tables))


def blocks(table: pa.Table, rows: int) -> ray.data.Dataset:
    """``table`` as a dataset of blocks of ``rows`` rows (the last one shorter)."""
    return from_tables([table.slice(lo, rows) for lo in range(0, table.num_rows, rows)])


def read_parquet(path: Path, columns: list[str], rows: int) -> ray.data.Dataset:
    """Ray Data's reader over a Parquet file or directory, re-cut into blocks of ``rows``."""
    import ray.data

    ds = ray.data.read_parquet(str(Path(path).resolve()), columns=columns)
    return ds.repartition(target_num_rows_per_block=rows)


# --------------------------------------------------------------------------- the map
def map_ordered(
    ds: ray.data.Dataset,
    actor: type,
    kwargs: dict[str, Any],
    settings: RaySettings,
    device: str,
    rows: int,
    batch_size: int | None = None,
) -> Iterator[pa.Table]:
    """Run ``actor(**kwargs)(batch)`` over the ``rows`` rows of ``ds``, ``batch_size`` rows a
    call (``settings.batch_size`` by default), on a pool of at most ``settings.actors`` actors;
    yield the output tables in input order as they finish."""

    batch_size = batch_size or settings.batch_size
    ds.context.execution_options.preserve_order = True  # rows come back in input order
    ds.context.enable_progress_bars = sys.stderr.isatty()
    mapped = ds.map_batches(
        Hosted,
        fn_constructor_kwargs={
            "actor": actor,
            "kwargs": kwargs,
            "cwd": os.getcwd(),
            "cpus": settings.cpus_per_actor,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=_pool(settings, rows, batch_size),
        num_cpus=settings.cpus_per_actor,
        num_gpus=gpus_per_actor(device),
    )
    yield from mapped.iter_batches(batch_size=None, batch_format="pyarrow")


def _pool(settings: RaySettings, rows: int, batch_size: int) -> ray.data.ActorPoolStrategy:
    """Up to ``settings.actors`` actors (never more than batches); started at once only as
    many as leave a CPU free: a pool that took every CPU would leave none for Ray Data's own
    read and split tasks and wait on them forever. The rest start as CPUs free up."""
    import ray.data

    most = max(1, min(settings.actors, -(-rows // batch_size)))
    spare = ray.cluster_resources().get("CPU", 1) - 1
    return ray.data.ActorPoolStrategy(
        min_size=max(1, min(most, int(spare // settings.cpus_per_actor))), max_size=most
    )


class Hosted:
    """What runs in each actor: the driver's working directory (so relative paths in params
    mean what they mean locally; on another node, where the same path exists) and a torch
    thread per reserved CPU, then the stage's own class, built once, called per batch."""

    def __init__(self, actor: type, kwargs: dict[str, Any], cwd: str, cpus: float):
        import torch

        if os.path.isdir(cwd):
            os.chdir(cwd)
        torch.set_num_threads(threads(cpus))
        self.inner = actor(**kwargs)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.inner(batch)

    def __del__(self) -> None:  # Ray Data calls it when the actor shuts down
        self.inner = None  # the stage's class lets go of what it holds (a server, a model)


# --------------------------------------------------------------------------- side facts
SIDE = "_side"  # a column of an actor's output: JSON facts about the batch on its first row


def with_side(table: pa.Table, facts: dict) -> pa.Table:
    """``table`` with ``facts`` (counts, model names) riding on its first row."""
    side = [json.dumps(facts, default=str)] + [None] * (table.num_rows - 1)
    return table.append_column(SIDE, pa.array(side, pa.string()))


def split_side(table: pa.Table) -> tuple[pa.Table, list[dict]]:
    """The rows without :data:`SIDE`, and the facts of every batch among them."""
    facts = [json.loads(s) for s in table[SIDE].drop_null().to_pylist()]
    return table.drop_columns(SIDE), facts


def threads(cpus: float) -> int:
    """CPU threads of an actor that reserved ``cpus`` CPUs."""
    return max(1, int(cpus))
