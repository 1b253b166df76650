"""The cold-start harness: no leakage, deterministic, every method trains and scores."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline.cdr import data as cdr_data
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

FAST = {
    "emcdr": EMCDRConfig(epochs=20, eval_every=5),
    "ptupcdr": PTUPCDRConfig(epochs=2),
    "diffcdr": DiffCDRConfig(epochs=2, sample_steps=5, guidance_grid=[1.0, 2.0]),
}
MF = MFConfig(epochs=10, bpr_epochs=10, dim=8, bpr_dim=8)


@pytest.fixture(scope="module")
def data(tiny_project):
    return cdr_data.load(
        tiny_project / "data/prepared/interactions.parquet",
        tiny_project / "data/split/roles.parquet",
        "books",
        "movies",
    )


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


def fit_eval(data, names, seed=0):
    fitted = harness.fit(data, names, FAST, MF, seed)
    return harness.evaluate(fitted, "test")


def test_every_registered_method_can_be_named_in_params():
    assert tuple(METHODS) == METHOD_NAMES
    assert TrainParams(methods=list(METHODS)).methods == list(METHODS)


def test_every_method_trains_and_scores_every_test_user(data):
    names = [m for m in METHOD_NAMES if not m.startswith("ours")]  # ours: tests/test_ours.py
    assert len(names) == 8
    results = fit_eval(data, names)
    assert list(results) == names
    n_ranked = results["popularity"]["ranked_users"]
    for name, row in results.items():
        assert row["ranked_users"] == n_ranked, name  # every test user with a positive counts
        assert 0.0 <= row["ndcg@10"] <= 1.0
        if name != "popularity":
            assert 0.0 < row["rmse"] < 4.0 and row["mae"] <= row["rmse"]
    assert results["popularity"]["mae"] is None


def test_same_seed_same_metrics(data):
    names = ["item_mean_user_bias", "emcdr", "diffcdr"]
    a, b = fit_eval(data, names, seed=3), fit_eval(data, names, seed=3)
    for name in names:
        for key in ("mae", "rmse", "ndcg@10", "hit@20"):
            assert a[name][key] == b[name][key], (name, key)
