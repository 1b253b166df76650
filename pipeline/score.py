"""Stage ``score``: top-K target items for cold-start users, as a dated Parquet partition.

Two ways to run it, with the same code and output::

    # DVC stage: the split's valid_cold and test_cold users, as the models saw them
    python -m pipeline.score

    # nightly job: a users file against fresh interactions, no retraining
    python -m pipeline.score --users users.parquet --interactions fresh.parquet \\
        --out /data/recs --date 2024-06-01 [-S score.k=100] [-S score.method=emcdr]

``--users``: Parquet or CSV with a ``user_id`` column (read as strings). ``--interactions``:
Parquet or CSV shaped like ``data/prepared/interactions.parquet`` (``user_id``, ``item_id``,
``domain``, ``rating``; rows of other domains are ignored); without it, the interactions the
models were trained on, with the cold users' held-out target rows kept hidden (so the stage's
lists are the rankings ``evaluate`` measured). The trained artifacts are ``data/models/`` and
the training data it was fitted on (``data/prepared/interactions.parquet``,
``data/split/roles.parquet``: they name the users and items the models index).

Output, ``OUT/dt=DATE/`` (``data/scores/`` by default; date from ``--date``, ``score.date``,
else today in UTC):

- ``part-00000.parquet``...: ``user_id``, ``rank`` (1..K, int32), ``item_id``, ``score``
  (float32), ``method``, ``model_version`` (a fingerprint of the model directory's files);
  sorted by user id then rank. Items the user already has in the target domain are left out;
  equal scores are ordered by item id, so the same inputs and settings give the same bytes.
  Read all dates with ``pl.scan_parquet("OUT/dt=*/part-*.parquet", hive_partitioning=True)``.
- ``rejects.parquet``: ``user_id``, ``reason`` for every requested user who got no list
  (see :data:`REASONS`); nobody is dropped silently.
- ``manifest.json``: counts (users in, scored, folded in, rejected by reason), the method and
  how it was chosen, K, sampling steps, params hash, model and data fingerprints.
- ``_SUCCESS``, written last.

The partition is built in a hidden temporary directory beside it, then swapped in by two
renames (the old one moved aside, the new one in, the old one deleted), so a run that crashes
or is killed leaves the previous partition of that date complete; the next run removes the
leftovers. One run at a time per output directory (a lock on it).

Users the models know keep the vectors they were trained with (their newer source rows count
at the next training). Users new since training (not in the trained source model) are folded
in from their source interactions in the given data against the fixed source item vectors
(:mod:`pipeline.cdr.foldin`), then the chosen method generates their target vectors like
anyone else's; if the method cannot be rebuilt with them, they are rejected with the reason.
The method is ``score.method``; ``auto`` picks the best ``ndcg@10`` on the validation cold
users (``metrics/cold_start_valid.json``); ``score.steps`` overrides a diffusion generator's
sampling steps (default: its own).

Scoring is chunked: per ``score.chunk_size`` users, generation, one matrix product against
every item, exclusions and top-K, on CUDA when available (``score.device``), while a writer
thread encodes the previous chunk as a Parquet row group; memory is bounded by the chunk, not
the number of users (``benchmarks/scoring.py`` measures it).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import torch
from tqdm import tqdm

from pipeline import cli, paths
from pipeline.cdr import data as cdr_data
from pipeline.cdr import features, foldin, store
from pipeline.cdr.harness import Fitted
from pipeline.cdr.methods import FitContext, Method
from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.io import (
    ParquetPartWriter,
    atomic_dir,
    read_json,
    sha256_file,
    stable_hash,
    write_json,
    write_parquet,
    write_text,
)
from pipeline.recs.topk import top_k

log = logging.getLogger("score")

SCORES = paths.DATA / "scores"
SELECT_METRIC = "ndcg@10"

SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("rank", pa.int32()),
        ("item_id", pa.string()),
        ("score", pa.float32()),
        ("method", pa.string()),
        ("model_version", pa.string()),
    ]
)
REJECTS_SCHEMA = pa.schema([("user_id", pa.string()), ("reason", pa.string())])

REASONS = {
    "missing_user_id": "empty user id in the users file",
    "unknown_user": "in neither the training data nor the interactions given",
    "no_source_history": "no source-domain interactions",
    "no_known_source_items": "source interactions only with items the models do not know",
    "fold_in_failed": "new user, and the method could not be rebuilt with new users",
    "fold_in_unsupported": "new user, and the method declares it cannot fold users in",
    "non_finite_scores": "the method produced a non-finite vector for the user",
}


# --------------------------------------------------------------------------- inputs
def model_version(model_dir: Path) -> str:
    """Fingerprint of every file of the model directory (names and contents)."""
    files = sorted(p for p in Path(model_dir).iterdir() if p.is_file())
    return stable_hash({p.name: sha256_file(p) for p in files})


def choose_method(requested: str, trained: Sequence[str], valid_path: Path) -> tuple[str, dict]:
    """The method to score with, and how it was chosen (for the manifest)."""
    if requested != "auto":
        if requested not in trained:
            raise PipelineError(
                f"score.method: '{requested}' was not trained (trained: {', '.join(trained)}); "
                "add it to train.methods or pick another"
            )
        return requested, {"by": "params"}
    if not Path(valid_path).exists():
        raise PipelineError(
            f"score.method is auto but {valid_path} does not exist: run `dvc repro evaluate` "
            "or set score.method"
        )
    valid = read_json(valid_path)
    scored = [
        (m, valid[m][SELECT_METRIC])
        for m in trained
        if m in valid and valid[m].get(SELECT_METRIC) is not None
    ]
    if not scored:
        raise PipelineError(f"{valid_path}: no {SELECT_METRIC} for any trained method")
    # max() keeps the first of equal values: ties go to the earlier method in train order.
    name, value = max(scored, key=lambda mv: mv[1])
    return name, {"by": f"best valid {SELECT_METRIC}", "value": value, "file": str(valid_path)}


def _read_table(path: Path, columns: Sequence[str], what: str) -> pl.LazyFrame:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{what} {path} does not exist")
    if path.suffix.lower() == ".csv":
        frame = pl.scan_csv(path, infer_schema=False)  # ids stay strings ("007" is not 7)
    elif path.suffix.lower() in (".parquet", ".pq") or path.is_dir():
        frame = pl.scan_parquet(path)
    else:
        raise PipelineError(f"{what} {path}: expected a .parquet or .csv file")
    missing = [c for c in columns if c not in frame.collect_schema().names()]
    if missing:
        raise PipelineError(f"{what} {path}: missing column(s) {missing}")
    return frame


def read_users(path: Path) -> list[str | None]:
    """The ``user_id`` column of a Parquet or CSV file, as strings (nulls kept)."""
    frame = _read_table(path, ["user_id"], "users file")
    return frame.select(pl.col("user_id").cast(pl.String)).collect()["user_id"].to_list()


def read_interactions(path: Path, users: Sequence[str], domains: Sequence[str]) -> pl.DataFrame:
    """(user_id, item_id, domain, rating) rows of ``users`` in ``domains`` from a Parquet/CSV."""
    frame = _read_table(path, ["user_id", "item_id", "domain"], "interactions")
    if "rating" not in frame.collect_schema().names():
        frame = frame.with_columns(rating=pl.lit(None, pl.Float32))
    return (
        frame.select(
            pl.col("user_id").cast(pl.String),
            pl.col("item_id").cast(pl.String),
            pl.col("domain").cast(pl.String),
            pl.col("rating").cast(pl.Float32),
        )
        .filter(pl.col("domain").is_in(list(domains)) & pl.col("user_id").is_in(list(users)))
        .collect()
    )


# --------------------------------------------------------------------------- who gets scored
@dataclass
class Plan:
    """Who is scored (sorted ids, their row in the context) and what is excluded for them."""

    user_ids: np.ndarray  # (n,) str, sorted
    known_rows: np.ndarray  # (n,) row in the training context, -1 for users to fold in
    exclude_indptr: np.ndarray  # CSR over the n users: target items they already have
    exclude_items: np.ndarray
    fold_ids: np.ndarray  # ids to fold in (sorted)
    fold_history: foldin.History  # their usable source interactions
    rejects: list[tuple[str | None, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def _index(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each id in ``sorted_ids``, -1 when absent."""
    if not len(sorted_ids):
        return np.full(len(ids), -1, dtype=np.int64)
    pos = np.searchsorted(sorted_ids, ids)
    pos = np.minimum(pos, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1).astype(np.int64)


