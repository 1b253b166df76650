"""Index one (source, target) pair into arrays every method trains on.

Users, source items and target items get contiguous indices in sorted-id order (so the
indexing never depends on input row order or Python's hash seed). Target interactions are
split by user role: ``train`` holds only training-overlap and side users; the valid and test
cold users' target rows are held out and never reach a training set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

ROLE_CODES = {"source_only": 0, "train_overlap": 1, "side": 2, "valid_cold": 3, "test_cold": 4}


@dataclass
class Interactions:
    """Parallel arrays: user index, item index, rating (NaN-free; 1.0 for implicit data)."""

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def select(self, mask: np.ndarray) -> Interactions:
        return Interactions(self.user[mask], self.item[mask], self.rating[mask])


@dataclass
class CDRData:
    source: str
    target: str
    explicit: bool
    user_ids: np.ndarray  # (n_users,) str, sorted
    role: np.ndarray  # (n_users,) int8, ROLE_CODES
    src_item_ids: np.ndarray
    tgt_item_ids: np.ndarray
    src: Interactions  # every source interaction (cold users keep their source history)
    tgt_train: Interactions  # target rows of train_overlap and side users only
    tgt_valid: Interactions  # held out: valid_cold users' target rows
    tgt_test: Interactions  # held out: test_cold users' target rows
    # (lowest, highest) rating of the data (both domains' training rows); predictions are
    # clipped to it. (1, 1) for implicit feedback.
    rating_range: tuple[float, float] = (1.0, 5.0)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_src_items(self) -> int:
        return len(self.src_item_ids)

    @property
    def n_tgt_items(self) -> int:
        return len(self.tgt_item_ids)

    def users(self, *roles: str) -> np.ndarray:
        codes = [ROLE_CODES[r] for r in roles]
        return np.flatnonzero(np.isin(self.role, codes))

    def heldout(self, which: str) -> Interactions:
        return {"valid": self.tgt_valid, "test": self.tgt_test}[which]

    def cold_users(self, which: str) -> np.ndarray:
        return self.users("valid_cold" if which == "valid" else "test_cold")

    def check_no_leakage(self) -> None:
        """Fail loudly if any cold user's target row reached the training set."""
        cold = np.isin(
            self.role[self.tgt_train.user], [ROLE_CODES["valid_cold"], ROLE_CODES["test_cold"]]
        )
        if cold.any():
            raise AssertionError(f"{int(cold.sum())} cold-user target rows in the training set")


def build(interactions: pl.DataFrame, roles: pl.DataFrame, source: str, target: str) -> CDRData:
    """Assemble :class:`CDRData` from the prepared interactions and the split's roles."""
    roles = roles.select("user_id", "role").sort("user_id")
    user_ids = roles["user_id"].to_numpy().astype(str)
    role = np.array([ROLE_CODES[r] for r in roles["role"].to_list()], dtype=np.int8)
    uidx = {u: i for i, u in enumerate(user_ids)}

    def side(domain: str) -> tuple[pl.DataFrame, np.ndarray]:
        rows = interactions.filter(pl.col("domain") == domain)
        items = np.array(sorted(rows["item_id"].unique().to_list()), dtype=str)
        return rows, items

    src_rows, src_items = side(source)
    tgt_rows, tgt_items = side(target)
    explicit = bool(
        tgt_rows["rating"].is_not_null().all() and src_rows["rating"].is_not_null().all()
    )

    def arrays(rows: pl.DataFrame, items: np.ndarray) -> Interactions:
        iidx = {x: i for i, x in enumerate(items)}
        users = np.array([uidx[u] for u in rows["user_id"].to_list()], dtype=np.int64)
        item = np.array([iidx[x] for x in rows["item_id"].to_list()], dtype=np.int64)
        rating = rows["rating"].fill_null(1.0).to_numpy().astype(np.float32)
        order = np.lexsort((item, users))
        return Interactions(users[order], item[order], rating[order])

    src = arrays(src_rows, src_items)
    tgt = arrays(tgt_rows, tgt_items)
    tgt_role = role[tgt.user]
    data = CDRData(
        source=source,
        target=target,
        explicit=explicit,
        user_ids=user_ids,
        role=role,
        src_item_ids=src_items,
        tgt_item_ids=tgt_items,
        src=src,
        tgt_train=tgt.select(np.isin(tgt_role, [ROLE_CODES["train_overlap"], ROLE_CODES["side"]])),
        tgt_valid=tgt.select(tgt_role == ROLE_CODES["valid_cold"]),
        tgt_test=tgt.select(tgt_role == ROLE_CODES["test_cold"]),
    )
    seen = np.concatenate([data.src.rating, data.tgt_train.rating])
    if seen.size:
        data.rating_range = (float(seen.min()), float(seen.max()))
    data.check_no_leakage()
    return data


def load(interactions_path, roles_path, source: str, target: str) -> CDRData:
    """:func:`build` from the ``prepare`` and ``split`` stages' Parquet files."""
    from pipeline.io import read_parquet

    interactions = read_parquet(
        interactions_path, columns=["user_id", "item_id", "domain", "rating"]
    )
    interactions = interactions.filter(pl.col("domain").is_in([source, target]))
    return build(interactions, read_parquet(roles_path), source, target)
