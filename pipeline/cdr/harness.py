"""One evaluation harness for every method, used by the pipeline and the benchmark.

``fit`` trains the base models and then each method (selection on valid cold users only);
``evaluate`` computes test metrics of the selected models: MAE and RMSE over every target
rating of the test cold users (from the same selected model), and full-ranking NDCG / HR /
Recall / MRR at 10 and 20.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.cdr.base import BaseModels, MFConfig, fit_base_models, source_view
from pipeline.cdr.data import CDRData
from pipeline.cdr.methods import METHODS, FitContext, Method

log = logging.getLogger("train")

# The models are small: one torch thread is fastest on a CPU, and two jobs on one machine
# (a benchmark beside a stage) do not oversubscribe its cores.
TRAIN_THREADS = 1


@dataclass
class Fitted:
    ctx: FitContext
    methods: dict[str, Method]
    train_seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def make_context(data: CDRData, base: BaseModels, mf: MFConfig, seed: int) -> FitContext:
    return FitContext(data=data, base=base, src=source_view(data, mf.shrinkage), seed=seed)


def fit(
    data: CDRData,
    names: list[str],
    configs: dict[str, Any],
    mf: MFConfig,
    seed: int,
    extra: dict[str, Any] | None = None,
    base: BaseModels | None = None,
) -> Fitted:
    """Train the base models (unless ``base`` gives them, trained on this data) and then each
    method of ``names``, every selection on the valid cold users only."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
    torch.set_num_threads(TRAIN_THREADS)
    base = base if base is not None else fit_base_models(data, mf, seed)
    ctx = make_context(data, base, mf, seed)
    ctx.extra.update(extra or {})
    fitted = Fitted(ctx, {})
    for name in names:
        cls = METHODS[name]
        if cls.needs_ratings and not data.explicit:
            fitted.skipped[name] = "needs explicit ratings"
            log.info("%s: skipped (implicit data)", name)
            continue
        method = cls(configs.get(cls.config_name or name))
        start = time.perf_counter()
        method.fit(ctx)
        fitted.train_seconds[name] = time.perf_counter() - start
        fitted.methods[name] = method
        log.info("%s: trained in %.1f s %s", name, fitted.train_seconds[name], method.info or "")
    return fitted


def evaluate(
    fitted: Fitted, which: str = "test", per_user: bool = False
) -> dict[str, dict[str, Any]]:
    """Metrics of every fitted method on the ``which`` cold users (valid or test).

    ``per_user``: each row also gets ``per_user`` (every ranking metric per user with a
    positive, and the user ids) and, for rating methods, ``per_user_errors`` (per cold user:
    number of ratings, sum of absolute and of squared errors): what a paired test between two
    methods resamples.
    """
    ctx = fitted.ctx
    users = ctx.data.cold_users(which)
    results = {}
    for name, method in fitted.methods.items():
        start = time.perf_counter()
        with torch.no_grad():
            rating = method.rating_factors(ctx, users) if method.has_ratings else None
            ranking = method.ranking_factors(ctx, users)
            row: dict[str, Any] = {"mae": None, "rmse": None}
            if rating is not None and ctx.data.explicit:
                row.update(ctx.rating_metrics(rating, which, per_user=per_user))
            row.update(ctx.ranking_metrics(ranking, which, per_user=per_user))
        if per_user:
            ids = ctx.data.user_ids[users]
            row["per_user"] = {
                "user_id": ids[row.pop("users")].tolist(),
                **{k: v.tolist() for k, v in row["per_user"].items()},
            }
            if "per_user_errors" in row:
                errors = row.pop("per_user_errors")
                row["per_user_errors"] = {
                    "user_id": ids.tolist(),
                    "n": errors[:, 0].astype(int).tolist(),
                    "abs": errors[:, 1].tolist(),
                    "sq": errors[:, 2].tolist(),
                }
        row["infer_seconds"] = time.perf_counter() - start
        row["train_seconds"] = fitted.train_seconds.get(name)
        row["info"] = method.info
        results[name] = row
    return results


def summary_line(name: str, row: dict) -> str:
    def f(key: str) -> str:
        v = row.get(key)
        return "   -  " if v is None else f"{v:.4f}"

    return f"{name:>24}  mae {f('mae')}  rmse {f('rmse')}  ndcg@10 {f('ndcg@10')}  hit@10 {f('hit@10')}"


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def sampling_steps_curve(
    fitted: Fitted, which: str = "valid", steps=(1, 2, 5, 10, 20, 30)
) -> list[dict]:
    """Metrics of every diffusion method by number of sampling steps (``with_steps``)."""
    rows = []
    ctx = fitted.ctx
    users = ctx.data.cold_users(which)
    for name, method in fitted.methods.items():
        if not hasattr(method, "with_steps"):
            continue
        for n in steps:
            with torch.no_grad(), method.with_steps(n):
                row: dict[str, Any] = {"method": name, "steps": n}
                rating = method.rating_factors(ctx, users)
                if rating is not None and ctx.data.explicit:
                    row.update(ctx.rating_metrics(rating, which))
                row.update(ctx.ranking_metrics(method.ranking_factors(ctx, users), which, ks=(10,)))
            rows.append(row)
    return rows