def plan(
    data: cdr_data.CDRData,
    ctx: FitContext,
    requested: Sequence[str | None],
    fresh: pl.DataFrame | None,
) -> Plan:
    """Sort the requested users into known (scored as trained), to fold in, and rejected."""
    rejects: list[tuple[str | None, str]] = []
    counts = Counter(users_in=len(requested))
    present = [u for u in requested if u is not None and u != ""]
    rejects += [(u, "missing_user_id") for u in requested if u is None or u == ""]
    ids = np.array(sorted(set(present)), dtype=str)
    counts["duplicates"] = len(present) - len(ids)
    counts["unique_users"] = len(ids)

    known = _index(data.user_ids, ids)
    trained_source = np.zeros(len(ids), dtype=bool)
    trained_source[known >= 0] = ctx.src.has_source[known[known >= 0]]

    n_src_rows = np.zeros(len(ids), dtype=np.int64)  # fresh source rows, any item
    in_fresh = np.zeros(len(ids), dtype=bool)
    src_rows = tgt_rows = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if fresh is not None and fresh.height:
        row = _index(ids, fresh["user_id"].to_numpy().astype(str))
        in_fresh[row[row >= 0]] = True
        domain = fresh["domain"].to_numpy()
        items = fresh["item_id"].to_numpy().astype(str)
        rating = fresh["rating"].to_numpy()
        is_src = (domain == data.source) & (row >= 0)
        n_src_rows = np.bincount(row[is_src], minlength=len(ids))
        src_item = _index(data.src_item_ids, items)
        usable = is_src & (src_item >= 0)
        if data.explicit:
            counts["source_rows_without_rating"] = int((usable & np.isnan(rating)).sum())
            usable &= ~np.isnan(rating)
        counts["source_rows_unknown_item"] = int((is_src & (src_item < 0)).sum())
        r = np.where(np.isnan(rating), 1.0, rating) if not data.explicit else rating
        src_rows = (row[usable], src_item[usable], r[usable].astype(np.float32))
        is_tgt = (domain == data.target) & (row >= 0)
        tgt_item = _index(data.tgt_item_ids, items)
        counts["target_rows_unknown_item"] = int((is_tgt & (tgt_item < 0)).sum())
        keep = is_tgt & (tgt_item >= 0)
        tgt_rows = (row[keep], tgt_item[keep], np.ones(int(keep.sum()), np.float32))

    usable_src = np.bincount(src_rows[0], minlength=len(ids))
    fold = ~trained_source & (usable_src > 0)
    scored = trained_source | fold
    for i in np.flatnonzero(~scored):
        if n_src_rows[i] > 0:
            reason = "no_known_source_items"
        elif known[i] >= 0 or in_fresh[i]:
            reason = "no_source_history"
        else:
            reason = "unknown_user"
        rejects.append((str(ids[i]), reason))

    # Target items already had: visible training rows of known users, plus the fresh rows.
    tr = data.tgt_train
    pos_of_user = np.full(data.n_users, -1, dtype=np.int64)
    pos_of_user[known[known >= 0]] = np.flatnonzero(known >= 0)
    mask = pos_of_user[tr.user] >= 0
    ex_row = np.concatenate([pos_of_user[tr.user[mask]], tgt_rows[0]])
    ex_item = np.concatenate([tr.item[mask], tgt_rows[1]])
    # Re-index to the scored users only, unique (user, item) pairs in (user, item) order.
    scored_pos = np.full(len(ids), -1, dtype=np.int64)
    scored_pos[scored] = np.arange(int(scored.sum()))
    keep = scored_pos[ex_row] >= 0
    pairs = np.unique(np.stack([scored_pos[ex_row[keep]], ex_item[keep]], 1), axis=0)
    pairs = pairs.reshape(-1, 2)
    n_scored = int(scored.sum())
    indptr = np.concatenate([[0], np.cumsum(np.bincount(pairs[:, 0], minlength=n_scored))])

    fold_pos = np.full(len(ids), -1, dtype=np.int64)
    fold_pos[fold] = np.arange(int(fold.sum()))
    sel = fold_pos[src_rows[0]] >= 0
    history = foldin.History.from_rows(
        fold_pos[src_rows[0][sel]], src_rows[1][sel], src_rows[2][sel], int(fold.sum())
    )
    counts["known"] = int(trained_source.sum())
    counts["to_fold_in"] = int(fold.sum())
    return Plan(
        user_ids=ids[scored],
        known_rows=np.where(trained_source, known, -1)[scored],
        exclude_indptr=indptr.astype(np.int64),
        exclude_items=pairs[:, 1].astype(np.int64),
        fold_ids=ids[fold],
        fold_history=history,
        rejects=rejects,
        counts=dict(counts),
    )


