"""Fold users new since training into a trained context, without retraining anything.

A user the source model never saw gets a source vector fitted to their source interactions
against the *fixed* source item vectors, by the objective the base model was trained with:

- biased MF (explicit data): ridge least squares for ``[p_u, b_u]`` on
  ``r - mu - b_i = <p_u, q_i> + b_u`` with the penalty ``lambda * n_u`` (the form the
  per-interaction L2 of training takes for one user): closed form, one solve per user;
- BPR-MF: the user's mean BPR loss (their items against uniform negatives drawn from a
  generator seeded by the user id, so the same for every run and every batch) plus
  ``lambda |p_u|^2``: convex, solved by Newton steps with per-user backtracking.

Training stops early, so trained user vectors sit well inside the optimum of the training
objective; ``lambda`` is therefore not the training penalty but the multiple of it that best
reproduces the trained vectors of a fixed sample of known users when they are refolded
(:func:`calibrate`; on the synthetic sample the refolded vectors' cosine to the trained ones
is about 0.9 for both models).

:func:`extend_context` then builds a :class:`FitContext` whose users are the training users
followed by the new ones: source user tables and the source history hold the new users, the
target side and every item statistic are the training ones, and per-user features get a
neutral (mean) row for them. A method rebuilt on it with ``load_state_dict`` generates target
vectors for the new users as for known ones; known users' outputs do not change unless the
method computes statistics over all users (``pipeline.score`` measures and reports that).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.nn import functional as F

from models.mf import BPRMF, BiasedMF
from pipeline.cdr.base import BaseModels, SourceView, source_item_means, source_view
from pipeline.cdr.configs import MFConfig
from pipeline.cdr.data import ROLE_CODES, CDRData, Interactions
from pipeline.cdr.methods.base import FitContext

BPR_NEGATIVES = 128  # uniform negatives per user (shared by the user's positives)
NEWTON_STEPS = 30
BATCH_USERS = 1024  # users solved together (bounded memory)


@dataclass
class History:
    """CSR source history of the users to fold in: row ``r`` holds ``items[indptr[r]:indptr[r+1]]``."""

    indptr: np.ndarray
    items: np.ndarray
    ratings: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    @classmethod
    def from_rows(cls, rows: np.ndarray, items: np.ndarray, ratings: np.ndarray, n: int) -> History:
        """From (row, item, rating) triples, rows in ``0..n-1``; sorted by (row, item)."""
        order = np.lexsort((items, rows))
        counts = np.bincount(rows, minlength=n)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(indptr, items[order].astype(np.int64), ratings[order].astype(np.float32))


def _batches(counts: np.ndarray, per_item: int, budget: int = 2_000_000):
    """(lo, hi) user ranges whose padded size ``users x longest history x per_item`` stays
    within ``budget`` elements (at least one user per range)."""
    lo, n = 0, len(counts)
    while lo < n:
        hi, width = lo + 1, max(int(counts[lo]), 1)
        while hi < n and hi - lo < BATCH_USERS:
            w = max(width, int(counts[hi]))
            if (hi + 1 - lo) * w * per_item > budget:
                break
            hi, width = hi + 1, w
        yield lo, hi
        lo = hi


def _padded(hist: History, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(items (b, L), ratings (b, L), mask (b, L)) of rows ``lo:hi``."""
    counts = hist.counts()[lo:hi]
    width = max(int(counts.max(initial=0)), 1)
    col = np.arange(width)[None, :]
    mask = col < counts[:, None]
    at = np.where(mask, hist.indptr[lo:hi][:, None] + col, len(hist.items))
    items = np.append(hist.items, 0)[at]
    ratings = np.append(hist.ratings, 0.0)[at]
    return (
        torch.as_tensor(items.astype(np.int64)),
        torch.as_tensor(ratings.astype(np.float32)),
        torch.as_tensor(mask),
    )


