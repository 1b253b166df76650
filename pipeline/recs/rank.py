"""Chunked ranking: per chunk of users, generation of their vectors, one matrix product against
every item, exclusions and the top-K (:mod:`pipeline.recs.topk`), on CUDA when available.

Memory is bounded by the chunk (``chunk_size`` x items x 4 bytes for the scores), not by the
number of users; ``benchmarks/scoring.py`` measures it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from pipeline import distributed
from pipeline.errors import PipelineError
from pipeline.recs.topk import exclude_, top_k


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; a CUDA device must be available."""
    return torch.device(distributed.resolve_device(name, "score.device"))


@dataclass
class Chunk:
    lo: int  # first user (position in the scored order)
    idx: np.ndarray  # (c, k) item indices, best first
    vals: np.ndarray  # (c, k) float32 scores; -inf where fewer than k items were left
    bad: np.ndarray  # (c,) bool: users whose vector was not finite (no list)


def rank_chunks(
    user_vectors: Callable[[int, int], torch.Tensor],
    n_users: int,
    item: torch.Tensor,
    k: int,
    chunk_size: int,
    device: torch.device,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    progress: bool = True,
) -> Iterator[Chunk]:
    """Top-K per user, ``chunk_size`` users at a time: generation, product, exclusions, top-K.

    ``user_vectors(lo, hi)``: the (hi - lo, d) vectors of users ``lo:hi``; ``item``: (n, d);
    ``exclude``: CSR (indptr over the users, item indices) of items never to return.
    """
    item = item.to(device=device, dtype=torch.float32).contiguous()
    if not torch.isfinite(item).all():
        raise PipelineError("the method's item vectors are not finite: the model is broken")
    # disable=None: a bar on a terminal, none in logs (DVC, cron)
    bar = tqdm(total=n_users, unit="user", desc="score", disable=None if progress else True)
    try:
        for lo in range(0, n_users, chunk_size):
            hi = min(lo + chunk_size, n_users)
            with torch.no_grad():
                users = user_vectors(lo, hi).to(device=device, dtype=torch.float32)
                bad = ~torch.isfinite(users).all(1)
                if bad.any():
                    users = torch.where(bad[:, None], torch.zeros_like(users), users)
                scores = users @ item.T
                if exclude is not None:
                    exclude_(scores, exclude[0][lo : hi + 1], exclude[1])
                idx, vals = top_k(scores, k)
                del scores  # before the next chunk's: one score matrix alive at a time
            yield Chunk(lo, idx.cpu().numpy(), vals.cpu().numpy(), bad.cpu().numpy())
            bar.update(hi - lo)
    finally:
        bar.close()