def stage_users(data: cdr_data.CDRData) -> list[str]:
    """The split's cold users: validation and test."""
    rows = np.concatenate([data.cold_users("valid"), data.cold_users("test")])
    return sorted(data.user_ids[rows].tolist())


# --------------------------------------------------------------------------- fold-in
def _fold_in(
    fitted: Fitted, name: str, plan_: Plan, params: Params
) -> tuple[FitContext, Method, np.ndarray, dict]:
    """The context and method that score ``plan_``'s users; each user's row in that context.

    Users who cannot be folded in are moved to the rejects (and out of ``plan_``).
    """
    ctx, method = fitted.ctx, fitted.methods[name]
    info: dict[str, Any] = {"users": 0}
    if not len(plan_.fold_ids):
        return ctx, method, plan_.known_rows, info
    reason = None
    if not getattr(method, "supports_fold_in", True):
        reason, detail = "fold_in_unsupported", f"{name} sets supports_fold_in = False"
    else:
        try:
            start = time.perf_counter()
            regs = foldin.calibrate(ctx, params.train.base)
            extended = foldin.extend_context(
                ctx, plan_.fold_ids, plan_.fold_history, regs, params.train.base.shrinkage
            )
            ext, rows = extended.ctx, extended.rows
            cls = type(method)
            ext_method = cls(method.config)
            with torch.no_grad():
                ext_method.load_state_dict(ext, method.state_dict())
            info.update(
                users=len(plan_.fold_ids),
                regularisation=regs.as_dict(),
                padded_user_features=extended.padded,
                known_users_max_change=_known_change(ctx, method, ext, ext_method),
                seconds=round(time.perf_counter() - start, 3),
            )
            if info["known_users_max_change"] > 1e-4:
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
        plan_.rejects += [(str(u), reason) for u in plan_.fold_ids]
        keep = plan_.known_rows >= 0
        _drop_users(plan_, keep)
        return ctx, method, plan_.known_rows, info
    fold_row = dict(zip(plan_.fold_ids.tolist(), rows.tolist(), strict=True))
    ctx_rows = np.array(
        [
            r if r >= 0 else fold_row[u]
            for u, r in zip(plan_.user_ids, plan_.known_rows, strict=True)
        ],
        dtype=np.int64,
    )
    return ext, ext_method, ctx_rows, info


