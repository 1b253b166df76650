"""Item-level matrices of a (source, target) pair and the closed-form models built on them.

Cross-domain *item* models keep what a low-dimensional user vector throws away: which source
items go with which target items. Two are here, both fitted on the training overlap users only
and both sized by the catalogue, never by users x users or source items x target items:

- the cross-domain ridge map (``cd_ease``): target scores ``x_s W`` with
  ``W = (Xs'Xs + lam I)^-1 Xs'Xt``, computed from a rank-``k`` SVD of ``Xs`` (the overlap users'
  source rows, each scaled to unit length: :func:`map_rows`), ``Xs = U S V'``: ``W = V diag(s / (s^2 + lam)) U'Xt``. A user is then the
  k-vector ``x_s V diag(s / (s^2 + lam))`` and an item the k-vector column of ``U'Xt``; scoring
  stays one matrix product. Every ``lam`` reuses the same SVD. With ``k`` at the rank of ``Xs``
  it is the exact ridge solution; below it, the directions with the smallest singular values
  (which ridge shrinks the most) are dropped. Memory: ``(n_source_items + n_target_items +
  n_overlap_users) * k`` floats plus the sparse matrices.
- sparse cosine neighbours (``cd_itemknn``): for each source item, its ``n`` most similar
  target items by cosine over the overlap users' binary vectors, computed one block of source
  items at a time. Memory: ``n_source_items * n`` weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds

from pipeline.cdr.base import SourceView
from pipeline.cdr.data import CDRData

# Dense SVD (LAPACK) below this many matrix entries; the sparse Lanczos solver above.
_DENSE_SVD_ENTRIES = 16_000_000
# Cosine neighbours are computed this many source items at a time.
_BLOCK_ITEMS = 4096


def source_rows(
    src: SourceView,
    users: np.ndarray,
    n_items: int,
    *,
    liked: float | None = None,
    centred: bool = False,
) -> sp.csr_matrix:
    """(len(users), n_items) binary matrix of the users' source items (only the items rated
    ``>= liked`` when ``liked`` is given). ``centred``: the same pattern holding each rating
    minus the user's mean source rating instead of 1 (the view holds one rating per pair)."""
    users = np.asarray(users, dtype=np.int64)
    starts, counts = src.indptr[users], src.indptr[users + 1] - src.indptr[users]
    offsets = np.cumsum(counts) - counts
    take = np.arange(int(counts.sum())) - np.repeat(offsets - starts, counts)
    rows = np.repeat(np.arange(len(users)), counts)
    items = src.items[take]
    values = np.ones(len(rows), dtype=np.float32)
    if centred:
        ratings = src.ratings[take].astype(np.float64)
        mean = np.bincount(rows, weights=ratings, minlength=len(users)) / np.maximum(counts, 1)
        values = (ratings - mean[rows]).astype(np.float32)
    if liked is not None:
        keep = src.ratings[take] >= liked
        rows, items, values = rows[keep], items[keep], values[keep]
    out = sp.csr_matrix((values, (rows, items)), shape=(len(users), n_items))
    out.sum_duplicates()
    if not centred:
        out.data[:] = 1.0
    return out


def target_rows(data: CDRData, users: np.ndarray) -> sp.csr_matrix:
    """(len(users), n_target_items) binary matrix of the users' *visible* target items."""
    tr = data.tgt_train
    users = np.asarray(users, dtype=np.int64)
    pos = np.full(data.n_users, -1, dtype=np.int64)
    pos[users] = np.arange(len(users))
    keep = pos[tr.user] >= 0
    values = np.ones(int(keep.sum()), dtype=np.float32)
    out = sp.csr_matrix(
        (values, (pos[tr.user[keep]], tr.item[keep])), shape=(len(users), data.n_tgt_items)
    )
    out.sum_duplicates()
    out.data[:] = 1.0
    return out


def normalise_rows(x: sp.csr_matrix) -> sp.csr_matrix:
    """Each row divided by its L2 norm (empty rows stay empty)."""
    norms = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())
    return sp.diags(1.0 / np.maximum(norms, 1e-12)).dot(x).tocsr()


def map_rows(xs: sp.csr_matrix, vocab: np.ndarray) -> sp.csr_matrix:
    """The ridge map's input: binary source rows over the map's vocabulary, each scaled to unit
    length (``1/sqrt(n)`` for ``n`` items). Every training user then weighs the same in the
    fit, however long their history, instead of heavy users dominating ``Xs'Xs`` (SVD++'s and
    the normalised adjacency's ``1/sqrt(n)``). A user's scores only change scale, so their
    ranking is the same as from the binary row."""
    return normalise_rows(restrict(xs, vocab))