@torch.no_grad()
def ridge_mf(mf: BiasedMF, hist: History, reg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_u (n, d), b_u (n,)) minimising sum (r - mu - b_i - <p, q_i> - b)^2 + reg n_u |[p, b]|^2."""
    d = mf.dim
    q = mf.item.weight.detach().double()
    bi = mf.item_bias.weight.detach()[:, 0].double()
    mu = float(mf.global_mean)
    out = torch.zeros(hist.n_users, d + 1, dtype=torch.float64)
    eye = torch.eye(d + 1, dtype=torch.float64)
    for lo, hi in _batches(hist.counts(), d + 1):
        items, ratings, mask = _padded(hist, lo, hi)
        m = mask.double()
        x = torch.cat([q[items], torch.ones(*items.shape, 1, dtype=torch.float64)], -1)
        x = x * m[..., None]
        y = (ratings.double() - mu - bi[items]) * m
        n = m.sum(1)
        a = x.transpose(1, 2) @ x + (reg * n.clamp(min=1))[:, None, None] * eye
        out[lo:hi] = torch.linalg.solve(a, (x.transpose(1, 2) @ y[..., None]))[..., 0]
    return out[:, :d].float(), out[:, d].float()


def _bpr_objective(p, qp, bp, mp, qn, bn, reg):
    """Each user's mean BPR loss over (positive, negative) pairs plus reg |p|^2, and the margins."""
    sp = bp + (qp @ p[..., None])[..., 0]  # (b, P)
    sn = bn + (qn @ p[..., None])[..., 0]  # (b, N)
    x = sp[:, :, None] - sn[:, None, :]  # (b, P, N)
    loss = (F.softplus(-x) * mp[:, :, None]).sum((1, 2)) / (mp.sum(1) * qn.shape[1])
    return loss + reg * (p * p).sum(1), x


@torch.no_grad()
def newton_bpr(
    bpr: BPRMF, hist: History, reg: float, seeds: np.ndarray, negatives: int = BPR_NEGATIVES
) -> torch.Tensor:
    """User vectors (n, d) minimising each user's mean BPR loss + reg |p|^2, items fixed.

    ``seeds`` (one per user) seed the user's negatives, so a user's vector depends on their
    own history only, never on the other users solved with them.
    """
    # Pairwise terms in float32 (the bulk of the work); each user's d x d solve in float64.
    q = bpr.item.weight.detach().float()
    bias = bpr.item_bias.weight.detach()[:, 0].float()
    n_items, d = q.shape
    out = torch.zeros(hist.n_users, d)
    eye = torch.eye(d)
    for lo, hi in _batches(hist.counts(), negatives):
        pos, _, mask = _padded(hist, lo, hi)
        mp = mask.float()
        neg = np.stack(
            [np.random.default_rng(int(s)).integers(0, n_items, negatives) for s in seeds[lo:hi]]
        )
        qp, bp, qn, bn = q[pos], bias[pos], q[torch.as_tensor(neg)], bias[torch.as_tensor(neg)]
        cnt = (mp.sum(1) * negatives)[:, None]
        p = torch.zeros(hi - lo, d)
        loss, x = _bpr_objective(p, qp, bp, mp, qn, bn, reg)
        for _ in range(NEWTON_STEPS):
            s = torch.sigmoid(-x) * mp[:, :, None]  # -d loss / d x
            h = torch.sigmoid(x) * s  # d2 loss / d x2
            # gradient: -sum_ij s_ij (q_i - q_j) / cnt + 2 reg p
            grad = -((s.sum(2)[..., None] * qp).sum(1) - (s.sum(1)[..., None] * qn).sum(1))
            grad = grad / cnt + 2 * reg * p
            # Hessian: sum_ij h_ij (q_i - q_j)(q_i - q_j)^T / cnt + 2 reg I
            cross = qp.transpose(1, 2) @ h @ qn
            hess = (
                (qp.transpose(1, 2) * h.sum(2)[:, None, :]) @ qp
                + (qn.transpose(1, 2) * h.sum(1)[:, None, :]) @ qn
                - cross
                - cross.transpose(1, 2)
            ) / cnt[..., None] + 2 * reg * eye
            step = torch.linalg.solve(hess.double(), grad[..., None].double())[..., 0].float()
            # Per user, halve the step until the objective does not increase (convex problem).
            t = torch.ones(hi - lo, 1)
            for _ in range(10):
                c_loss, c_x = _bpr_objective(p - t * step, qp, bp, mp, qn, bn, reg)
                ok = c_loss <= loss
                if ok.all():
                    break
                t = torch.where(ok[:, None], t, t / 2)
            ok = c_loss <= loss
            gain = torch.where(ok, loss - c_loss, torch.zeros_like(loss))
            p = torch.where(ok[:, None], p - t * step, p)
            x = torch.where(ok[:, None, None], c_x, x)
            loss = torch.where(ok, c_loss, loss)
            if float(gain.max()) < 1e-7:
                break
        out[lo:hi] = p
    return out


def user_seeds(user_ids: np.ndarray, seed: int) -> np.ndarray:
    """One stable seed per user id (independent of Python's hash seed and of the batch)."""
    return np.array(
        [(seed * 1_000_003 + zlib.crc32(str(u).encode())) % (2**32) for u in user_ids],
        dtype=np.int64,
    )


