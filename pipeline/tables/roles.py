"""Cold-start roles of a (source, target) pair: which overlapping users are held out as test
and validation users (the ``split`` stage, and the benchmark's pinned splits). The split stage
reads the users one range of ids at a time (:mod:`pipeline.tables.buckets`): a survey for the
overlapping users, then the roles, range by range, so memory does not grow with the release."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config.split import SplitParams
from pipeline.errors import InputError
from pipeline.io import read_id_lines
from pipeline.tables.buckets import bucket_count, key_ranges


def read_user_file(path: str | Path, known: set[str], what: str) -> list[str]:
    """User ids from a text file (one per line, blank lines and ``#`` comments ignored)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file not found", path=path)
    users, seen = [], set()
    for number, user in read_id_lines(path):
        if user not in known:
            raise InputError(
                f"user '{user}' is not an overlapping user of this pair (it must have history in "
                "both the source and the target domain)",
                path=path,
                line=number,
                field="user_id",
            )
        if user not in seen:
            users.append(user)
            seen.add(user)
    return users


def cold_users(overlap: pl.Series, params: SplitParams) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``overlap`` (the overlapping users' ids, sorted) of the test and of the
    validation users; deterministic from ``params.seed`` and the ids alone."""
    n = len(overlap)
    rng = np.random.default_rng(params.seed)
    if params.test_users_file:
        ids = read_user_file(params.test_users_file, set(overlap), "split.test_users_file")
        test = _positions(overlap, ids)
    else:
        test = rng.permutation(n)[: round(params.test_fraction * n)]
    rest = np.setdiff1d(np.arange(n), test)  # in id order
    if params.valid_users_file:
        known = set(overlap.gather(rest))
        ids = read_user_file(params.valid_users_file, known, "split.valid_users_file")
        valid = _positions(overlap, ids)
    else:
        valid = rest[rng.permutation(len(rest))[: round(params.valid_fraction * n)]]
    return test, valid


def _positions(ids: pl.Series, wanted: list[str]) -> np.ndarray:
    return ids.search_sorted(pl.Series(wanted, dtype=pl.String)).to_numpy()


def assign_roles(
    source_users: set[str], target_users: set[str], params: SplitParams
) -> dict[str, str]:
    """user_id -> role; deterministic from ``params.seed`` and the id sets alone."""
    overlap = pl.Series(sorted(source_users & target_users), dtype=pl.String)
    test, valid = cold_users(overlap, params)
    roles = dict.fromkeys(source_users - target_users, "source_only")
    roles.update(dict.fromkeys(target_users - source_users, "side"))
    roles.update(dict.fromkeys(overlap, "train_overlap"))
    roles.update(dict.fromkeys(overlap.gather(valid), "valid_cold"))
    roles.update(dict.fromkeys(overlap.gather(test), "test_cold"))
    return roles


ROLE_CODES = ("source_only", "side", "train_overlap", "valid_cold", "test_cold")
SOURCE_ONLY, SIDE, TRAIN, VALID, TEST = range(5)


@dataclass
class Pair:
    """The users of a (source, target) pair, surveyed one range of ids at a time."""

    ranges: list[pl.Expr]  # ranges of user ids, in id order
    overlap: pl.Series  # ids of the users in both domains, sorted
    n_source: int  # users with history in the source
    n_target: int


def survey_pair(path: Path, source: str, target: str) -> Pair:
    """Count the pair's users and list the overlapping ones; ``path``: the users table
    (``user_id``, ``domain``, ``n_interactions``)."""
    users = _scan(path)
    ranges = key_ranges([path], "user_id", bucket_count(pq.read_metadata(path).num_rows))
    overlap, n_source, n_target = [], 0, 0
    for where in ranges:
        table = _pair_users(users.filter(where), source, target)
        n_source += int((table["n_source"] > 0).sum())
        n_target += int((table["n_target"] > 0).sum())
        # Copied out: a filtered string column would keep the whole range's buffers alive.
        ids = table.filter(_both())["user_id"].to_arrow().cast(pa.large_string())
        overlap.append(pl.Series("user_id", ids, dtype=pl.String))
    return Pair(ranges, pl.concat(overlap), n_source, n_target)


def cold_codes(pair: Pair, params: SplitParams) -> np.ndarray:
    """The role code (TRAIN, VALID or TEST) of every overlapping user, in id order."""
    test, valid = cold_users(pair.overlap, params)
    codes = np.full(len(pair.overlap), TRAIN, dtype=np.int8)
    codes[valid], codes[test] = VALID, TEST
    return codes


def role_ranges(
    path: Path, pair: Pair, codes: np.ndarray, source: str, target: str
) -> Iterator[pl.DataFrame]:
    """Every user of the pair with its role, ``n_source`` and ``n_target`` (0 where none), a
    range of ids at a time, in id order: the rows of ``data/split/roles.parquet``."""
    done, users = 0, _scan(path)
    for where in pair.ranges:
        table = _pair_users(users.filter(where), source, target)
        code = np.where(table["n_target"].to_numpy() == 0, SOURCE_ONLY, TRAIN).astype(np.int8)
        code[table["n_source"].to_numpy() == 0] = SIDE
        both = np.flatnonzero(code == TRAIN)
        code[both] = codes[done : done + len(both)]
        done += len(both)
        role = pl.Series("role", code).replace_strict(
            dict(enumerate(ROLE_CODES)), return_dtype=pl.String
        )
        yield table.select("user_id", role, "n_source", "n_target")


def _scan(path: Path) -> pl.LazyFrame:
    return pl.scan_parquet(path).select("user_id", "domain", "n_interactions")


def _pair_users(users: pl.LazyFrame, source: str, target: str) -> pl.DataFrame:
    """One row per user of the pair, sorted by id, with its ``n_source`` and ``n_target``."""
    side = {}
    for name, domain in (("n_source", source), ("n_target", target)):
        side[name] = users.filter(pl.col("domain") == domain).select(
            "user_id", pl.col("n_interactions").alias(name)
        )
    table = side["n_source"].join(side["n_target"], on="user_id", how="full", coalesce=True)
    table = table.with_columns(pl.col("n_source", "n_target").fill_null(0)).sort("user_id")
    return table.collect()


def _both() -> pl.Expr:
    return (pl.col("n_source") > 0) & (pl.col("n_target") > 0)
