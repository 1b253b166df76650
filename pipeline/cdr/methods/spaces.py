"""Target-domain vector spaces a cross-domain mapper can generate into.

A *space* says what a user vector is in one base model, how to score items with it, and how
to measure it: the biased-MF rating space ``[p_u, b_u]`` (explicit data; selection by RMSE)
or the BPR ranking space ``[p_u]`` (selection by NDCG@10). Mappers (EMCDR, PTUPCDR, DiffCDR,
ours) are written once against this interface and run on explicit and implicit data alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from pipeline.cdr.methods.base import Factors, FitContext


@dataclass
class Space:
    kind: str  # "rating" or "ranking"
    source: torch.Tensor  # (n_users, d_src) source-domain vectors of every user
    target: torch.Tensor  # (n_users, d) target-domain vectors (meaningful for visible users)
    item: torch.Tensor  # (n_items, d) target item vectors
    item_offset: torch.Tensor  # (n_items,) item bias (+ global mean for ratings)

    @property
    def dim(self) -> int:
        return self.target.shape[1]

    @property
    def select_metric(self) -> str:
        return "rmse" if self.kind == "rating" else "ndcg@10"

    @property
    def select_mode(self) -> str:
        return "min" if self.kind == "rating" else "max"

    def split(self, vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(user vector, user bias) parts of a generated vector."""
        if self.kind == "rating":
            return vec[:, :-1], vec[:, -1]
        return vec, torch.zeros(vec.shape[0])

    def factors(self, vec: torch.Tensor) -> Factors:
        p, b = self.split(vec)
        n = vec.shape[0]
        user = torch.cat([p, b[:, None], torch.ones(n, 1)], 1)
        item = torch.cat([self.item, torch.ones(len(self.item), 1), self.item_offset[:, None]], 1)
        return Factors(user.float(), item.float())

    def predict(self, vec: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Score of each row's vector on its item (ratings in the rating space)."""
        p, b = self.split(vec)
        return self.item_offset[items] + b + (p * self.item[items]).sum(-1)

    def task_loss(
        self,
        vec: torch.Tensor,
        items: torch.Tensor,
        ratings: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """MSE on ratings, or BPR against uniformly sampled negatives."""
        if self.kind == "rating":
            return F.mse_loss(self.predict(vec, items), ratings)
        neg = torch.randint(0, len(self.item), (len(items),), generator=generator)
        return -F.logsigmoid(self.predict(vec, items) - self.predict(vec, neg)).mean()

    def score(self, ctx: FitContext, vec: torch.Tensor, which: str) -> float:
        """The selection metric of generated vectors for the ``which`` cold users."""
        f = self.factors(vec)
        if self.kind == "rating":
            return ctx.rating_metrics(f, which)["rmse"]
        return ctx.ranking_metrics(f, which, ks=(10,))["ndcg@10"]


def rating_space(ctx: FitContext) -> Space:
    src, tgt = ctx.base.src_mf, ctx.base.tgt_mf
    with torch.no_grad():
        return Space(
            "rating",
            source=torch.cat([src.user.weight, src.user_bias.weight], 1).clone(),
            target=torch.cat([tgt.user.weight, tgt.user_bias.weight], 1).clone(),
            item=tgt.item.weight.clone(),
            item_offset=(tgt.global_mean + tgt.item_bias.weight[:, 0]).clone(),
        )


def ranking_space(ctx: FitContext) -> Space:
    src, tgt = ctx.base.src_bpr, ctx.base.tgt_bpr
    with torch.no_grad():
        return Space(
            "ranking",
            source=src.user.weight.clone(),
            target=tgt.user.weight.clone(),
            item=tgt.item.weight.clone(),
            item_offset=tgt.item_bias.weight[:, 0].clone(),
        )


def main_space(ctx: FitContext) -> Space:
    """The rating space on explicit data, the ranking space on implicit data."""
    return rating_space(ctx) if ctx.data.explicit else ranking_space(ctx)


def target_rows(
    ctx: FitContext, users: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row in ``users``, item, rating) of the visible target interactions of ``users``."""
    tr = ctx.data.tgt_train
    keep = np.isin(tr.user, users)
    rows = np.searchsorted(users, tr.user[keep])
    return (
        torch.as_tensor(tr.user[keep]),
        torch.as_tensor(rows),
        torch.as_tensor(tr.item[keep]),
        torch.as_tensor(tr.rating[keep]),
    )