@dataclass
class Regularisation:
    """Fold-in penalties, calibrated so that refolding known users reproduces their vectors."""

    mf: float | None  # ridge penalty per interaction (None: no biased MF, implicit data)
    bpr: float
    mf_error: float | None = None  # relative squared error on the calibration users
    bpr_error: float | None = None
    users: int = 0  # calibration users

    def as_dict(self) -> dict:
        return dict(vars(self))


CALIBRATION_GRID = tuple(10 ** (k / 2) for k in range(-1, 9))  # 0.3x .. 10,000x training reg


def _history_of(view: SourceView, users: np.ndarray) -> History:
    lo, hi = view.indptr[users], view.indptr[users + 1]
    idx = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)] or [[]])
    idx = idx.astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(hi - lo)]).astype(np.int64)
    return History(indptr, view.items[idx].astype(np.int64), view.ratings[idx].astype(np.float32))


def calibrate(ctx: FitContext, mf: MFConfig, sample: int = 128) -> Regularisation:
    """Pick each fold-in penalty (a multiple of the training one) on known users.

    Training stops early, so trained user vectors are shrunk well below the optimum of the
    training objective; the penalty that best reproduces the trained vectors of a fixed sample
    of known users (least relative squared error) is the one new users are folded in with.
    """
    known = np.flatnonzero(ctx.src.has_source)
    rng = np.random.default_rng(ctx.seed)
    users = np.sort(rng.choice(known, min(sample, len(known)), replace=False))
    hist = _history_of(ctx.src, users)
    t = torch.as_tensor(users)

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a - b) ** 2).sum() / (b**2).sum().clamp(min=1e-12))

    def best(errors: dict[float, float]) -> tuple[float, float]:
        reg = min(errors, key=errors.get)
        return reg, errors[reg]

    mf_reg, bpr_reg = mf.reg or 1e-3, mf.bpr_reg or 1e-4  # a zero penalty can be singular
    out = Regularisation(mf=None, bpr=bpr_reg, users=len(users))
    if not len(users):
        return out
    base = ctx.base
    if base.src_mf is not None:
        target = torch.cat([base.src_mf.user.weight[t], base.src_mf.user_bias.weight[t]], 1)
        errors = {}
        for m in CALIBRATION_GRID:
            p, b = ridge_mf(base.src_mf, hist, mf_reg * m)
            errors[mf_reg * m] = rel(torch.cat([p, b[:, None]], 1), target.detach())
        out.mf, out.mf_error = best(errors)
    seeds = user_seeds(ctx.data.user_ids[users], ctx.seed)
    target = base.src_bpr.user.weight[t].detach()
    errors = {
        bpr_reg * m: rel(newton_bpr(base.src_bpr, hist, bpr_reg * m, seeds), target)
        for m in CALIBRATION_GRID
    }
    out.bpr, out.bpr_error = best(errors)
    return out


def _extend_rows(weight: torch.Tensor, n_ext: int, rows: np.ndarray, values: torch.Tensor):
    out = torch.zeros(n_ext, weight.shape[1], dtype=weight.dtype)
    out[: weight.shape[0]] = weight.detach()
    if len(rows):
        out[torch.as_tensor(rows)] = values.to(weight.dtype).reshape(len(rows), -1)
    return out


def _extend_mf(model: BiasedMF | None, n_ext: int, rows=None, p=None, b=None):
    if model is None:
        return None
    rows = np.zeros(0, np.int64) if rows is None else rows
    out = BiasedMF(n_ext, model.item.num_embeddings, model.dim)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["user.weight"] = _extend_rows(
        model.user.weight, n_ext, rows, p if p is not None else torch.zeros(0)
    )
    state["user_bias.weight"] = _extend_rows(
        model.user_bias.weight, n_ext, rows, b if b is not None else torch.zeros(0)
    )
    out.load_state_dict(state)
    return out.eval()


def _extend_bpr(model: BPRMF, n_ext: int, rows=None, p=None):
    rows = np.zeros(0, np.int64) if rows is None else rows
    out = BPRMF(n_ext, model.item.num_embeddings, model.dim)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["user.weight"] = _extend_rows(
        model.user.weight, n_ext, rows, p if p is not None else torch.zeros(0)
    )
    out.load_state_dict(state)
    return out.eval()


