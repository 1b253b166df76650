"""Rating habits carried from the source domain: hand-computed features, and a readout that
recovers a known relation without leaking a user's own rating into the item mean."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cdr.base import SourceView
from pipeline.cdr.data import Interactions
from pipeline.cdr.methods import habits


def view(per_user: list[list[float]], bias: list[float]) -> SourceView:
    ratings = np.concatenate([np.asarray(r, dtype=np.float64) for r in per_user])
    count = np.array([len(r) for r in per_user], dtype=np.float64)
    indptr = np.concatenate([[0], np.cumsum(count.astype(np.int64))])
    mean = np.array([np.mean(r) if r else np.nan for r in per_user])
    return SourceView(
        count > 0, count, mean, np.asarray(bias), indptr, np.arange(len(ratings)), ratings
    )


def test_habits_by_hand():
    x = habits.habits(view([[5, 5, 3], [4, 2], []], [0.3, -0.2, 0.0]), top=5, low=3)
    assert x.shape == (3, len(habits.HABITS))
    np.testing.assert_allclose(x[0], [0.3, 2 / 3, 1 / 3, np.std([5, 5, 3]), np.log(4)])
    np.testing.assert_allclose(x[1], [-0.2, 0.0, 0.5, 1.0, np.log(3)])
    np.testing.assert_allclose(x[2], 0.0)  # no source history: no habits


def test_floor_weights_give_the_floor_bias():
    x = habits.habits(view([[5, 5, 3], [4, 2]], [0.3, -0.2]), top=5, low=3)
    np.testing.assert_allclose(habits.apply_readout(x, habits.floor_weights()), [0.3, -0.2])


def test_readout_recovers_a_known_relation():
    rng = np.random.default_rng(0)
    n_users, n_items = 400, 60
    x = np.column_stack(
        [
            rng.normal(0, 0.3, n_users),  # source bias
            rng.uniform(0, 1, n_users),  # share of fives
            rng.uniform(0, 0.5, n_users),  # share of threes or lower
            rng.uniform(0.5, 1.5, n_users),  # spread
            np.log1p(rng.integers(1, 50, n_users)),  # history length
        ]
    )
    truth = np.array([0.8, 0.6, -0.4, 0.0, 0.0])
    item_effect = rng.normal(3.8, 0.4, n_items)
    user, item = np.meshgrid(np.arange(n_users), np.arange(n_items), indexing="ij")
    user, item = user.ravel(), item.ravel()
    rating = item_effect[item] + x[user] @ truth
    train = Interactions(user, item, rating)
    weights = habits.fit_readout(x, train, np.arange(n_users))
    assert weights[:-1] == pytest.approx(list(truth), abs=0.02)


def test_readout_is_fitted_on_the_given_users_only():
    """Other users' habits do not enter the fit (their ratings only count in item means)."""
    rng = np.random.default_rng(1)
    n_users, n_items = 50, 20
    x = rng.normal(size=(n_users, len(habits.HABITS)))
    user, item = np.meshgrid(np.arange(n_users), np.arange(n_items), indexing="ij")
    user, item = user.ravel(), item.ravel()
    rating = rng.integers(1, 6, len(user)).astype(np.float64)
    fit_on = np.arange(25)
    a = habits.fit_readout(x, Interactions(user, item, rating), fit_on)
    x_changed = x.copy()
    x_changed[25:] = rng.normal(size=(25, len(habits.HABITS)))
    b = habits.fit_readout(x_changed, Interactions(user, item, rating), fit_on)
    assert a == b


def test_readout_against_shrunk_item_means():
    """With a prior strength k the bias is measured against each item's mean over the other
    raters shrunk towards the global mean as if by k more ratings (by hand: no habits, so the
    readout is the intercept, the mean residual)."""
    # Item 0: rated 5 by users 0-1; item 1: rated 3 by users 2-39. Global mean 3.1.
    user = np.arange(40)
    item = np.where(user < 2, 0, 1)
    rating = np.where(user < 2, 5.0, 3.0)
    train = Interactions(user, item, rating)
    x = np.zeros((40, len(habits.HABITS)))
    # Raw: every rating equals its item's other raters' mean.
    assert habits.fit_readout(x, train, user)[-1] == pytest.approx(0.0, abs=1e-9)
    mu, k = 3.1, 1.0
    resid_0 = 5.0 - (5.0 + k * mu) / (1 + k)  # one other rater
    resid_1 = 3.0 - (37 * 3.0 + k * mu) / (37 + k)
    expected = (2 * resid_0 + 38 * resid_1) / 40
    assert habits.fit_readout(x, train, user, prior_strength=k)[-1] == pytest.approx(
        expected, abs=1e-5
    )
