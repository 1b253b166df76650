"""Cross-domain item models: the closed forms by hand on small matrices, the low-rank and
sparse forms against their dense equivalents, and scoring straight from a source history."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from pipeline.cdr import harness, item_space
from pipeline.cdr.configs import CDEaseConfig, CDItemKNNConfig, MFConfig
from pipeline.cdr.methods.base import Factors, product
from tests.conftest import TINY_MF


def random_binary(rows: int, cols: int, p: float, seed: int) -> sp.csr_matrix:
    return sp.csr_matrix((np.random.default_rng(seed).random((rows, cols)) < p).astype(np.float32))


def test_ridge_basis_is_the_exact_ridge_map_at_full_rank():
    xs, xt = random_binary(60, 25, 0.2, 0), random_binary(60, 40, 0.2, 1)
    a, b = xs.toarray().astype(np.float64), xt.toarray().astype(np.float64)
    basis = item_space.RidgeBasis.fit(xs, xt, rank=100, seed=0)
    for lam in (0.5, 3.0, 30.0):
        src_map, items = basis.factors(lam)
        w = np.linalg.solve(a.T @ a + lam * np.eye(25), a.T @ b)
        np.testing.assert_allclose((a @ src_map.numpy()) @ items.numpy().T, a @ w, atol=1e-5)


def test_sparse_svd_matches_the_dense_one(monkeypatch):
    x = random_binary(400, 300, 0.05, 2)
    u, s, v = item_space.truncated_svd(x, 20, seed=0)
    monkeypatch.setattr(item_space, "_DENSE_SVD_ENTRIES", 0)  # force the sparse path
    u2, s2, v2 = item_space.truncated_svd(x, 20, seed=0)
    np.testing.assert_allclose(s2, s, rtol=1e-8)
    # Same subspace (signs may differ).
    overlap = np.linalg.svd(v.T @ v2, compute_uv=False)
    assert overlap.min() > 1 - 1e-6
    again = item_space.truncated_svd(x, 20, seed=0)
    np.testing.assert_array_equal(again[1], s2)  # deterministic for a seed


def test_penalty_grid_is_relative_to_the_data_scale():
    grid = item_space.penalty_grid(7.0)
    assert grid == sorted(grid) and grid[0] == pytest.approx(2.1) and len(grid) == 9


def test_cosine_neighbours_keep_the_n_most_similar_per_source_item():
    xs, xt = random_binary(80, 30, 0.15, 3), random_binary(80, 50, 0.15, 4)
    a, b = xs.toarray(), xt.toarray()
    dense = (a.T @ b) / np.sqrt(np.outer(a.sum(0), b.sum(0)) + 1e-12)
    sim = item_space.cosine_neighbours(xs, xt, n=5).toarray()
    assert ((sim > 0).sum(1) <= 5).all()
    for i in range(30):
        kept = np.flatnonzero(sim[i])
        # the kept ones are the top of the row (ties by target index), with their values
        order = np.lexsort((np.arange(50), -dense[i]))
        top = [j for j in order[:5] if dense[i, j] > 0]
        assert sorted(kept) == sorted(top)
        np.testing.assert_allclose(sim[i, kept], dense[i, kept], rtol=1e-6)


def test_sparse_and_dense_factors_score_alike():
    rng = np.random.default_rng(5)
    user = (rng.random((6, 9)) < 0.4).astype(np.float32)
    item = rng.normal(size=(11, 9)).astype(np.float32) * (rng.random((11, 9)) < 0.5)
    want = user @ item.T
    for u in (torch.as_tensor(user), torch.as_tensor(user).to_sparse()):
        for i in (torch.as_tensor(item), torch.as_tensor(item).to_sparse()):
            np.testing.assert_allclose(product(u, i).numpy(), want, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(Factors(u, i).scores().numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def fitted(tiny_data, tiny_base):
    configs = {"cd_ease": CDEaseConfig(), "cd_itemknn": CDItemKNNConfig(neighbours=20)}
    return harness.fit(
        tiny_data,
        ["popularity", "cd_ease", "cd_itemknn"],
        configs,
        MFConfig(**TINY_MF),
        0,
        base=tiny_base,
    )


def test_item_models_rank_every_test_user_and_carry_the_source_signal(fitted):
    test = harness.evaluate(fitted, "test")
    ctx = fitted.ctx
    valid = ctx.data.cold_users("valid")
    shuffle = torch.as_tensor(np.random.default_rng(0).permutation(ctx.data.n_tgt_items))
    for name in ("cd_ease", "cd_itemknn"):
        assert test[name]["ranked_users"] == test["popularity"]["ranked_users"] > 0
        assert test[name]["mae"] is None  # ranking only
        # On the embedded sample (tastes shared across domains) the item links carry signal:
        # the same scores with the target items shuffled rank worse.
        f = fitted.methods[name].ranking_factors(ctx, valid)
        item = f.item.to_dense()[shuffle]
        assert ctx.ndcg(f) > ctx.ndcg(Factors(f.user, item)) + 0.05
    info = fitted.methods["cd_ease"].info
    assert info["penalty_per_mean_diagonal"] in (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3)
    assert fitted.methods["cd_itemknn"].neighbours.shape == (
        fitted.ctx.data.n_tgt_items,
        fitted.ctx.data.n_src_items,
    )


def test_item_models_score_from_the_source_history_alone(fitted):
    """A user's scores are a function of their source items: two users with the same source
    history get the same scores, whoever they are (so new users need no fold-in fitting)."""
    ctx = fitted.ctx
    for name in ("cd_ease", "cd_itemknn"):
        method = fitted.methods[name]
        users = ctx.data.cold_users("test")[:5]
        a = method.ranking_factors(ctx, users).scores()
        b = method.ranking_factors(ctx, users[::-1]).scores().flip(0)
        torch.testing.assert_close(a, b)


def test_save_and_load_give_the_same_scores(fitted, tmp_path, tiny_data):
    from pipeline.cdr import store
    from pipeline.cdr.configs import TrainParams

    store.save(fitted, tmp_path / "models", {"seed": 0})
    train = TrainParams(
        methods=["popularity", "cd_ease", "cd_itemknn"],
        base=MFConfig(**TINY_MF),
        cd_itemknn=CDItemKNNConfig(neighbours=20),
    )
    loaded = store.load(tmp_path / "models", tiny_data, train)
    users = tiny_data.cold_users("test")
    for name in ("cd_ease", "cd_itemknn"):
        a = fitted.methods[name].ranking_factors(fitted.ctx, users).scores()
        b = loaded.methods[name].ranking_factors(loaded.ctx, users).scores()
        torch.testing.assert_close(a, b)


def test_cd_ease_is_the_ridge_map_of_unit_length_source_rows(fitted):
    """Each training user's source row enters the fit scaled to unit length, so a user with a
    long history weighs as much as one with a short one; at full rank the low-rank form is the
    exact ridge solution of those rows."""
    from pipeline.cdr.methods.item_models import overlap_rows

    ctx, method = fitted.ctx, fitted.methods["cd_ease"]
    xs, xt = overlap_rows(ctx)
    a = item_space.restrict(xs, method.vocab).toarray().astype(np.float64)
    assert len(method.vocab) <= CDEaseConfig().rank  # full rank: the closed form is exact
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    w = np.linalg.solve(a.T @ a + method.penalty * np.eye(a.shape[1]), a.T @ xt.toarray())
    users = ctx.data.cold_users("test")[:8]
    x = item_space.restrict(
        item_space.source_rows(ctx.src, users, ctx.data.n_src_items), method.vocab
    ).toarray()
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    got = method.ranking_factors(ctx, users).scores().numpy()
    np.testing.assert_allclose(got, x @ w, atol=1e-4)


def test_centred_source_rows_hold_each_rating_minus_the_users_mean(fitted):
    """The same pattern as the binary rows; each value is the rating less the mean of every
    source rating of that user (the items dropped by ``liked`` still count in the mean)."""
    ctx = fitted.ctx
    users = ctx.data.cold_users("test")[:8]
    n = ctx.data.n_src_items
    binary = item_space.source_rows(ctx.src, users, n)
    centred = item_space.source_rows(ctx.src, users, n, centred=True)
    for row, u in enumerate(users):
        lo, hi = ctx.src.indptr[u], ctx.src.indptr[u + 1]
        expect = np.zeros(n)
        expect[ctx.src.items[lo:hi]] = ctx.src.ratings[lo:hi] - ctx.src.ratings[lo:hi].mean()
        np.testing.assert_allclose(centred[row].toarray().ravel(), expect, atol=1e-5)
        assert set(centred[row].indices) == set(binary[row].indices)
    liked = item_space.source_rows(ctx.src, users, n, liked=4.0, centred=True)
    assert liked.nnz == item_space.source_rows(ctx.src, users, n, liked=4.0).nnz
    assert set(liked.data) <= set(centred.data)
