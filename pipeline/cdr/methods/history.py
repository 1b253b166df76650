"""Padded source histories: the items each user interacted with in the source domain."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.cdr.base import SourceView


def padded_history(
    src: SourceView, users: np.ndarray, max_len: int, liked_only: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(items (n, L), ratings (n, L), mask (n, L)) for ``users``; highest-rated items first.

    ``liked_only`` keeps ratings >= 4 when a user has any (PTUPCDR's "interacted" items).
    """
    items = np.zeros((len(users), max_len), dtype=np.int64)
    ratings = np.zeros((len(users), max_len), dtype=np.float32)
    mask = np.zeros((len(users), max_len), dtype=bool)
    for row, u in enumerate(users):
        lo, hi = src.indptr[u], src.indptr[u + 1]
        it, r = src.items[lo:hi], src.ratings[lo:hi]
        if liked_only and (r >= 4).any():
            it, r = it[r >= 4], r[r >= 4]
        order = np.lexsort((it, -r))[:max_len]
        n = len(order)
        items[row, :n], ratings[row, :n], mask[row, :n] = it[order], r[order], True
    return torch.as_tensor(items), torch.as_tensor(ratings), torch.as_tensor(mask)
