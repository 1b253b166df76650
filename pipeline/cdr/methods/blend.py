"""The rating head's blend of generated terms onto the habit readout, on validation users."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.cdr.methods.base import FitContext, significant_gain

if TYPE_CHECKING:
    from pipeline.cdr.methods.ours import Ours


class RatingBlend:
    """The rating blend on validation ratings: rating = base + design @ (lam, gam, kappa),
    base = item mean + habit-read bias, design = (generated bias - habit bias, generated
    interaction, item-offset shift). Least squares, weights kept in [0, 1] so (0, 0, 0), the
    readout alone, stays inside."""

    FOLDS = 5

    def __init__(self, model: Ours, ctx: FitContext, valid: np.ndarray):
        held = ctx.data.heldout("valid")
        self.model = model
        self.row = torch.as_tensor(np.searchsorted(valid, held.user))
        self.item = torch.as_tensor(held.item)
        self.prior = model.prior_bias[torch.as_tensor(held.user)].double()
        self.base = model.item_mean[self.item].double() + self.prior
        self.rating = torch.as_tensor(held.rating, dtype=torch.float64)
        # Users, not rows, go to folds: a user's ratings are not independent of each other.
        fold_of_user = np.random.default_rng(ctx.seed).permutation(len(valid)) % self.FOLDS
        self.fold = torch.as_tensor(fold_of_user[self.row.numpy()])
        self.err0 = self.predict(None) - self.rating  # the readout alone: the reference

    def design(self, vec: torch.Tensor) -> torch.Tensor:
        m = self.model
        bias = vec[self.row, m.slices["bias"]][:, 0].double()
        inter = (vec[self.row, m.slices["taste"]] * m.taste_items[self.item]).sum(-1).double()
        shift = (m.item_offset[self.item] - m.item_mean[self.item]).double()
        return torch.stack([bias - self.prior, inter, shift], 1)

    def fit(self, design: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[float, ...]:
        a = design if rows is None else design[rows]
        y = (self.rating - self.base) if rows is None else (self.rating - self.base)[rows]
        ridge = 1e-3 * len(y) * torch.eye(a.shape[1], dtype=torch.float64)
        coef = torch.linalg.solve(a.T @ a + ridge, a.T @ y).clamp(0.0, 1.0)
        return tuple(round(float(c), 4) for c in coef)

    def predict(self, design: torch.Tensor | None) -> torch.Tensor:
        """Cross-fitted predictions (``None``: the readout alone, nothing fitted)."""
        pred = self.base.clone()
        if design is not None:
            for k in range(self.FOLDS):
                out = self.fold == k
                coef = torch.tensor(self.fit(design, ~out), dtype=torch.float64)
                pred[out] += design[out] @ coef
        return pred.clamp(1.0, 5.0)

    def score(self, design: torch.Tensor) -> float:
        """Cross-fitted change of the loss against the readout alone (negative: better),
        counted only when it is beyond noise (``significant_gain``)."""
        err = self.predict(design) - self.rating
        return significant_gain(err, self.err0, self.row, self.model.config.gate_se)