def _known_change(ctx: FitContext, method: Method, ext: FitContext, ext_method: Method) -> float:
    """Largest score change, for a sample of known users, between the two contexts."""
    users = np.flatnonzero(ctx.src.has_source)[:64]
    if not len(users):
        return 0.0
    with torch.no_grad():
        a = method.ranking_factors(ctx, users).scores()
        b = ext_method.ranking_factors(ext, users).scores()
    return float((a - b).abs().max())


def _drop_users(plan_: Plan, keep: np.ndarray) -> None:
    """Keep only the users where ``keep`` (re-slicing the exclusion CSR)."""
    counts = np.diff(plan_.exclude_indptr)
    owner = np.repeat(np.arange(len(counts)), counts)
    plan_.exclude_items = plan_.exclude_items[keep[owner]]
    plan_.exclude_indptr = np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64)
    plan_.user_ids = plan_.user_ids[keep]
    plan_.known_rows = plan_.known_rows[keep]


# --------------------------------------------------------------------------- ranking
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"score.device: {name} requested but CUDA is not available")
    return torch.device(name)


@dataclass
class Chunk:
    lo: int  # first user (position in the scored order)
    idx: np.ndarray  # (c, k) item indices, best first
    vals: np.ndarray  # (c, k) float32 scores; -inf where fewer than k items were left
    bad: np.ndarray  # (c,) bool: users whose vector was not finite (no list)


