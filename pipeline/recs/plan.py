"""Whom to score: the users file, the fresh interactions, and every requested user sorted into
known (scored with the vectors they were trained with), to fold in, or rejected with a reason.

Users the models know keep their trained vectors (their newer source rows count at the next
training). Users new since training, with source interactions on items the source model
knows, are folded in (:mod:`pipeline.recs.fold`). Everyone else lands in the rejects with one
of :data:`REASONS`; nobody is dropped silently.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.cdr import foldin
from pipeline.cdr.data import CDRData
from pipeline.cdr.methods import FitContext
from pipeline.errors import InputError, PipelineError
from pipeline.io import read_id_lines, unreadable

log = logging.getLogger("score")

REASONS = {
    "missing_user_id": "empty user id in the users file",
    "unknown_user": "in neither the training data nor the interactions given",
    "no_source_history": "no source-domain interactions",
    "no_known_source_items": "source interactions only with items the models do not know",
    "no_rated_source_items": "source interactions with known items, none of them with a rating",
    "fold_in_failed": "new user, and the method could not be rebuilt with new users",
    "fold_in_unsupported": "new user, and the method declares it cannot fold users in",
    "non_finite_scores": "the method produced a non-finite vector for the user",
}


USERS_FORMATS = (
    "a Parquet or CSV file with a user_id column, or a .txt file with one user id per line"
)
_TABLE_ERRORS = (pl.exceptions.PolarsError, OSError, pa.ArrowException)


def _read_table(
    path: Path, columns: Sequence[str], what: str, expected: str = "a .parquet or .csv file"
) -> pl.LazyFrame:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{what} {path} does not exist")
    if path.suffix.lower() == ".csv":
        frame = pl.scan_csv(path, infer_schema=False)  # ids stay strings ("007" is not 7)
    elif path.suffix.lower() in (".parquet", ".pq") or path.is_dir():
        frame = pl.scan_parquet(path)
    else:
        raise PipelineError(f"{what} {path}: expected {expected}")
    try:
        names = frame.collect_schema().names()
    except pl.exceptions.NoDataError:
        raise InputError(f"the {what} is empty (no header)", path=path) from None
    except _TABLE_ERRORS as exc:
        raise unreadable(path, exc, f"check the {what}") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise PipelineError(f"{what} {path}: missing column(s) {missing}; expected {expected}")
    return frame


def _collect(frame: pl.LazyFrame, path: Path, what: str) -> pl.DataFrame:
    try:
        return frame.collect()
    except _TABLE_ERRORS as exc:
        raise unreadable(path, exc, f"check the {what}") from None


def read_users(path: Path) -> list[str | None]:
    """The requested user ids, as strings: the ``user_id`` column of a Parquet or CSV file
    (an empty or null id stays, to be rejected as ``missing_user_id``), or the lines of a
    ``.txt`` file (:func:`pipeline.io.read_id_lines`). Spaces around an id are trimmed."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise PipelineError(f"users file {path} does not exist")
        return [user for _, user in read_id_lines(path)]
    frame = _read_table(path, ["user_id"], "users file", USERS_FORMATS)
    dtype = frame.collect_schema()["user_id"]
    if dtype != pl.String:
        log.warning("%s: user_id is %s, read as text (an id like 007 is already 7)", path, dtype)
    raw = pl.col("user_id").cast(pl.String)
    users = _collect(frame.select(raw, trimmed=raw.str.strip_chars()), path, "users file")
    changed = int((users["user_id"] != users["trimmed"]).sum())
    if changed:
        log.warning("%s: %d user ids had spaces around them; trimmed", path, changed)
    return users["trimmed"].to_list()


def read_interactions(
    path: Path,
    users: Sequence[str | None],
    domains: Sequence[str],
    scales: dict[str, tuple[float, float]] | None = None,
) -> pl.DataFrame:
    """(user_id, item_id, domain, rating) rows of ``users`` in ``domains`` from a Parquet/CSV.

    A rating (where given) must be a number within its domain's ``scales`` entry, the rating
    scale of the data the models were trained on: a rating off that scale would move the lists
    without a word, so it fails the run, naming the file, row and value."""
    path = Path(path)
    users = sorted({u for u in users if u})
    frame = _read_table(path, ["user_id", "item_id", "domain"], "interactions")
    if "rating" not in frame.collect_schema().names():
        frame = frame.with_columns(rating=pl.lit(None, pl.Float32))
    is_csv = path.suffix.lower() == ".csv"
    query = (
        frame.with_row_index("row", offset=2 if is_csv else 1)  # a CSV record (header: 1), or row
        .select(
            "row",
            pl.col("user_id").cast(pl.String).str.strip_chars(),
            pl.col("item_id").cast(pl.String),
            pl.col("domain").cast(pl.String),
            pl.col("rating").cast(pl.String).str.strip_chars().alias("given"),
        )
        .with_columns(rating=pl.col("given").cast(pl.Float32, strict=False))
        .filter(pl.col("domain").is_in(list(domains)) & pl.col("user_id").is_in(list(users)))
    )
    rows = _collect(query, path, "interactions")
    _check_ratings(rows, path, scales or {}, "line" if is_csv else "row")
    return rows.drop("row", "given")


