"""Golden values for every metric on tiny hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.cdr import metrics


def test_mae_rmse():
    out = metrics.rating_errors([3.0, 5.0, 1.0, 4.0], [4.0, 5.0, 3.0, 4.0])
    assert out["mae"] == pytest.approx(0.75)  # (1 + 0 + 2 + 0) / 4
    assert out["rmse"] == pytest.approx(math.sqrt(5 / 4))


def test_top_k_breaks_ties_by_item_index():
    scores = np.array([[0.5, 0.9, 0.9, 0.1, 0.9]])
    assert metrics.top_k(scores, 4).tolist() == [[1, 2, 4, 0]]


def test_ranking_metrics_hand_computed():
    # User A: ranking [3, 1, 4, 0, 2], positives {1, 2}. User B: ranking [0, 1, 2, 3, 4], positive {0}.
    ranked = np.array([[3, 1, 4, 0, 2], [0, 1, 2, 3, 4]])
    positives = [np.array([1, 2]), np.array([0])]
    out = metrics.ranking_metrics(ranked, positives, ks=(2, 5))
    d = [1 / math.log2(r + 1) for r in range(1, 6)]
    ndcg_a_2 = d[1] / (d[0] + d[1])  # hit at rank 2, two positives
    ndcg_a_5 = (d[1] + d[4]) / (d[0] + d[1])
    assert out["ndcg@2"] == pytest.approx((ndcg_a_2 + 1.0) / 2)
    assert out["ndcg@5"] == pytest.approx((ndcg_a_5 + 1.0) / 2)
    assert out["hit@2"] == pytest.approx(1.0)
    assert out["recall@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["recall@5"] == pytest.approx(1.0)
    assert out["mrr@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert out["ranked_users"] == 2


def test_users_without_positives_are_not_averaged_but_unscored_users_count_as_zero():
    ranked = np.array([[0, 1], [0, 1], [1, 0]])
    positives = [np.array([0]), np.array([], dtype=int), np.array([0])]
    out = metrics.ranking_metrics(ranked, positives, ks=(1,), scored=np.array([True, True, False]))
    # Users 0 and 2 have positives; user 2 got no ranking: zero, still in the denominator.
    assert out["ranked_users"] == 2
    assert out["hit@1"] == pytest.approx(0.5)
    assert out["ndcg@1"] == pytest.approx(0.5)


def test_positives_are_ratings_of_four_and_above():
    users = np.array([5, 5, 7, 7, 7])
    items = np.array([0, 1, 0, 2, 3])
    ratings = np.array([4.0, 3.5, 5.0, 1.0, 4.5], dtype=np.float32)
    pos = metrics.positives_by_user(users, items, ratings, np.array([5, 7, 9]), explicit=True)
    assert [p.tolist() for p in pos] == [[0], [0, 3], []]
    pos = metrics.positives_by_user(users, items, ratings, np.array([5]), explicit=False)
    assert pos[0].tolist() == [0, 1]
