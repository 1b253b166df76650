"""Fold-in: give the chosen method the users who are new since training.

Their source vectors are fitted from their source interactions against the fixed source item
vectors (:mod:`pipeline.cdr.foldin`), the method is rebuilt on the extended context with its
trained weights, and it then generates their target vectors like anyone else's. A method that
declares it cannot (``supports_fold_in = False``) or fails to be rebuilt scores its known
users only; the new users go to the rejects with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.cdr import foldin
from pipeline.cdr.configs import MFConfig
from pipeline.cdr.harness import Fitted
from pipeline.cdr.methods import FitContext, Method
from pipeline.recs.plan import Plan

log = logging.getLogger("score")

# Largest change of a known user's score that folding in others may cause before a warning.
KNOWN_CHANGE_TOLERANCE = 1e-4


@dataclass
class Scorer:
    """The context and method that score a plan's users, and each user's row in it."""

    ctx: FitContext
    method: Method
    rows: np.ndarray  # (n,) row in ``ctx`` of each of the plan's users
    info: dict[str, Any] = field(default_factory=dict)  # for the manifest

    def user_vectors(self, lo: int, hi: int) -> torch.Tensor:
        """Target vectors of the plan's users ``lo:hi`` (generated: the expensive part)."""
        return self.method.ranking_factors(self.ctx, self.rows[lo:hi]).user

    def item_vectors(self) -> torch.Tensor:
        """Vectors of every target item (a placeholder when there is no user to score)."""
        if not len(self.rows):
            return torch.zeros(self.ctx.data.n_tgt_items, 1)
        return self.method.ranking_factors(self.ctx, self.rows[:1]).item

    def sampling_steps(self, steps: int | None) -> contextlib.AbstractContextManager:
        """A diffusion generator's sampling steps set to ``steps`` for the block (None: its
        own); ignored, with a warning, by a method that does not sample."""
        if steps is not None and hasattr(self.method, "with_steps"):
            return self.method.with_steps(steps)
        if steps is not None:
            log.warning("score.steps is set but %s does not sample: ignored", self.method.name)
        return contextlib.nullcontext()


def fold_in(fitted: Fitted, name: str, plan: Plan, base: MFConfig) -> Scorer:
    """A :class:`Scorer` for ``plan``'s users with method ``name``.

    Users who cannot be folded in are moved to the rejects (and out of ``plan``).
    """
    ctx, method = fitted.ctx, fitted.methods[name]
    info: dict[str, Any] = {"users": 0}
    if not len(plan.fold_ids):
        return Scorer(ctx, method, plan.known_rows, info)
    reason = None
    if not getattr(method, "supports_fold_in", True):
        reason, detail = "fold_in_unsupported", f"{name} sets supports_fold_in = False"
    else:
        try:
            start = time.perf_counter()
            regs = foldin.calibrate(ctx, base)
            extended = foldin.extend_context(
                ctx, plan.fold_ids, plan.fold_history, regs, base.shrinkage
            )
            ext, rows = extended.ctx, extended.rows
            ext_method = type(method)(method.config)
            with torch.no_grad():
                ext_method.load_state_dict(ext, method.state_dict())
            info.update(
                users=len(plan.fold_ids),
                regularisation=regs.as_dict(),
                padded_user_features=extended.padded,
                known_users_max_change=_known_change(ctx, method, ext, ext_method),
                seconds=round(time.perf_counter() - start, 3),
            )
            if info["known_users_max_change"] > KNOWN_CHANGE_TOLERANCE:
                log.warning(
                    "%s: folding in new users changed known users' scores by up to %.3g "
                    "(the method uses statistics over all users)",
                    name,
                    info["known_users_max_change"],
                )
        except Exception as exc:  # noqa: BLE001 - any method may fail here; reject, never crash
            log.warning("%s: cannot fold in new users: %s", name, exc)
            reason, detail = "fold_in_failed", f"{type(exc).__name__}: {exc}"
    if reason is not None:
        info.update(failed=detail)
        plan.reject_fold_ins(reason)
        return Scorer(ctx, method, plan.known_rows, info)
    fold_row = dict(zip(plan.fold_ids.tolist(), rows.tolist(), strict=True))
    ctx_rows = np.array(
        [r if r >= 0 else fold_row[u] for u, r in zip(plan.user_ids, plan.known_rows, strict=True)],
        dtype=np.int64,
    )
    return Scorer(ext, ext_method, ctx_rows, info)


def _known_change(ctx: FitContext, method: Method, ext: FitContext, ext_method: Method) -> float:
    """Largest score change, for a sample of known users, between the two contexts."""
    users = np.flatnonzero(ctx.src.has_source)[:64]
    if not len(users):
        return 0.0
    with torch.no_grad():
        a = method.ranking_factors(ctx, users).scores()
        b = ext_method.ranking_factors(ext, users).scores()
    return float((a - b).abs().max())
