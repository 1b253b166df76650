"""The cold-start harness: no leakage, deterministic, every method trains and scores."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline.cdr import harness
from pipeline.cdr.configs import (
    METHOD_NAMES,
    DiffCDRConfig,
    EMCDRConfig,
    MFConfig,
    PTUPCDRConfig,
    TrainParams,
)
from pipeline.cdr.data import ROLE_CODES
from pipeline.cdr.methods import METHODS
from tests.conftest import TINY_MF

FAST = {
    "emcdr": EMCDRConfig(epochs=20),
    "ptupcdr": PTUPCDRConfig(epochs=2),
    "diffcdr": DiffCDRConfig(epochs=2, sample_steps=5),
}
MF = MFConfig(**TINY_MF)


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


def test_no_cold_user_target_row_reaches_training(data, tiny_project):
    roles = pl.read_parquet(tiny_project / "data/split/roles.parquet")
    cold = set(roles.filter(pl.col("role").is_in(["valid_cold", "test_cold"]))["user_id"])
    train_users = set(data.user_ids[np.unique(data.tgt_train.user)])
    assert cold and not (cold & train_users)
    # ... yet their source history is kept, and their target rows are all held out.
    assert cold <= set(data.user_ids[np.unique(data.src.user)])
    inter = pl.read_parquet(tiny_project / "data/prepared/interactions.parquet")
    n_cold_target = inter.filter(
        (pl.col("domain") == "movies") & pl.col("user_id").is_in(list(cold))
    ).height
    assert len(data.tgt_valid) + len(data.tgt_test) == n_cold_target
    visible = np.isin(
        data.role[data.tgt_train.user], [ROLE_CODES["train_overlap"], ROLE_CODES["side"]]
    )
    assert visible.all()


def fit_eval(data, names, seed=0, base=None):
    fitted = harness.fit(data, names, FAST, MF, seed, base=base)
    return harness.evaluate(fitted, "test")


def test_every_registered_method_can_be_named_in_params():
    assert tuple(METHODS) == METHOD_NAMES
    assert TrainParams(methods=list(METHODS)).methods == list(METHODS)


def test_every_method_trains_and_scores_every_test_user(data, tiny_base):
    names = [m for m in METHOD_NAMES if not m.startswith("ours")]  # ours: tests/test_ours.py
    assert len(names) == 11
    results = fit_eval(data, names, base=tiny_base)
    assert list(results) == names
    n_ranked = results["popularity"]["ranked_users"]
    floor = results["global_mean"]["rmse"]
    for name, row in results.items():
        assert row["ranked_users"] == n_ranked, name  # every test user with a positive counts
        assert 0.0 <= row["ndcg@10"] <= 1.0
        if name in ("popularity", "cd_ease", "cd_itemknn"):  # ranking only
            assert row["mae"] is None and row["rmse"] is None, name
        else:
            assert row["mae"] <= row["rmse"], name
            # No worse than the global mean; DiffCDR as published (two epochs here) is allowed
            # twice that: its sampler is known to drift off the rating scale.
            assert 0.3 < row["rmse"] <= floor * (2.0 if name == "diffcdr" else 1.0), name


def test_same_seed_same_metrics(data):
    names = ["item_mean_user_bias", "emcdr", "diffcdr"]
    a, b = fit_eval(data, names, seed=3), fit_eval(data, names, seed=3)
    for name in names:
        for key in ("mae", "rmse", "ndcg@10", "hit@20"):
            assert a[name][key] == b[name][key], (name, key)
