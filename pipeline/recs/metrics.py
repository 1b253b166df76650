"""Cold-start metrics with RecBole's names: ``mae``, ``rmse``, ``hit@K``-style ranking keys.

Ranking is *full* ranking: every target item is a candidate (cold users have no visible target
history, so nothing is excluded). Positives are the items a test user rated >= 4 (every
interaction for implicit data). Ranking metrics average over test users with at least one
positive, and every such user counts: a user a method could not score contributes zeros.
Rankings come from :func:`pipeline.recs.topk.top_k` (ties by item index), the same function
that writes the ``score`` stage's lists.
"""

from __future__ import annotations

import numpy as np

POSITIVE_RATING = 4.0
KS = (10, 20)
RANKING_KEYS = ("ndcg", "hit", "recall", "mrr")
RATING_KEYS = ("mae", "rmse")
# Every metric of a method, in report order: mae, rmse, ndcg@10, hit@10, ..., mrr@20.
METRIC_KEYS = RATING_KEYS + tuple(f"{m}@{k}" for k in KS for m in RANKING_KEYS)


def rating_errors(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError(f"need equal, non-empty shapes, got {pred.shape} and {true.shape}")
    err = pred - true
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean()))}


def ranking_metrics(
    ranked: np.ndarray,
    positives: list[np.ndarray],
    ks: tuple[int, ...] = KS,
    scored: np.ndarray | None = None,
) -> dict[str, float]:
    """Average NDCG/HR/Recall/MRR@K over users with at least one positive.

    ``ranked``: (n_users, >= max(ks)) item indices, best first. ``positives``: per user, the
    relevant item indices. ``scored``: per user, False where the method produced no ranking
    (that user then scores zero on every metric, but still counts).
    """
    n_users = len(positives)
    if ranked.shape[0] != n_users:
        raise ValueError(f"{ranked.shape[0]} rankings for {n_users} users")
    scored = np.ones(n_users, dtype=bool) if scored is None else np.asarray(scored, dtype=bool)
    kmax = max(ks)
    discounts = 1.0 / np.log2(np.arange(2, kmax + 2))
    sums = {f"{m}@{k}": 0.0 for k in ks for m in RANKING_KEYS}
    counted = 0
    for row, pos, ok in zip(ranked, positives, scored, strict=True):
        pos = np.unique(np.asarray(pos))
        if pos.size == 0:
            continue
        counted += 1
        if not ok:
            continue
        hits = np.isin(row[:kmax], pos)
        for k in ks:
            h = hits[:k]
            n_hits = int(h.sum())
            ideal = discounts[: min(pos.size, k)].sum()
            sums[f"ndcg@{k}"] += float((discounts[:k][h]).sum() / ideal)
            sums[f"hit@{k}"] += float(n_hits > 0)
            sums[f"recall@{k}"] += n_hits / pos.size
            first = np.flatnonzero(h)
            sums[f"mrr@{k}"] += 1.0 / (first[0] + 1) if first.size else 0.0
    out = {key: (value / counted if counted else 0.0) for key, value in sums.items()}
    out["ranked_users"] = counted
    return out


def positives_by_user(
    users: np.ndarray, items: np.ndarray, ratings: np.ndarray, order: np.ndarray, explicit: bool
) -> list[np.ndarray]:
    """Relevant items of each user in ``order`` (rating >= 4, or every item if implicit)."""
    keep = ratings >= POSITIVE_RATING if explicit else np.ones(len(users), dtype=bool)
    u, i = users[keep], items[keep]
    sort = np.argsort(u, kind="stable")
    u, i = u[sort], i[sort]
    starts = np.searchsorted(u, order, side="left")
    ends = np.searchsorted(u, order, side="right")
    return [i[s:e] for s, e in zip(starts, ends, strict=True)]