def rank_chunks(
    user_vectors: Callable[[int, int], torch.Tensor],
    n_users: int,
    item: torch.Tensor,
    k: int,
    chunk_size: int,
    device: torch.device,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    progress: bool = True,
) -> Iterator[Chunk]:
    """Top-K per user, ``chunk_size`` users at a time: generation, product, exclusions, top-K.

    ``user_vectors(lo, hi)``: the (hi - lo, d) vectors of users ``lo:hi``; ``item``: (n, d);
    ``exclude``: CSR (indptr over the users, item indices) of items never to return.
    """
    item = item.to(device=device, dtype=torch.float32).contiguous()
    if not torch.isfinite(item).all():
        raise PipelineError("the method's item vectors are not finite: the model is broken")
    # disable=None: a bar on a terminal, none in logs (DVC, cron)
    bar = tqdm(total=n_users, unit="user", desc="score", disable=None if progress else True)
    try:
        for lo in range(0, n_users, chunk_size):
            hi = min(lo + chunk_size, n_users)
            with torch.no_grad():
                users = user_vectors(lo, hi).to(device=device, dtype=torch.float32)
                bad = ~torch.isfinite(users).all(1)
                if bad.any():
                    users = torch.where(bad[:, None], torch.zeros_like(users), users)
                scores = users @ item.T
                if exclude is not None:
                    indptr, items = exclude
                    a, b = indptr[lo], indptr[hi]
                    if b > a:
                        rows = np.repeat(np.arange(hi - lo), np.diff(indptr[lo : hi + 1]))
                        scores[
                            torch.as_tensor(rows, device=device),
                            torch.as_tensor(items[a:b], device=device),
                        ] = float("-inf")
                idx, vals = top_k(scores, k)
                del scores  # before the next chunk's: one score matrix alive at a time
            yield Chunk(lo, idx.cpu().numpy(), vals.cpu().numpy(), bad.cpu().numpy())
            bar.update(hi - lo)
    finally:
        bar.close()


# --------------------------------------------------------------------------- writing
class PartsWriter:
    """``part-NNNNN.parquet`` files of at most ``rows_per_part`` rows, one row group per chunk."""

    def __init__(
        self,
        directory: Path,
        item_ids: np.ndarray,
        method: str,
        version: str,
        rows_per_part: int,
        meta: dict | None = None,
    ):
        self.directory = Path(directory)
        self.items = pa.array(item_ids, pa.string())
        self.method = pa.array([method], pa.string())
        self.version = pa.array([version], pa.string())
        self.rows_per_part = rows_per_part
        self.meta = meta
        self.parts: list[str] = []
        self.rows = 0
        self._writer: ParquetPartWriter | None = None

    def _open(self) -> ParquetPartWriter:
        if self._writer is None or self._writer.rows >= self.rows_per_part:
            self.close()
            name = f"part-{len(self.parts):05d}.parquet"
            self.parts.append(name)
            self._writer = ParquetPartWriter(self.directory / name, SCHEMA, self.meta)
        return self._writer

    def write(self, user_ids: np.ndarray, idx: np.ndarray, vals: np.ndarray) -> int:
        """Rows of users ``user_ids`` (c,), best items ``idx`` (c, k) with scores ``vals``."""
        c, k = idx.shape
        valid = np.isfinite(vals)
        if valid.all():
            counts = np.full(c, k)
            flat_idx, flat_vals = idx.reshape(-1), vals.reshape(-1)
            rank = np.tile(np.arange(1, k + 1, dtype=np.int32), c)
        else:  # fewer than k items left for some users (-inf entries come last in a row)
            counts = valid.sum(1)
            flat_idx, flat_vals = idx[valid], vals[valid]
            rank = np.cumsum(valid, 1, dtype=np.int32)[valid]
        n = int(counts.sum())
        if n == 0:
            return 0
        zeros = pa.array(np.zeros(n, dtype=np.int32))
        table = pa.table(
            {
                "user_id": pa.array(user_ids, pa.string()).take(
                    pa.array(np.repeat(np.arange(c, dtype=np.int32), counts))
                ),
                "rank": pa.array(rank, pa.int32()),
                "item_id": self.items.take(pa.array(flat_idx)),
                "score": pa.array(flat_vals.astype(np.float32, copy=False), pa.float32()),
                "method": self.method.take(zeros),
                "model_version": self.version.take(zeros),
            },
            schema=SCHEMA,
        )
        # Row groups stay whole: a part rotates only between chunks.
        self._open().write(table)
        self.rows += n
        return n

    def empty(self) -> None:
        """A part with the schema and no rows (so an empty partition still reads)."""
        self._open()
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


