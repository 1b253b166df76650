"""Golden values for every metric and for the one top-K on tiny hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.recs import metrics
from pipeline.recs.topk import exclude_, top_k


def test_mae_rmse():
    out = metrics.rating_errors([3.0, 5.0, 1.0, 4.0], [4.0, 5.0, 3.0, 4.0])
    assert out["mae"] == pytest.approx(0.75)  # (1 + 0 + 2 + 0) / 4
    assert out["rmse"] == pytest.approx(math.sqrt(5 / 4))


def test_top_k_breaks_ties_by_item_index():
    scores = torch.tensor([[0.5, 0.9, 0.9, 0.1, 0.9]])
    idx, vals = top_k(scores, 4)
    assert idx.tolist() == [[1, 2, 4, 0]]
    assert vals[0].tolist() == pytest.approx([0.9, 0.9, 0.9, 0.5])


def test_top_k_orders_ties_by_item_index_and_skips_excluded():
    inf = float("-inf")
    scores = torch.tensor(
        [
            [1.0, 3.0, 3.0, 2.0, 3.0, 0.0],  # tie inside the top 2 and across the cut
            [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],  # every item tied
            [inf, 2.0, inf, inf, inf, inf],  # one item left
        ]
    )
    idx, vals = top_k(scores, 2)
    assert idx.tolist() == [[1, 2], [0, 1], [1, 0]]  # excluded items come last, by index
    assert vals[2].tolist() == [2.0, inf]
    idx, _ = top_k(scores, 4)
    assert idx[0].tolist() == [1, 2, 4, 3]
    idx, _ = top_k(scores, 10)  # K beyond the catalogue
    assert idx.shape == (3, 6) and idx[1].tolist() == [0, 1, 2, 3, 4, 5]


def test_nan_scores_rank_last_and_exclusions_follow_the_csr():
    scores = torch.tensor([[float("nan"), 1.0, 2.0], [3.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    assert top_k(scores, 3)[0].tolist() == [[2, 1, 0], [0, 1, 2], [0, 1, 2]]
    # CSR slice of a larger CSR (indptr need not start at 0): row 0 drops item 0, row 2 item 1.
    items = np.array([9, 9, 0, 1])
    exclude_(scores, np.array([2, 3, 3, 4]), items)
    assert top_k(scores, 3)[0].tolist() == [[2, 1, 0], [0, 1, 2], [0, 2, 1]]
    assert scores[1].tolist() == [3.0, 2.0, 1.0] and scores[0, 0] == float("-inf")


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


def test_per_user_values_average_to_the_metrics():
    from pipeline.recs.metrics import ranking_metrics, rating_errors, rating_errors_by_user

    ranked = np.array([[0, 1, 2], [2, 1, 0], [1, 0, 2]])
    positives = [np.array([1]), np.array([]), np.array([0, 2])]
    out = ranking_metrics(ranked, positives, ks=(2,), per_user=True)
    assert out["users"].tolist() == [0, 2]  # user 1 has no positive: not counted
    # user 0: hit at rank 2 -> ndcg 1/log2(3); user 2: hit at rank 2 of 2 positives -> idcg 1+1/log2(3)
    np.testing.assert_allclose(
        out["per_user"]["ndcg@2"], [1 / np.log2(3), (1 / np.log2(3)) / (1 + 1 / np.log2(3))]
    )
    assert out["ndcg@2"] == pytest.approx(out["per_user"]["ndcg@2"].mean())
    pred, true = np.array([4.0, 3.0, 5.0]), np.array([5.0, 3.0, 3.0])
    sums = rating_errors_by_user(pred, true, np.array([0, 0, 1]), 3)
    np.testing.assert_allclose(sums, [[2, 1, 1], [1, 2, 4], [0, 0, 0]])
    total = rating_errors(pred, true)
    assert total["mae"] == pytest.approx(sums[:, 1].sum() / sums[:, 0].sum())
