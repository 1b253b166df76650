"""The method contract and the context every method trains in."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from pipeline.cdr.base import BaseModels, SourceView
from pipeline.cdr.data import CDRData
from pipeline.recs import metrics
from pipeline.recs.topk import top_k


@dataclass
class Factors:
    """score(u, i) = <user[u], item[i]>: the one shape every method's output takes."""

    user: torch.Tensor  # (n_users, d)
    item: torch.Tensor  # (n_items, d)

    def scores(self) -> torch.Tensor:
        return self.user @ self.item.T

    def pairs(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        rows_t, items_t = torch.as_tensor(rows), torch.as_tensor(items)
        return (self.user[rows_t] * self.item[items_t]).sum(-1).double().numpy()


@dataclass
class FitContext:
    """Everything a method may learn from: never the cold users' target rows."""

    data: CDRData
    base: BaseModels
    src: SourceView
    seed: int
    # Target statistics over the visible target rows (training overlap + side users).
    global_mean: float = 0.0
    item_mean: np.ndarray | None = None
    item_count: np.ndarray | None = None
    item_positive: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tr = self.data.tgt_train
        n_items = self.data.n_tgt_items
        self.global_mean = float(tr.rating.mean()) if len(tr) else 0.0
        self.item_count = np.bincount(tr.item, minlength=n_items).astype(np.float64)
        total = np.bincount(tr.item, weights=tr.rating, minlength=n_items)
        self.item_mean = np.where(
            self.item_count > 0, total / np.maximum(self.item_count, 1), self.global_mean
        )
        pos = tr.rating >= metrics.POSITIVE_RATING if self.data.explicit else np.ones(len(tr), bool)
        self.item_positive = np.bincount(tr.item[pos], minlength=n_items).astype(np.float64)

    # -- evaluation on held-out cold users (valid for selection, test for reporting) -------
    def rating_metrics(self, factors: Factors, which: str) -> dict[str, float]:
        held = self.data.heldout(which)
        users = self.data.cold_users(which)
        row = np.searchsorted(users, held.user)
        pred = np.clip(factors.pairs(row, held.item), 1.0, 5.0)
        return metrics.rating_errors(pred, held.rating)

    def ranking_metrics(self, factors: Factors, which: str, ks=metrics.KS) -> dict[str, float]:
        held = self.data.heldout(which)
        users = self.data.cold_users(which)
        positives = metrics.positives_by_user(
            held.user, held.item, held.rating, users, self.data.explicit
        )
        with torch.no_grad():
            ranked = top_k(factors.scores(), max(ks))[0].numpy()
        return metrics.ranking_metrics(ranked, positives, ks)


class Method:
    """A cold-start method. Subclasses set ``name`` and implement the factor methods."""

    name: ClassVar[str] = ""
    needs_ratings: ClassVar[bool] = False  # rating-only methods are left out on implicit data
    has_ratings: ClassVar[bool] = True  # False: ranking only (MAE/RMSE are null)
    config_name: ClassVar[str | None] = None  # params section, when not ``name`` (ablations)

    def __init__(self, config: Any = None):
        self.config = config
        self.info: dict[str, Any] = {}

    # Attributes saved besides the torch modules (e.g. a selected guidance scale).
    saved_attributes: ClassVar[tuple[str, ...]] = ()

    def build(self, ctx: FitContext) -> None:
        """Create the (untrained) networks for this data; ``fit`` and loading both call it."""

    def fit(self, ctx: FitContext) -> None:
        """Train (with any model selection on ``ctx``'s valid cold users only)."""
        self.build(ctx)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.nn.Module)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "attributes": {k: getattr(self, k) for k in self.saved_attributes},
            "info": self.info,
        }

    def load_state_dict(self, ctx: FitContext, state: dict[str, Any]) -> None:
        """Rebuild for ``ctx`` and restore trained weights (no training)."""
        self.build(ctx)
        for name, module in self.modules().items():
            module.load_state_dict(state["modules"][name])
            module.eval()
        for key, value in state["attributes"].items():
            setattr(self, key, value)
        self.info = state["info"]

    def rating_factors(self, ctx: FitContext, users: np.ndarray) -> Factors | None:
        return None

    def ranking_factors(self, ctx: FitContext, users: np.ndarray) -> Factors:
        factors = self.rating_factors(ctx, users)
        if factors is None:
            raise NotImplementedError(f"{self.name} produces no scores")
        return factors


class StepsSwitch:
    """For diffusion methods: ``sample_steps`` can be changed for a while (steps curves,
    scoring with other steps) without retraining."""

    sample_steps: int

    @contextlib.contextmanager
    def with_steps(self, steps: int):
        """Temporarily sample with another number of solver steps."""
        saved = self.sample_steps
        self.sample_steps = steps
        try:
            yield self
        finally:
            self.sample_steps = saved


def select_on_valid(
    candidates: list[Any], evaluate: Callable[[Any], float], mode: str = "min"
) -> tuple[Any, list[float]]:
    """The candidate with the best validation score (first one on ties)."""
    values = [evaluate(c) for c in candidates]
    best = int(np.argmin(values) if mode == "min" else np.argmax(values))
    return candidates[best], values


def significant_gain(
    err: torch.Tensor, ref: torch.Tensor, users: torch.Tensor, z: float = 2.0
) -> float:
    """Mean change of the per-rating loss going from errors ``ref`` to errors ``err``
    (negative: better); 0.0 unless the change is beyond ``z`` standard errors over users.

    The loss counts RMSE and MAE alike, as both are reported and a choice must not buy one with
    the other: e^2 / (2 mse_ref) + |e| / mae_ref, each term the first-order relative change of
    its metric. Standard errors are over users, whose ratings are not independent; on a
    validation set of about a hundred users, smaller changes are noise.
    """
    mse0, mae0 = float(ref.pow(2).mean()), float(ref.abs().mean())

    def loss(e: torch.Tensor) -> torch.Tensor:
        return e.pow(2) / (2 * mse0) + e.abs() / mae0

    diff = loss(err) - loss(ref)
    _, local = torch.unique(users, return_inverse=True)
    per_user = torch.zeros(int(local.max()) + 1, dtype=torch.float64).index_add_(0, local, diff)
    count = torch.bincount(local).double()
    mean = float(diff.mean())
    se = float((per_user - count * mean).pow(2).sum().sqrt()) / len(diff)
    return mean if mean < -z * se else 0.0