class BackgroundWriter:
    """Runs a writer's ``write`` calls in one worker thread, in order, ``depth`` chunks ahead,
    so Parquet encoding overlaps the next chunk's scoring. A failure in the worker is raised
    by the next ``write`` or by ``close``."""

    def __init__(self, writer: PartsWriter, depth: int = 2):
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="parquet-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after a failure, drain without writing
                try:
                    self.writer.write(*item)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    self._error = exc

    def write(self, *args) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(args)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        self.writer.close()

    def abort(self) -> None:
        if self._thread.is_alive():
            self._error = self._error or RuntimeError("aborted")
            self._queue.put(None)
            self._thread.join()
        self.writer.abort()


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One scoring run at a time per output directory (an advisory lock on the directory)."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(f"{out}: another scoring run holds it; wait for it") from None
        yield
    finally:
        os.close(fd)


def _recover(out: Path, name: str) -> None:
    """Undo what a killed run left: restore a partition moved aside, drop temporary builds."""
    path, old = out / name, out / f".{name}.old"
    if not path.exists() and (old / "_SUCCESS").exists():
        os.replace(old, path)
        log.warning("%s: restored the previous partition left aside by a killed run", path)
    for leftover in out.glob(f".{name}.*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
        log.info("removed %s (left by an interrupted run)", leftover)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_date(date: str) -> str:
    try:
        ok = datetime.date.fromisoformat(date).isoformat() == date
    except ValueError:
        ok = False
    if not ok:
        raise PipelineError(f"--date {date!r}: expected YYYY-MM-DD")
    return date


# --------------------------------------------------------------------------- the stage
def score(
    params: Params,
    users_path: Path | None = None,
    interactions_path: Path | None = None,
    out: Path | None = None,
    date: str | None = None,
    model_dir: Path = paths.MODELS,
    progress: bool = True,
) -> dict:
    """Score users into ``out/dt=date/``; returns the manifest."""
    start = time.perf_counter()
    sp = params.score
    pair = params.pair
    out = Path(out) if out is not None else SCORES
    date = check_date(date or sp.date or datetime.datetime.now(datetime.UTC).date().isoformat())
    data = cdr_data.load(paths.INTERACTIONS, paths.ROLES, pair.source, pair.target)
    extra = features.condition_extra(
        data, params.train, pair.source, paths.USER_PROFILES, paths.ITEM_FEATURES
    )
    fitted = store.load(model_dir, data, params.train, extra)
    name, selection = choose_method(sp.method, list(fitted.methods), paths.VALID)
    version = model_version(model_dir)

    requested = stage_users(data) if users_path is None else read_users(users_path)
    fresh = None
    if interactions_path is not None:
        present = sorted({u for u in requested if u})
        fresh = read_interactions(interactions_path, present, (pair.source, pair.target))
    todo = plan(data, fitted.ctx, requested, fresh)
    ctx, method, rows, fold_info = _fold_in(fitted, name, todo, params)

    steps_ctx = contextlib.nullcontext()
    if sp.steps is not None and hasattr(method, "with_steps"):
        steps_ctx = method.with_steps(sp.steps)
    elif sp.steps is not None:
        log.warning("score.steps is set but %s does not sample: ignored", name)
    device = resolve_device(sp.device)

    def user_vectors(lo: int, hi: int) -> torch.Tensor:
        return method.ranking_factors(ctx, rows[lo:hi]).user

    n = len(todo.user_ids)
    manifest: dict[str, Any] = {}
    name_dir = f"dt={date}"
    with _locked(out):
        _recover(out, name_dir)
        with atomic_dir(out / name_dir) as tmp, steps_ctx, torch.no_grad():
            os.chmod(tmp, 0o777 & ~_umask())  # a temporary directory is private; outputs are not
            steps = getattr(method, "sample_steps", None)
            if n:
                item = method.ranking_factors(ctx, rows[:1]).item
            else:
                item = torch.zeros(data.n_tgt_items, 1)
            meta = {"method": name, "model_version": version, "date": date, "k": sp.k}
            parts = PartsWriter(tmp, data.tgt_item_ids, name, version, sp.rows_per_part, meta)
            writer = BackgroundWriter(parts)
            non_finite: list[str] = []
            try:
                for chunk in rank_chunks(
                    user_vectors,
                    n,
                    item,
                    sp.k,
                    sp.chunk_size,
                    device,
                    exclude=(todo.exclude_indptr, todo.exclude_items),
                    progress=progress,
                ):
                    ids = todo.user_ids[chunk.lo : chunk.lo + len(chunk.idx)]
                    if chunk.bad.any():
                        non_finite += ids[chunk.bad].tolist()
                        chunk.vals[chunk.bad] = -np.inf
                    writer.write(ids, chunk.idx, chunk.vals)
                writer.close()
                if not parts.parts:  # an empty partition still has a readable part
                    parts.empty()
            except BaseException:
                writer.abort()
                raise
            rejects = todo.rejects + [(u, "non_finite_scores") for u in non_finite]
            rejects.sort(key=lambda r: ("" if r[0] is None else r[0], r[1]))
            write_parquet(
                pa.table(
                    {"user_id": [r[0] for r in rejects], "reason": [r[1] for r in rejects]},
                    schema=REJECTS_SCHEMA,
                ),
                tmp / "rejects.parquet",
                {"reasons": REASONS},
                schema=REJECTS_SCHEMA,
            )
            by_reason = dict(sorted(Counter(r[1] for r in rejects).items()))
            manifest = {
                "date": date,
                "method": name,
                "selection": selection,
                "model_version": version,
                "data_fingerprint": store.data_fingerprint(data),
                "params_hash": stable_hash(
                    {
                        "pair": pair.model_dump(),
                        "train": params.train.model_dump(),
                        "score": sp.model_dump(exclude={"date"}),
                    }
                ),
                "source": pair.source,
                "target": pair.target,
                "k": sp.k,
                "steps": steps,
                "device": device.type,
                "users_file": None if users_path is None else str(users_path),
                "interactions_file": None if interactions_path is None else str(interactions_path),
                "counts": {
                    **todo.counts,
                    "scored": n - len(non_finite),
                    "rejected": len(rejects),
                    "rows": parts.rows,
                },
                "rejected_by_reason": by_reason,
                "fold_in": fold_info,
                "parts": parts.parts,
                "columns": SCHEMA.names,
            }
            write_json(manifest, tmp / "manifest.json")
            write_text("", tmp / "_SUCCESS")
    log.info(
        "%s: %d users in, %d scored (%d folded in), %d rejected %s; %s, K=%d, %.1f s",
        out / name_dir,
        todo.counts["users_in"],
        manifest["counts"]["scored"],
        fold_info.get("users", 0),
        len(rejects),
        by_reason or "",
        name,
        sp.k,
        time.perf_counter() - start,
    )
    return manifest


def main(argv: Sequence[str] | None = None) -> dict:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--users", type=Path, help="Parquet/CSV with user_id (default: split's cold users)"
    )
    p.add_argument(
        "--interactions",
        type=Path,
        help="fresh interactions, Parquet/CSV (default: the training data, held-out rows hidden)",
    )
    p.add_argument("--out", type=Path, help=f"output directory (default: {SCORES})")
    p.add_argument("--date", help="partition date YYYY-MM-DD (default: score.date, else today UTC)")
    p.add_argument("--models", type=Path, default=paths.MODELS, help="trained model directory")
    args = p.parse_args(argv)
    return score(
        cli.params_from(args),
        users_path=args.users,
        interactions_path=args.interactions,
        out=args.out,
        date=args.date,
        model_dir=args.models,
    )


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
