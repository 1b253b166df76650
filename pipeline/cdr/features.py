"""Condition inputs from the feature stores, aligned to a :class:`CDRData`'s indexing.

The generator's ``profile`` input is the embedded LLM profile of each user (store of the
``user_profiles`` stage), ``liked_items`` pools the feature vectors of the source items each
user liked (store of the ``item_features`` stage). Both stores are keyed by id; here they are
joined onto the model's user and item order, never aligned by row position.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.cdr.configs import TrainParams
from pipeline.cdr.data import CDRData
from pipeline.cdr.methods import METHODS
from pipeline.errors import PipelineError
from pipeline.io import read_json, read_parquet

log = logging.getLogger("features")

ITEM_VECTOR = "fused_emb"  # the item store's column used for pooling


def needed_inputs(train: TrainParams) -> set[str]:
    """Condition inputs any configured method reads from a store."""
    needed: set[str] = set()
    for name in train.methods:
        cls = METHODS[name]
        config = getattr(train, cls.config_name or name, None)
        condition = getattr(config, "condition", None)
        if condition is None:
            continue
        dropped = getattr(cls, "drops_inputs", ())
        needed |= {c for c in condition if c not in dropped}
    return needed & {"profile", "liked_items"}


def _vectors(frame: pl.DataFrame, column: str, path: Path) -> np.ndarray:
    if column not in frame.columns:
        raise PipelineError(f"{path}: no column '{column}' (columns: {', '.join(frame.columns)})")
    values = frame[column].to_numpy()
    return np.asarray(np.stack(values) if values.dtype == object else values, dtype=np.float32)


def align(ids: np.ndarray, keys: list[str], vectors: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows of ``vectors`` (keyed by ``keys``) in the order of ``ids``; zeros where missing."""
    index = {k: i for i, k in enumerate(keys)}
    out = np.zeros((len(ids), vectors.shape[1]), np.float32)
    found = 0
    for row, key in enumerate(ids.tolist()):
        i = index.get(key)
        if i is not None:
            out[row] = vectors[i]
            found += 1
    return out, found


def load_profiles(data: CDRData, store: Path) -> np.ndarray:
    parts = sorted(Path(store).glob("part-*.parquet"))
    manifest = Path(store) / "manifest.json"
    if not parts and manifest.exists() and read_json(manifest).get("enabled") is False:
        raise PipelineError(
            f"{store}: user profiles are off (user_profiles.enabled: false) but "
            "train.ours.condition includes 'profile': leave it out too, e.g. -S "
            "'train.ours.condition=[liked_items,habits]'"
        )
    if not parts:
        raise PipelineError(f"{store}: no user profiles (run `dvc repro user_profiles`)")
    frame = pl.concat([read_parquet(p, columns=["user_id", "profile_emb"]) for p in parts])
    vectors = _vectors(frame, "profile_emb", store)
    out, found = align(data.user_ids, frame["user_id"].to_list(), vectors)
    log.info("profiles: %d of %d users have one", found, data.n_users)
    return out


def load_item_features(data: CDRData, store: Path, source: str) -> np.ndarray:
    if not Path(store).exists():
        raise PipelineError(f"{store}: no item features (run `dvc repro item_features`)")
    frame = read_parquet(store).filter(pl.col("domain") == source)
    vectors = _vectors(frame, ITEM_VECTOR, Path(store))
    out, found = align(data.src_item_ids, frame["item_id"].to_list(), vectors)
    log.info("item features: %d of %d source items", found, data.n_src_items)
    return out


def condition_extra(
    data: CDRData, train: TrainParams, source: str, profiles: Path, items: Path
) -> dict[str, np.ndarray]:
    """The ``FitContext.extra`` entries the configured methods need."""
    needed = needed_inputs(train)
    extra: dict[str, np.ndarray] = {}
    if "profile" in needed:
        extra["profile"] = load_profiles(data, profiles)
    if "liked_items" in needed:
        extra["source_item_features"] = load_item_features(data, items, source)
    return extra
