"""The one top-K: what ``evaluate`` measures and what ``score`` writes come from here.

Order: higher score first; equal scores by item index (items are indexed in sorted item-id
order), so a ranking is deterministic and does not depend on the device or the batch. Excluded
items (:func:`exclude_`) and NaN scores get ``-inf`` and rank last.
"""

from __future__ import annotations

import numpy as np
import torch

# Rows tied across the cut are sorted in full this many scores at a time (~64 MB with the
# sort's values and indices), so the extra memory stays small whatever the catalogue size.
_SORT_ELEMENTS = 1 << 22


def exclude_(scores: torch.Tensor, indptr: np.ndarray, items: np.ndarray) -> torch.Tensor:
    """Set ``scores[r, i]`` to ``-inf`` for every excluded item ``i`` of row ``r``, in place.

    ``indptr`` (rows + 1,) and ``items`` are a CSR over the rows of ``scores``: row ``r``
    excludes ``items[indptr[r]:indptr[r + 1]]`` (``indptr`` may start anywhere in ``items``,
    so a chunk passes its slice of the whole CSR's ``indptr``).
    """
    a, b = int(indptr[0]), int(indptr[-1])
    if b > a:
        rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        scores[
            torch.as_tensor(rows, device=scores.device),
            torch.as_tensor(items[a:b], device=scores.device),
        ] = float("-inf")
    return scores


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(item index, score) of each row's ``k`` best, best first; equal scores by item index.

    ``k`` beyond the number of items returns every item. One ``topk`` of ``k + 1``: where the
    k-th and (k+1)-th values differ (almost every row of real-valued scores) the selected set
    is exact, and is reordered by (-score, index); rows with a tie across the cut are sorted
    in full, stably, a block of rows at a time.
    """
    scores = torch.as_tensor(scores)
    n = scores.shape[1]
    k = min(k, n)
    vals, idx = torch.topk(scores, min(k + 1, n), dim=1, sorted=True)
    if torch.isnan(vals).any():  # topk takes NaN as the largest: a row with one shows it here
        scores = scores.masked_fill(torch.isnan(scores), float("-inf"))
        vals, idx = torch.topk(scores, min(k + 1, n), dim=1, sorted=True)
    tied = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    if vals.shape[1] > k:
        tied = vals[:, k - 1] == vals[:, k]
    vals, idx = vals[:, :k], idx[:, :k]
    order = torch.argsort(idx, dim=1)
    idx, vals = idx.gather(1, order), vals.gather(1, order)
    order = torch.argsort(vals, dim=1, descending=True, stable=True)
    idx, vals = idx.gather(1, order), vals.gather(1, order)
    for rows in torch.nonzero(tied).flatten().split(max(1, _SORT_ELEMENTS // n)):
        full_vals, full_idx = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        vals[rows], idx[rows] = full_vals[:, :k], full_idx[:, :k]
    return idx, vals
