"""Target-only and statistical floors: what a cold-start method must beat to be worth it."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.cdr.methods import habits
from pipeline.cdr.methods.base import Factors, FitContext, Method
from pipeline.recs.metrics import POSITIVE_RATING


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


class GlobalMean(Method):
    """Every rating is the target domain's mean (its ranking is item order: uninformative)."""

    name = "global_mean"
    needs_ratings = True

    def rating_factors(self, ctx: FitContext, users: np.ndarray) -> Factors:
        item = np.full((ctx.data.n_tgt_items, 1), ctx.global_mean)
        return Factors(torch.ones(len(users), 1), _t(item))


class Popularity(Method):
    """Rank target items by how many visible users liked them (rating >= 4; any if implicit)."""

    name = "popularity"
    has_ratings = False

    def ranking_factors(self, ctx: FitContext, users: np.ndarray) -> Factors:
        # Ties between equally liked items go to the more often rated one.
        score = ctx.item_positive + ctx.item_count / (ctx.item_count.max() + 1.0)
        return Factors(torch.ones(len(users), 1), _t(score[:, None]))


class ItemMean(Method):
    """The item's mean target rating (global mean for items nobody visible rated)."""

    name = "item_mean"
    needs_ratings = True

    def rating_factors(self, ctx: FitContext, users: np.ndarray) -> Factors:
        return Factors(torch.ones(len(users), 1), _t(ctx.item_mean[:, None]))


class ItemMeanUserBias(Method):
    """Item mean + the user's source-domain rating bias shrunk by n / (n + 5).

    The bias is the mean of the user's source ratings minus those items' source means. A strong,
    honest floor: it transfers a user's generosity, nothing about taste.
    """

    name = "item_mean_user_bias"
    needs_ratings = True

    def rating_factors(self, ctx: FitContext, users: np.ndarray) -> Factors:
        user = np.stack([ctx.src.bias[users], np.ones(len(users))], 1)
        item = np.stack([np.ones(ctx.data.n_tgt_items), ctx.item_mean], 1)
        return Factors(_t(user), _t(item))


def source_habits(ctx: FitContext) -> np.ndarray:
    """Every user's rating habits (:mod:`habits`) on the data's scale: its top rating, and
    anything below a positive rating as low."""
    return habits.habits(ctx.src, ctx.data.rating_range[1], POSITIVE_RATING - 1)


class HabitBias(Method):
    """Item mean + the user's target bias read from their source rating *habits*
    (:mod:`habits`): share of top ratings, of low ratings, spread, history length and the
    shrunk source bias, mapped linearly, fitted by least squares on the training overlap users'
    target ratings. ``item_mean_user_bias`` is its special case with weights (1, 0, ..., 0)."""

    name = "habit_bias"
    needs_ratings = True
    saved_attributes = ("readout",)

    def fit(self, ctx: FitContext) -> None:
        x = source_habits(ctx)
        self.readout = habits.fit_readout(x, ctx.data.tgt_train, ctx.data.users("train_overlap"))
        self.info = {"readout": dict(zip((*habits.HABITS, "intercept"), self.readout, strict=True))}

    def rating_factors(self, ctx: FitContext, users: np.ndarray) -> Factors:
        bias = habits.apply_readout(source_habits(ctx)[users], self.readout)
        user = np.stack([bias, np.ones(len(users))], 1)
        item = np.stack([np.ones(ctx.data.n_tgt_items), ctx.item_mean], 1)
        return Factors(_t(user), _t(item))


class TargetMF(Method):
    """The target-domain MF alone: a cold user has no vector, so mu + b_i (ranked by b_i)."""

    name = "tgt_mf"
    needs_ratings = True

    def rating_factors(self, ctx: FitContext, users: np.ndarray) -> Factors:
        mf = ctx.base.tgt_mf
        item = mf.global_mean + mf.item_bias.weight.detach()[:, 0]
        return Factors(torch.ones(len(users), 1), item[:, None].float())