def csv_lines(path: Path, rows: Sequence[int]) -> dict[int, int]:
    """The line of ``path`` on which each CSV record ``rows`` starts (header: row 1), for error
    messages: a quoted field may span lines, so a record's number is not always its line."""
    wanted, out, end = set(rows), {}, 0
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        try:
            for row, _ in enumerate(reader, start=1):
                if row in wanted:
                    out[row] = end + 1
                    if len(out) == len(wanted):
                        break
                end = reader.line_num
        except csv.Error:  # a record the csv module refuses (polars read it): record numbers
            return {r: r for r in rows}
    return {r: out.get(r, r) for r in rows}


def _where(bad: pl.DataFrame, where: str, lines: dict[int, int]) -> str:
    shown = ", ".join(str(lines[r]) for r in bad["row"][:5]) + ("..." if bad.height > 5 else "")
    return (
        " (1 such row)"
        if bad.height == 1
        else f" ({bad.height} such rows of the requested users: {where}s {shown})"
    )


def _fail(bad: pl.DataFrame, message: str, path: Path, where: str) -> None:
    """Raise for the ``bad`` rows, naming the first one's line (a CSV) or row (Parquet)."""
    rows = bad["row"][:5].to_list()
    lines = csv_lines(path, rows) if where == "line" else {r: r for r in rows}
    raise InputError(
        f"{message}{_where(bad, where, lines)}", path=path, line=lines[rows[0]], field="rating"
    )


def _check_ratings(
    rows: pl.DataFrame, path: Path, scales: dict[str, tuple[float, float]], where: str
) -> None:
    given = pl.col("given").is_not_null() & (pl.col("given") != "")
    bad = rows.filter(given & pl.col("rating").is_null())
    if bad.height:
        _fail(bad, f"{bad['given'][0]!r} is not a number", path, where)
    for domain, (low, high) in scales.items():
        mine = rows.filter((pl.col("domain") == domain) & pl.col("rating").is_not_null())
        off = mine.filter(~pl.col("rating").is_between(low, high) | pl.col("rating").is_nan())
        if off.height:
            message = (
                f"{off['rating'][0]:g} is off the {domain} rating scale of the training data, "
                f"{low:g} to {high:g}"
            )
            _fail(off, message, path, where)


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

    def digest(self) -> str:
        """sha256 of who is scored and with what (ids, rows, exclusions, fold-in history)."""
        h = hashlib.sha256("\n".join(self.user_ids.tolist()).encode())
        h.update("\n".join(self.fold_ids.tolist()).encode())
        for arr in (self.known_rows, self.exclude_indptr, self.exclude_items):
            h.update(np.ascontiguousarray(arr).tobytes())
        for arr in (self.fold_history.indptr, self.fold_history.items, self.fold_history.ratings):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    def reject_fold_ins(self, reason: str) -> None:
        """Move the users to fold in to the rejects with ``reason``; the known users stay."""
        self.rejects += [(str(u), reason) for u in self.fold_ids]
        keep = self.known_rows >= 0
        counts = np.diff(self.exclude_indptr)
        owner = np.repeat(np.arange(len(counts)), counts)
        self.exclude_items = self.exclude_items[keep[owner]]
        self.exclude_indptr = np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64)
        self.user_ids = self.user_ids[keep]
        self.known_rows = self.known_rows[keep]


def _index(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each id in ``sorted_ids``, -1 when absent."""
    if not len(sorted_ids):
        return np.full(len(ids), -1, dtype=np.int64)
    pos = np.searchsorted(sorted_ids, ids)
    pos = np.minimum(pos, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1).astype(np.int64)


def require_someone(todo: Plan, what: str) -> None:
    """A run that would score nobody fails before it writes (the date's previous partition
    stays): an empty users file, or one whose every user is rejected, is a broken input, and a
    scheduler should hear of it rather than publish empty lists."""
    if len(todo.user_ids):
        return
    if not todo.counts.get("users_in"):
        raise PipelineError(f"nobody to score: {what} holds no user id")
    reasons = Counter(reason for _, reason in todo.rejects).most_common()
    raise PipelineError(
        f"nobody to score: all {todo.counts['users_in']} users of {what} are rejected "
        f"({', '.join(f'{r}: {n}' for r, n in reasons)}; see pipeline.recs.plan.REASONS); "
        "nothing was written"
    )


def plan(
    data: CDRData,
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
    n_known_src = np.zeros(len(ids), dtype=np.int64)  # of those, on items the models know
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
        n_known_src = np.bincount(row[usable], minlength=len(ids))
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
        if n_known_src[i] > 0:
            reason = "no_rated_source_items"
        elif n_src_rows[i] > 0:
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


def stage_users(data: CDRData) -> list[str]:
    """The split's cold users: validation and test."""
    rows = np.concatenate([data.cold_users("valid"), data.cold_users("test")])
    return sorted(data.user_ids[rows].tolist())
