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
    per_user: bool = False,
) -> dict:
    """Average NDCG/HR/Recall/MRR@K over users with at least one positive.

    ``ranked``: (n_users, >= max(ks)) item indices, best first. ``positives``: per user, the
    relevant item indices. ``scored``: per user, False where the method produced no ranking
    (that user then scores zero on every metric, but still counts). ``per_user``: also return
    each counted user's values (``out["per_user"][key]``, in user order; ``out["users"]``: their
    positions in ``positives``), for paired tests between methods.
    """
    n_users = len(positives)
    if ranked.shape[0] != n_users:
        raise ValueError(f"{ranked.shape[0]} rankings for {n_users} users")
    scored = np.ones(n_users, dtype=bool) if scored is None else np.asarray(scored, dtype=bool)
    kmax = max(ks)
    discounts = 1.0 / np.log2(np.arange(2, kmax + 2))
    values: dict[str, list[float]] = {f"{m}@{k}": [] for k in ks for m in RANKING_KEYS}
    counted: list[int] = []
    for u, (row, pos, ok) in enumerate(zip(ranked, positives, scored, strict=True)):
        pos = np.unique(np.asarray(pos))
        if pos.size == 0:
            continue
        counted.append(u)
        hits = np.isin(row[:kmax], pos) if ok else np.zeros(kmax, dtype=bool)
        for k in ks:
            h = hits[:k]
            n_hits = int(h.sum())
            ideal = discounts[: min(pos.size, k)].sum()
            first = np.flatnonzero(h)
            values[f"ndcg@{k}"].append(float((discounts[:k][h]).sum() / ideal))
            values[f"hit@{k}"].append(float(n_hits > 0))
            values[f"recall@{k}"].append(n_hits / pos.size)
            values[f"mrr@{k}"].append(1.0 / (first[0] + 1) if first.size else 0.0)
    out: dict = {key: (float(np.mean(v)) if counted else 0.0) for key, v in values.items()}
    out["ranked_users"] = len(counted)
    if per_user:
        out["per_user"] = {key: np.asarray(v) for key, v in values.items()}
        out["users"] = np.asarray(counted, dtype=np.int64)
    return out


def rating_errors_by_user(pred: np.ndarray, true: np.ndarray, rows: np.ndarray, n_users: int):
    """Per user (``rows``: each rating's user position, 0..n_users-1): the number of ratings,
    the sum of absolute errors and the sum of squared errors, (n_users, 3). MAE and RMSE over
    any set of users follow from these sums (a paired bootstrap resamples users)."""
    err = np.asarray(pred, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return np.stack(
        [
            np.bincount(rows, minlength=n_users).astype(np.float64),
            np.bincount(rows, weights=np.abs(err), minlength=n_users),
            np.bincount(rows, weights=err**2, minlength=n_users),
        ],
        1,
    )


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
