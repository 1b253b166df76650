"""Scoring on ``score.engine`` (:func:`ranked`): the chunked ranking in this process
(``local``), or on the ``ray`` engine (:mod:`pipeline.engine`), one batch of users per actor call.

On ray, the planned users (their positions in :class:`~pipeline.recs.plan.Plan` order) go to Ray Data
in batches of ``score.ray.batch_size``. Each actor receives the scorer (the trained method with
any folded-in users) once, computes the item vectors once, and ranks its batches with
:func:`~pipeline.recs.rank.rank_chunks`, ``score.chunk_size`` users at a time. The lists come
back in user order as :class:`~pipeline.recs.rank.Chunk` objects, for the same writer as the
local engine's; a user's list does not depend on the batch it was ranked in (the generators
seed each user's sampling noise by user).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from pipeline import engine
from pipeline.recs.fold import Scorer
from pipeline.recs.rank import Chunk, rank_chunks, resolve_device

if TYPE_CHECKING:
    from pipeline.config.score import ScoreParams


def _fixed(values: np.ndarray) -> pa.FixedSizeListArray:
    n, width = values.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width)


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    arr = column.combine_chunks()
    return arr.flatten().to_numpy().reshape(-1, arr.type.list_size)


class RankUsers:
    """A Ray Data actor: the scorer and item vectors held once, then one batch a call."""

    def __init__(
        self,
        scorer: Scorer,
        k: int,
        chunk_size: int,
        device: str,
        exclude: tuple[np.ndarray, np.ndarray],
    ):
        # Arrays come out of Ray's object store read-only; torch wants the rows writable.
        self.scorer = dataclasses.replace(scorer, rows=np.array(scorer.rows))
        self.k, self.chunk_size, self.exclude = k, chunk_size, exclude
        self.device = resolve_device(device)
        with torch.no_grad():
            self.item = scorer.item_vectors()

    def __call__(self, batch: pa.Table) -> pa.Table:
        pos = batch["pos"].to_numpy()
        lo, hi = int(pos[0]), int(pos[-1]) + 1
        if not np.array_equal(pos, np.arange(lo, hi)):
            raise ValueError("a batch of users is not a contiguous range")
        indptr, items = self.exclude
        chunks = list(
            rank_chunks(
                lambda a, b: self.scorer.user_vectors(lo + a, lo + b),
                hi - lo,
                self.item,
                self.k,
                self.chunk_size,
                self.device,
                (indptr[lo : hi + 1], items),
                progress=False,
            )
        )
        return pa.table(
            {
                "pos": pos,
                "idx": _fixed(np.concatenate([c.idx for c in chunks]).astype(np.int64)),
                "vals": _fixed(np.concatenate([c.vals for c in chunks]).astype(np.float32)),
                "bad": np.concatenate([c.bad for c in chunks]),
            }
        )


def actor_device(device: str) -> torch.device:
    """Where the actors rank: a GPU where the cluster has them (and ``device`` allows)."""
    return torch.device("cuda" if engine.gpus_per_actor(device) else "cpu")


def rank_on_ray(
    scorer: Scorer,
    n_users: int,
    k: int,
    chunk_size: int,
    device: str,
    exclude: tuple[np.ndarray, np.ndarray],
    settings: engine.RaySettings,
) -> Iterator[Chunk]:
    """Top-K of the ``n_users`` planned users, ranked on Ray actors, as chunks in user order."""
    if not n_users:
        return
    ds = engine.blocks(pa.table({"pos": np.arange(n_users, dtype=np.int64)}), settings.batch_size)
    kwargs = {
        "scorer": scorer,
        "k": k,
        "chunk_size": chunk_size,
        "device": device,
        "exclude": exclude,
    }
    for block in engine.map_ordered(ds, RankUsers, kwargs, settings, device, n_users):
        pos = block["pos"].to_numpy()
        idx, vals = _matrix(block["idx"]), _matrix(block["vals"])
        yield Chunk(int(pos[0]), idx, vals, block["bad"].to_numpy(zero_copy_only=False))


def ranked(
    scorer: Scorer, n: int, exclude: tuple, sp: ScoreParams, device: torch.device | None,
    progress: bool, start: int = 0,
) -> tuple[Iterator[Chunk], torch.device]:  # fmt: skip
    """The lists of users ``start:n``, chunk by chunk, from ``score.engine``, and the device
    that ranks them (the ray engine always starts at 0)."""
    if sp.engine == "ray":
        device = actor_device(sp.device)
        chunks = rank_on_ray(scorer, n, sp.k, sp.chunk_size, sp.device, exclude, sp.ray)
        return chunks, device
    item = scorer.item_vectors()
    rest = (exclude[0][start:], exclude[1])
    chunks = rank_chunks(
        lambda lo, hi: scorer.user_vectors(start + lo, start + hi),
        n - start, item, sp.k, sp.chunk_size, device, rest, progress,
    )  # fmt: skip
    return (dataclasses.replace(c, lo=c.lo + start) for c in chunks), device
