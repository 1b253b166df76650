"""Cross-domain item models: the floors a cold-start generator must beat on ranking.

Both read a cold user's source items directly (no user vector is learned), so a user new since
training is scored from their source history as it is, and both are fitted on the training
overlap users only. See :mod:`pipeline.cdr.item_space` for the algebra and memory.

- ``cd_ease``: the ridge map from source items to target items, ``W = (Xs'Xs + lam I)^-1 Xs'Xt``
  (the cross-domain form of EASE, Steck, WWW 2019), in rank-``k`` SVD form; ``lam`` is picked
  on the validation cold users from a grid relative to the data's scale. The rows of ``Xs``
  are the binary source rows scaled to unit length (:func:`~pipeline.cdr.item_space.map_rows`),
  so that heavy users do not dominate the fit.
- ``cd_itemknn``: item-to-item cosine neighbours from source to target items (Linden et al.,
  IEEE Internet Computing 2003), the ``n`` best per source item; a user's score for a target
  item is the sum of its similarities to the user's source items.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.cdr import item_space
from pipeline.cdr.configs import CDEaseConfig, CDItemKNNConfig
from pipeline.cdr.methods.base import Factors, FitContext, Method


def overlap_rows(ctx: FitContext):
    """(binary source rows, binary visible target rows) of the training overlap users."""
    users = ctx.data.users("train_overlap")
    xs = item_space.source_rows(ctx.src, users, ctx.data.n_src_items)
    return xs, item_space.target_rows(ctx.data, users)


def select_penalty(
    ctx: FitContext, basis: item_space.RidgeBasis, valid_rows
) -> tuple[float, dict[float, float]]:
    """The ridge penalty of the grid whose map ranks the validation cold users best (their
    source rows ``valid_rows``, as the basis was fitted on; the first of equal values), and
    every penalty's validation NDCG@10. ``cd_ease`` and ``ours``' item map select alike."""
    tried = {}
    for lam in item_space.penalty_grid(basis.mean_diagonal):
        src_map, items = basis.factors(lam)
        user = torch.as_tensor(valid_rows @ src_map.numpy(), dtype=torch.float32)
        tried[lam] = ctx.ndcg(Factors(user, items))
    return max(tried, key=tried.get), tried


class CDEase(Method):
    name = "cd_ease"
    has_ratings = False
    saved_attributes = ("vocab", "src_map", "item_vectors", "penalty")

    def __init__(self, config: CDEaseConfig | None = None):
        super().__init__(config or CDEaseConfig())

    def fit(self, ctx: FitContext) -> None:
        xs, xt = overlap_rows(ctx)
        self.vocab = item_space.vocabulary(xs)
        basis = item_space.RidgeBasis.fit(
            item_space.map_rows(xs, self.vocab), xt, self.config.rank, ctx.seed
        )
        valid = item_space.source_rows(ctx.src, ctx.data.cold_users("valid"), ctx.data.n_src_items)
        self.penalty, tried = select_penalty(ctx, basis, item_space.map_rows(valid, self.vocab))
        self.src_map, self.item_vectors = basis.factors(self.penalty)
        self.info = {
            "rank": int(basis.singular.size),
            "penalty": self.penalty,
            "penalty_per_mean_diagonal": self.penalty / basis.mean_diagonal,
            "valid_ndcg@10": tried[self.penalty],
        }

    def ranking_factors(self, ctx: FitContext, users: np.ndarray) -> Factors:
        xs = item_space.source_rows(ctx.src, users, ctx.data.n_src_items)
        user = item_space.map_rows(xs, self.vocab) @ self.src_map.numpy()
        return Factors(torch.as_tensor(user, dtype=torch.float32), self.item_vectors)


class CDItemKNN(Method):
    name = "cd_itemknn"
    has_ratings = False
    saved_attributes = ("neighbours",)

    def __init__(self, config: CDItemKNNConfig | None = None):
        super().__init__(config or CDItemKNNConfig())

    def fit(self, ctx: FitContext) -> None:
        xs, xt = overlap_rows(ctx)
        sim = item_space.cosine_neighbours(xs, xt, self.config.neighbours)
        # Stored transposed: (target items, source items), the item side of the product.
        self.neighbours = item_space.to_torch(sim.T)
        self.info = {
            "neighbours": self.config.neighbours,
            "weights": int(sim.nnz),
            "valid_ndcg@10": ctx.ndcg(self.ranking_factors(ctx, ctx.data.cold_users("valid"))),
        }

    def ranking_factors(self, ctx: FitContext, users: np.ndarray) -> Factors:
        xs = item_space.source_rows(ctx.src, users, ctx.data.n_src_items)
        return Factors(item_space.to_torch(xs), self.neighbours)
