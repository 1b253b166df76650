"""The method contract and the context every method trains in."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from pipeline.cdr.base import BaseModels, SourceView
from pipeline.cdr.data import CDRData
from pipeline.recs import metrics
from pipeline.recs.topk import top_k

# Users ranked at once when evaluating: memory is EVAL_CHUNK x items scores, whatever the
# number of cold users.
EVAL_CHUNK = 1024


@dataclass
class Factors:
    """score(u, i) = <user[u], item[i]>: the one shape every method's output takes.

    Both may be dense or sparse (torch COO) tensors: item-item models score with a sparse
    user row (the source items) against a sparse item matrix (the neighbour weights).
    """

    user: torch.Tensor  # (n_users, d)
    item: torch.Tensor  # (n_items, d)

    def scores(self) -> torch.Tensor:
        return product(self.user, self.item)

    def chunks(self, size: int = EVAL_CHUNK) -> list[Factors]:
        """The same factors, ``size`` users at a time (one score block of size x items each)."""
        out = []
        for lo in range(0, self.user.shape[0], size):
            rows = torch.arange(lo, min(lo + size, self.user.shape[0]))
            user = self.user.index_select(0, rows) if self.user.is_sparse else self.user[rows]
            out.append(Factors(user, self.item))
        return out

    def pairs(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        rows_t, items_t = torch.as_tensor(rows), torch.as_tensor(items)
        return (self.user[rows_t] * self.item[items_t]).sum(-1).double().numpy()


def product(user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
    """Dense (n_users, n_items) scores ``user @ item.T`` for dense or sparse operands."""
    if item.is_sparse:
        # (item @ user') is sparse x sparse or sparse x dense; either way densified once.
        user_t = user.t() if user.is_sparse else user.T.contiguous()
        with warnings.catch_warnings():  # torch routes COO products through its beta CSR code
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            out = torch.sparse.mm(item, user_t)
        return (out.to_dense() if out.is_sparse else out).T
    if user.is_sparse:
        return torch.sparse.mm(user, item.T.contiguous())
    return user @ item.T


def is_finite(x: torch.Tensor) -> bool:
    """Every stored value finite (a sparse tensor's implicit zeros are)."""
    return bool(torch.isfinite(x.coalesce().values() if x.is_sparse else x).all())


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
    def rating_metrics(self, factors: Factors, which: str, per_user: bool = False) -> dict:
        """MAE and RMSE over every held-out rating of the ``which`` cold users, predictions
        clipped to the data's rating scale; ``per_user``: also each user's error sums."""
        held = self.data.heldout(which)
        users = self.data.cold_users(which)
        row = np.searchsorted(users, held.user)
        pred = np.clip(factors.pairs(row, held.item), *self.data.rating_range)
        out: dict = metrics.rating_errors(pred, held.rating)
        if per_user:
            out["per_user_errors"] = metrics.rating_errors_by_user(
                pred, held.rating, row, len(users)
            )
        return out

    def ranking_metrics(
        self, factors: Factors, which: str, ks=metrics.KS, per_user: bool = False
    ) -> dict:
        held = self.data.heldout(which)
        users = self.data.cold_users(which)
        positives = metrics.positives_by_user(
            held.user, held.item, held.rating, users, self.data.explicit
        )
        with torch.no_grad():
            ranked = (
                np.concatenate(
                    [top_k(part.scores(), max(ks))[0].numpy() for part in factors.chunks()]
                )
                if len(users)
                else np.zeros((0, max(ks)), dtype=np.int64)
            )
        return metrics.ranking_metrics(ranked, positives, ks, per_user=per_user)

    def ndcg(self, factors: Factors, which: str = "valid") -> float:
        """NDCG@10 of ``factors`` on the ``which`` cold users: every method's ranking selection
        criterion."""
        return self.ranking_metrics(factors, which, ks=(10,))["ndcg@10"]


class Method:
    """A cold-start method. Subclasses set ``name`` and implement the factor methods."""

    name: ClassVar[str] = ""
    needs_ratings: ClassVar[bool] = False  # rating-only methods are left out on implicit data
    has_ratings: ClassVar[bool] = True  # False: ranking only (MAE/RMSE are null)
    config_name: ClassVar[str | None] = None  # params section, when not ``name`` (ablations)

    def __init__(self, config: Any = None):
        self.config = config
        self.info: dict[str, Any] = {}

    # Attributes saved besides the torch modules (e.g. a selected guidance scale, the tensors
    # of a closed-form model); those in ``shape_attributes`` are restored before ``build``,
    # which sizes the networks from them.
    saved_attributes: ClassVar[tuple[str, ...]] = ()
    shape_attributes: ClassVar[tuple[str, ...]] = ()

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
        for key in self.shape_attributes:
            setattr(self, key, state["attributes"][key])
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