def truncated_svd(
    x: sp.csr_matrix, rank: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U (n, k), s (k,), V (m, k)) of the leading ``k = min(rank, n, m)`` singular triplets
    (one fewer on the sparse path where ``k`` reaches the matrix's smaller side), the same for
    the same input and seed."""
    n, m = x.shape
    k = max(min(rank, n, m), 0)
    if k == 0:
        return np.zeros((n, 0)), np.zeros(0), np.zeros((m, 0))
    if n * m <= _DENSE_SVD_ENTRIES:
        u, s, vt = np.linalg.svd(x.toarray().astype(np.float64), full_matrices=False)
        return u[:, :k], s[:k], vt[:k].T
    # ARPACK (Lanczos) on the sparse matrix: the exact leading triplets, from a start vector
    # drawn with the seed, so the same input gives the same factors.
    start = np.random.default_rng(seed).standard_normal(min(n, m))
    u, s, vt = svds(x.astype(np.float64), k=min(k, min(n, m) - 1), v0=start)
    order = np.argsort(-s)
    return u[:, order], s[order], vt[order].T


@dataclass
class RidgeBasis:
    """What every penalty of the cross-domain ridge map shares: one SVD of the overlap users'
    source rows and the target rows projected on its left vectors."""

    src_vectors: np.ndarray  # (n_source_items, k): V
    singular: np.ndarray  # (k,): s
    item_vectors: np.ndarray  # (n_target_items, k): (U' Xt)'
    mean_diagonal: float  # mean of diag(Xs'Xs) over the source items seen: the penalty's unit

    @classmethod
    def fit(cls, xs: sp.csr_matrix, xt: sp.csr_matrix, rank: int, seed: int) -> RidgeBasis:
        u, s, v = truncated_svd(xs, rank, seed)
        seen = np.asarray((xs != 0).sum(0)).ravel()
        diag = (
            float(np.asarray(xs.multiply(xs).sum(0)).ravel()[seen > 0].mean())
            if seen.any()
            else 1.0
        )
        return cls(v, s, np.asarray(xt.T @ u), diag)

    def factors(self, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(source item map (n_source_items, k), target item vectors (n_target_items, k)):
        a user's vector is their source row (as the basis was fitted on) times the map."""
        shrink = self.singular / (self.singular**2 + lam)
        src = torch.as_tensor(self.src_vectors * shrink[None, :], dtype=torch.float32)
        return src, torch.as_tensor(self.item_vectors, dtype=torch.float32)


def penalty_grid(unit: float) -> list[float]:
    """Ridge penalties tried on validation users: multiples of the mean diagonal of Xs'Xs, so
    that the grid means the same on a data set of any size or density."""
    return [unit * m for m in (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)]


def cosine_neighbours(xs: sp.csr_matrix, xt: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """(n_source_items, n_target_items) sparse: each source item's ``n`` target items of
    highest cosine similarity over the rows (users) of ``xs`` and ``xt``; ties by item index."""
    xs, xt = xs.tocsc(), xt.tocsc()
    ns = np.sqrt(np.asarray(xs.multiply(xs).sum(0)).ravel())
    nt = np.sqrt(np.asarray(xt.multiply(xt).sum(0)).ravel())
    inv_t = sp.diags(1.0 / np.maximum(nt, 1e-12))
    rows, cols, vals = [], [], []
    for lo in range(0, xs.shape[1], _BLOCK_ITEMS):
        hi = min(lo + _BLOCK_ITEMS, xs.shape[1])
        block = (xs[:, lo:hi].T @ xt @ inv_t).tocsr()  # co-counts / |t|, sparse
        block = (sp.diags(1.0 / np.maximum(ns[lo:hi], 1e-12)) @ block).tocoo()
        # Per source item, its n best target items: sort by (item, -similarity, target index)
        # and keep the first n of each item's run.
        order = np.lexsort((block.col, -block.data, block.row))
        row, col, val = block.row[order], block.col[order], block.data[order]
        starts = np.searchsorted(row, row, side="left")
        keep = np.arange(len(row)) - starts < n
        rows.append(row[keep] + lo)
        cols.append(col[keep])
        vals.append(val[keep])
    out = sp.csr_matrix(
        (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(xs.shape[1], xt.shape[1]),
    )
    out.sort_indices()
    return out


def to_torch(x: sp.spmatrix) -> torch.Tensor:
    """A scipy sparse matrix as a coalesced torch COO tensor (float32)."""
    coo = x.tocoo()
    index = torch.as_tensor(np.stack([coo.row, coo.col]).astype(np.int64))
    values = torch.as_tensor(coo.data, dtype=torch.float32)
    return torch.sparse_coo_tensor(index, values, coo.shape, check_invariants=False).coalesce()


def vocabulary(x: sp.csr_matrix) -> torch.Tensor:
    """Sorted column indices with at least one entry: the source items the overlap users had.
    Only these carry cross-domain signal, so models size their source side by them, not by
    the catalogue."""
    return torch.as_tensor(np.flatnonzero(np.asarray((x != 0).sum(0)).ravel()))


def restrict(x: sp.csr_matrix, vocab: np.ndarray | torch.Tensor) -> sp.csr_matrix:
    """The columns ``vocab`` of ``x`` (in that order)."""
    return x.tocsc()[:, np.asarray(vocab)].tocsr()
