"""Per-domain base models and the source-side view of every user.

The source model trains on every user's source history (cold users keep theirs); the target
model trains only on users whose target history is visible (training overlap and side users),
never on cold users. Early stopping uses a random 5 % of each model's own training rows, not
the cold users.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from models.mf import BPRMF, BiasedMF
from pipeline.cdr.configs import MFConfig
from pipeline.cdr.data import CDRData, Interactions
from pipeline.cdr.training import EarlyStopping, minibatches, seed_everything

log = logging.getLogger("train")


@dataclass
class BaseModels:
    src_mf: BiasedMF | None  # explicit data only
    tgt_mf: BiasedMF | None
    src_bpr: BPRMF
    tgt_bpr: BPRMF
    seconds: float


def _holdout(n: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = rng.random(n) < frac
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def fit_biased_mf(
    inter: Interactions, n_users: int, n_items: int, cfg: MFConfig, seed: int
) -> BiasedMF:
    """Biased MF by minibatch Adam; the epoch count is picked on a 5 % warm holdout."""
    gen = seed_everything(seed)
    train, hold = _holdout(len(inter), 0.05, seed)
    u = torch.as_tensor(inter.user)
    i = torch.as_tensor(inter.item)
    r = torch.as_tensor(inter.rating)
    model = BiasedMF(n_users, n_items, cfg.dim, global_mean=float(r[train].mean()))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    stop = EarlyStopping(cfg.patience, "min")
    tr = torch.as_tensor(train)
    for epoch in range(cfg.epochs):
        model.train()
        for batch in minibatches(len(tr), cfg.batch_size, gen):
            idx = tr[batch]
            loss = torch.nn.functional.mse_loss(model(u[idx], i[idx]), r[idx])
            loss = loss + cfg.reg * model.regulariser(u[idx], i[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            h = torch.as_tensor(hold)
            rmse = float(((model(u[h], i[h]).clamp(1, 5) - r[h]) ** 2).mean().sqrt())
        if stop.step(rmse, epoch, model.state_dict()):
            break
    model.load_state_dict(stop.best_state)
    model.eval()
    return model


def fit_bpr(
    inter: Interactions, n_users: int, n_items: int, cfg: MFConfig, seed: int, positive_only: bool
) -> BPRMF:
    """BPR-MF on (user, item) pairs; uniform negatives. Epochs picked by holdout AUC."""
    gen = seed_everything(seed + 1)
    keep = inter.rating >= 4.0 if positive_only else np.ones(len(inter), dtype=bool)
    users, items = inter.user[keep], inter.item[keep]
    train, hold = _holdout(len(users), 0.05, seed + 1)
    u, i = torch.as_tensor(users), torch.as_tensor(items)
    model = BPRMF(n_users, n_items, cfg.bpr_dim)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    stop = EarlyStopping(cfg.patience, "max")
    tr = torch.as_tensor(train)
    h = torch.as_tensor(hold)
    neg_hold = torch.randint(0, n_items, (len(h),), generator=gen)
    for epoch in range(cfg.bpr_epochs):
        model.train()
        for batch in minibatches(len(tr), cfg.batch_size, gen):
            idx = tr[batch]
            neg = torch.randint(0, n_items, (len(idx),), generator=gen)
            loss = model.bpr_loss(u[idx], i[idx], neg) + cfg.bpr_reg * model.regulariser(
                u[idx], i[idx], neg
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            auc = float((model(u[h], i[h]) > model(u[h], neg_hold)).float().mean())
        if stop.step(auc, epoch, model.state_dict()):
            break
    model.load_state_dict(stop.best_state)
    model.eval()
    return model


def fit_base_models(data: CDRData, cfg: MFConfig, seed: int) -> BaseModels:
    start = time.perf_counter()
    src_mf = tgt_mf = None
    if data.explicit:
        src_mf = fit_biased_mf(data.src, data.n_users, data.n_src_items, cfg, seed)
        tgt_mf = fit_biased_mf(data.tgt_train, data.n_users, data.n_tgt_items, cfg, seed + 7)
    # Ranking models learn from every interaction: any of them signals interest.
    src_bpr = fit_bpr(data.src, data.n_users, data.n_src_items, cfg, seed, positive_only=False)
    tgt_bpr = fit_bpr(
        data.tgt_train, data.n_users, data.n_tgt_items, cfg, seed + 7, positive_only=False
    )
    seconds = time.perf_counter() - start
    log.info("base models trained in %.1f s", seconds)
    return BaseModels(src_mf, tgt_mf, src_bpr, tgt_bpr, seconds)


@dataclass
class SourceView:
    """What the source domain says about each user (rows: every user of the pair)."""

    has_source: np.ndarray  # (n_users,) bool
    count: np.ndarray  # (n_users,) number of source interactions
    mean_rating: np.ndarray  # (n_users,) NaN without source history
    bias: np.ndarray  # (n_users,) shrunk mean residual against source item means
    indptr: np.ndarray  # CSR over users of the source history
    items: np.ndarray
    ratings: np.ndarray


def source_item_means(src: Interactions, n_items: int) -> np.ndarray:
    """Each source item's mean rating over ``src`` (0 for items nobody rated)."""
    count = np.bincount(src.item, minlength=n_items)
    return np.bincount(src.item, weights=src.rating, minlength=n_items) / np.maximum(count, 1)


def source_view(
    data: CDRData,
    shrinkage: float,
    src: Interactions | None = None,
    n_users: int | None = None,
    item_mean: np.ndarray | None = None,
) -> SourceView:
    """Every user's source statistics and history: from ``data``'s source rows, or from
    ``src`` over ``n_users`` users measured against ``item_mean`` (fold-in: new users' rows
    against the training item means)."""
    src = data.src if src is None else src
    n_users = data.n_users if n_users is None else n_users
    if item_mean is None:
        item_mean = source_item_means(src, data.n_src_items)
    n = np.bincount(src.user, minlength=n_users).astype(np.float64)
    total = np.bincount(src.user, weights=src.rating, minlength=n_users)
    resid = np.bincount(src.user, weights=src.rating - item_mean[src.item], minlength=n_users)
    bias = resid / np.maximum(n, 1) * (n / (n + shrinkage))
    indptr = np.concatenate([[0], np.cumsum(n.astype(np.int64))])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / n, np.nan)
    return SourceView(n > 0, n, mean, bias, indptr, src.item, src.rating)
