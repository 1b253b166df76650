"""A user's rating habits, carried from the source domain to the target one.

``item_mean_user_bias`` carries one number: how far above the source item means a user rates.
The shape of the user's source ratings says more: someone who gives only fives keeps giving
fives, someone who uses the whole scale will use it again. ``HabitReadout`` is a linear map
from those habits to the user's target rating bias, fitted by least squares on the target
ratings of the training overlap users (never a cold user's), each rating compared with its
item's mean over the *other* visible raters so that a user's own rating does not leak into the
item mean it is compared with.

With weights (1, 0, ..., 0) the readout is exactly the floor's shrunk source bias.
"""

from __future__ import annotations

import numpy as np

from pipeline.cdr.base import SourceView
from pipeline.cdr.data import Interactions

HABITS = ("source_bias", "top_share", "low_share", "spread", "log_history")


def habits(src: SourceView, top: float, low: float) -> np.ndarray:
    """(n_users, len(HABITS)) per user; zeros for users without a source history. ``top``:
    the highest rating of the scale; ``low``: ratings at or below it count as low."""
    n_users = len(src.indptr) - 1
    user = np.repeat(np.arange(n_users), np.diff(src.indptr))
    n = np.maximum(src.count, 1)
    ratings = src.ratings.astype(np.float64)

    def per_user(values: np.ndarray) -> np.ndarray:
        return np.bincount(user, weights=values, minlength=n_users) / n

    mean = per_user(ratings)
    spread = np.sqrt(np.maximum(per_user(ratings**2) - mean**2, 0.0))
    return np.stack(
        [
            src.bias,
            per_user((ratings >= top).astype(np.float64)),
            per_user((ratings <= low).astype(np.float64)),
            spread,
            np.log1p(src.count),
        ],
        1,
    )


def fit_readout(
    x: np.ndarray,
    train: Interactions,
    users: np.ndarray,
    ridge: float = 1e-3,
    prior_strength: float = 0.0,
) -> list[float]:
    """Weights (len(HABITS) + 1,), the last one an intercept, of the target rating bias of
    ``users`` on their habits ``x`` (rows: every user), over their visible target ratings.

    The bias is measured against the item's mean over the other raters, shrunk towards the
    global mean as if by ``prior_strength`` more ratings (0: the raw mean): the item offsets
    the readout will be added to."""
    keep = np.isin(train.user, users)
    a = np.concatenate([x[train.user[keep]], np.ones((keep.sum(), 1))], 1)
    y = train.rating[keep] - others_mean(train, keep, prior_strength)
    reg = ridge * len(y) * np.eye(a.shape[1])
    reg[-1, -1] = 0.0  # the intercept is not shrunk
    return [round(float(w), 6) for w in np.linalg.solve(a.T @ a + reg, a.T @ y)]


def others_mean(train: Interactions, keep: np.ndarray, prior_strength: float = 0.0) -> np.ndarray:
    """For each rating ``train[keep]``: its item's mean over the *other* visible raters, shrunk
    towards the global mean as if by ``prior_strength`` more ratings (leave-one-out: a user's
    own rating never leaks into the offset it is compared with)."""
    n_items = int(train.item.max()) + 1 if len(train) else 0
    count = np.bincount(train.item, minlength=n_items).astype(np.float64)
    total = np.bincount(train.item, weights=train.rating, minlength=n_items)
    item, rating = train.item[keep], train.rating[keep]
    fallback = float(train.rating.mean()) if len(train) else 0.0
    weight = count[item] - 1 + prior_strength
    return np.divide(
        total[item] - rating + prior_strength * fallback,
        weight,
        out=np.full(len(rating), fallback),
        where=weight > 0,
    )


def floor_weights() -> list[float]:
    """The readout that is exactly ``item_mean_user_bias``'s user bias."""
    return [1.0] + [0.0] * len(HABITS)


def apply_readout(x: np.ndarray, weights: list[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return x @ w[:-1] + w[-1]
