"""Rating habits carried from the source domain: hand-computed features, and a readout that
recovers a known relation without leaking a user's own rating into the item mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.cdr.base import SourceView
from pipeline.cdr.data import Interactions
from pipeline.cdr.methods import habits
from pipeline.cdr.methods.base import significant_gain


def view(per_user: list[list[float]], bias: list[float]) -> SourceView:
    ratings = np.concatenate([np.asarray(r, dtype=np.float64) for r in per_user])
    count = np.array([len(r) for r in per_user], dtype=np.float64)
    indptr = np.concatenate([[0], np.cumsum(count.astype(np.int64))])
    mean = np.array([np.mean(r) if r else np.nan for r in per_user])
    return SourceView(
        count > 0, count, mean, np.asarray(bias), indptr, np.arange(len(ratings)), ratings
    )


def test_habits_by_hand():
    x = habits.habits(view([[5, 5, 3], [4, 2], []], [0.3, -0.2, 0.0]))
    assert x.shape == (3, len(habits.HABITS))
    np.testing.assert_allclose(x[0], [0.3, 2 / 3, 1 / 3, np.std([5, 5, 3]), np.log(4)])
    np.testing.assert_allclose(x[1], [-0.2, 0.0, 0.5, 1.0, np.log(3)])
    np.testing.assert_allclose(x[2], 0.0)  # no source history: no habits


def test_floor_weights_give_the_floor_bias():
    x = habits.habits(view([[5, 5, 3], [4, 2]], [0.3, -0.2]))
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


def test_a_gain_counts_only_beyond_noise():
    rng = np.random.default_rng(2)
    users = torch.as_tensor(np.repeat(np.arange(100), 20))
    ref = torch.as_tensor(rng.normal(0, 1.0, len(users)))
    clearly_better = ref * 0.8
    assert significant_gain(clearly_better, ref, users) < 0
    noise = ref + torch.as_tensor(rng.normal(0, 0.05, len(users)))
    assert significant_gain(noise, ref, users) == 0.0
    assert significant_gain(ref * 1.2, ref, users) == 0.0  # worse is never a gain