def _source_view(
    train: CDRData, view: SourceView, src: Interactions, n_users: int, rows: np.ndarray, shrinkage
) -> SourceView:
    """The training view for known users; new rows' statistics against training item means."""
    item_mean = source_item_means(train.src, train.n_src_items)
    new = source_view(train, shrinkage, src, n_users, item_mean)
    known = np.zeros(n_users, dtype=bool)
    known[: train.n_users] = True
    known[rows] = False
    known = np.flatnonzero(known)
    for name in ("count", "mean_rating", "bias"):
        getattr(new, name)[known] = getattr(view, name)[known]
    return new


def _pad_user_arrays(
    arrays: dict, n_old: int, n_ext: int, item_counts: tuple[int, ...]
) -> tuple[dict, list[str]]:
    """Per-user arrays (first dimension = users) get rows for the new users: the mean row of
    the known users (a neutral value; nothing is known about a new user there). Returns the
    padded dict and the names padded."""
    out, padded = dict(arrays), []
    if n_ext == n_old:
        return out, padded
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray | torch.Tensor) or value.ndim == 0:
            continue
        if value.shape[0] != n_old or value.shape[0] in item_counts:
            continue
        arr = np.asarray(value)
        fill = arr.mean(0, keepdims=True) if np.issubdtype(arr.dtype, np.floating) else arr[:1] * 0
        pad = np.repeat(fill.astype(arr.dtype), n_ext - n_old, axis=0)
        arr = np.concatenate([arr, pad])
        out[name] = torch.as_tensor(arr) if isinstance(value, torch.Tensor) else arr
        padded.append(name)
    return out, padded


@dataclass
class Extended:
    ctx: FitContext  # training users first (same rows), then the new ones
    rows: np.ndarray  # each folded user's row in ``ctx``
    padded: list[str]  # per-user features / extras given neutral rows for the new users


def extend_context(
    ctx: FitContext,
    user_ids: np.ndarray,
    history: History,
    regs: Regularisation,
    shrinkage: float,
) -> Extended:
    """A context with ``user_ids`` folded in from their source ``history`` (one row each).

    Ids already in the training data (users without source history there) keep their index;
    the others are appended. ``regs``: from :func:`calibrate`; ``shrinkage``: the source
    view's bias shrinkage (``train.base.shrinkage``).
    """
    data = ctx.data
    known = {u: i for i, u in enumerate(data.user_ids)}
    new_ids = [u for u in user_ids if u not in known]
    n_ext = data.n_users + len(new_ids)
    appended = {u: data.n_users + j for j, u in enumerate(new_ids)}
    rows = np.array([known.get(u, appended.get(u)) for u in user_ids], dtype=np.int64)

    counts = history.counts()
    hist_users = np.repeat(rows, counts)
    if len(rows) and np.isin(rows, data.src.user).any():
        raise ValueError("fold-in is for users without source history in the trained model")
    src = Interactions(
        np.concatenate([data.src.user, hist_users]),
        np.concatenate([data.src.item, history.items]),
        np.concatenate([data.src.rating, history.ratings]),
    )
    order = np.lexsort((src.item, src.user))
    src = src.select(order)

    seeds = user_seeds(np.asarray(user_ids), ctx.seed)
    base = ctx.base
    src_mf = None
    if base.src_mf is not None:
        p, b = ridge_mf(base.src_mf, history, regs.mf)
        src_mf = _extend_mf(base.src_mf, n_ext, rows, p, b)
    bpr_p = newton_bpr(base.src_bpr, history, regs.bpr, seeds)
    ext_base = BaseModels(
        src_mf=src_mf,
        tgt_mf=_extend_mf(base.tgt_mf, n_ext),
        src_bpr=_extend_bpr(base.src_bpr, n_ext, rows, bpr_p),
        tgt_bpr=_extend_bpr(base.tgt_bpr, n_ext),
        seconds=base.seconds,
    )
    role = np.concatenate(
        [data.role, np.full(len(new_ids), ROLE_CODES["source_only"], dtype=data.role.dtype)]
    )
    items = (data.n_src_items, data.n_tgt_items)
    extra, padded = _pad_user_arrays(ctx.extra, data.n_users, n_ext, items)
    ext_data = replace(
        data,
        user_ids=np.concatenate([data.user_ids, np.asarray(new_ids, dtype=str)]),
        role=role,
        src=src,
    )
    view = _source_view(data, ctx.src, src, n_ext, rows, shrinkage)
    ext = FitContext(data=ext_data, base=ext_base, src=view, seed=ctx.seed, extra=extra)
    return Extended(ext, rows, [f"extra.{k}" for k in padded])
