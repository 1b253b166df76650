"""The ray engine (:mod:`pipeline.engine`) on a real local Ray cluster, started here with 2 CPUs
and stopped at the end of the module.

``item_features``, ``user_profiles`` and ``score`` write with ``engine: ray`` what they write with
``engine: local``: the same rows, vectors equal within float tolerance, identical profile texts
and top-K lists. A worker that dies in the middle of a job (its process exits, as on a crash or
an out-of-memory kill) is restarted by Ray, its batch runs again, and the output is complete and
the same.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from pipeline import item_features as item_stage
from pipeline import score as score_stage
from pipeline import user_profiles as profile_stage
from pipeline.config import load_params
from pipeline.features import item_batches
from pipeline.features.profile_store import read_profile_store
from pipeline.io import read_meta
from pipeline.recs import batches
from tests.conftest import ROOT, TINY_SYNTHETIC, write_params, write_valid_users

# Two actors of half a CPU each leave a CPU for Ray Data's own read and split tasks.
RAY = {"actors": 2, "cpus_per_actor": 0.5}
TRAIN = {
    "methods": ["popularity", "emcdr", "diffcdr"],
    "base": {"epochs": 5, "bpr_epochs": 5, "dim": 8, "bpr_dim": 8},
    "emcdr": {"epochs": 10},
    "diffcdr": {"epochs": 1, "sample_steps": 4},
}
DATE = "2024-03-01"


@pytest.fixture(scope="module", autouse=True)
def cluster():
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors that die, below
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def project(tiny_project, tiny_lm, tmp_path_factory) -> Path:
    """The tiny project's data, a tiny LM for profiles, and three small trained methods."""
    from pipeline import train

    root = tmp_path_factory.mktemp("ray")
    shutil.copytree(tiny_project / "data", root / "data")
    profiles = {"model": str(tiny_lm), "max_new_tokens": 8, "batch_size": 8}
    profiles["template"] = str(ROOT / "prompts" / "user_profile_v1.txt")
    write_params(
        root / "params.yaml", synthetic=TINY_SYNTHETIC, user_profiles=profiles, train=TRAIN
    )
    old = Path.cwd()
    os.chdir(root)
    try:
        torch.set_num_threads(1)
        train.train(load_params("params.yaml"))
        base = np.linspace(0.0, 0.2, 20)  # diffcdr clearly best: score auto picks it
        write_valid_users(root, {"popularity": base, "emcdr": base, "diffcdr": base + 0.1})
    finally:
        os.chdir(old)
    return root


STAGES = {"item_features": item_stage, "user_profiles": profile_stage, "score": score_stage}


def params(section: str, **ray):
    """The params stage ``section`` reads, on the ray engine (local without ``ray`` settings)."""
    engine = {f"{section}.engine": "ray", f"{section}.ray": {**RAY, **ray}} if ray else {}
    return load_params("params.yaml", engine, STAGES[section].PARAMS, section)


def dies_once(base: type, column: str, key, marker: Path) -> type:
    """``base`` whose process exits the first time it gets the batch holding ``key`` in
    ``column``; ``marker`` records that it did (and keeps the retry alive)."""

    def call(self, batch):
        if key in batch[column].to_pylist() and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return base.__call__(self, batch)

    return type(f"DiesOnce{base.__name__}", (base,), {"__call__": call})


def vectors(frame: pl.DataFrame, column: str) -> np.ndarray:
    return np.stack(frame[column].to_numpy())


# --------------------------------------------------------------------------- item_features
def test_item_features_on_ray_equal_local_with_a_worker_killed(project, monkeypatch, tmp_path):
    monkeypatch.chdir(project)
    local_path, ray_path = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    local = item_stage.item_features(
        params("item_features"), out_path=local_path, metrics_path=tmp_path / "local.json"
    )
    items = pl.read_parquet("data/prepared/items.parquet")
    marker = tmp_path / "died"
    killer = dies_once(item_batches.EncodeItems, "item_id", items["item_id"][100], marker)
    monkeypatch.setattr(item_batches, "EncodeItems", killer)
    # The default actors (2 x 1 CPU) on 2 CPUs: the pool must leave Ray Data's read a CPU.
    on_ray = item_stage.item_features(
        params("item_features", batch_size=48, cpus_per_actor=1.0),
        out_path=ray_path,
        metrics_path=tmp_path / "r.json",
    )
    assert marker.exists()  # a worker died mid-job, and the job still finished
    a, b = pl.read_parquet(local_path), pl.read_parquet(ray_path)
    assert a.height == b.height == items.height and a.columns == b.columns
    emb = [c for c in a.columns if c.endswith("_emb")]
    assert a.drop(emb).equals(b.drop(emb))  # same rows, same order, same flags and hashes
    for column in emb:
        np.testing.assert_allclose(vectors(a, column), vectors(b, column), atol=1e-5)
    meta_a, meta_b = read_meta(local_path), read_meta(ray_path)
    assert meta_a["content"] == meta_b["content"] and meta_a["params_hash"] == meta_b["params_hash"]
    assert meta_a["encoder_ids"] == meta_b["encoder_ids"]
    for key in ("items", "encoded", "reused", "missing_text", "text_encoder"):
        assert on_ray[key] == local[key], key


# --------------------------------------------------------------------------- user_profiles
def test_user_profiles_on_ray_equal_local(project, monkeypatch, tmp_path):
    monkeypatch.chdir(project)
    local = profile_stage.user_profiles(params("user_profiles"), store=tmp_path / "local")
    on_ray = profile_stage.user_profiles(
        params("user_profiles", batch_size=24), store=tmp_path / "ray"
    )
    a = read_profile_store(tmp_path / "local").sort("user_id")
    b = read_profile_store(tmp_path / "ray").sort("user_id")
    assert a.height == b.height == local["users"] and local["generated_now"] > 0
    # Greedy, and the same users in each generate call: the same texts word for word.
    assert a.drop("profile_emb").equals(b.drop("profile_emb"))
    np.testing.assert_allclose(vectors(a, "profile_emb"), vectors(b, "profile_emb"), atol=1e-5)
    timings = {"engine", "generation_seconds", "profiles_per_second"}
    assert {k: v for k, v in local.items() if k not in timings} == {
        k: v for k, v in on_ray.items() if k not in timings
    }
    assert not list(tmp_path.glob(".*journal*"))  # finished: the journal is gone


# --------------------------------------------------------------------------- score
def test_score_on_ray_equals_local_with_a_worker_killed(project, monkeypatch, tmp_path):
    monkeypatch.chdir(project)
    local = score_stage.score(params("score"), out=tmp_path / "local", date=DATE, progress=False)
    marker = tmp_path / "died"
    n = local["counts"]["scored"]
    monkeypatch.setattr(batches, "RankUsers", dies_once(batches.RankUsers, "pos", n // 2, marker))
    on_ray = score_stage.score(
        params("score", batch_size=16), out=tmp_path / "ray", date=DATE, progress=False
    )
    assert marker.exists()
    parts = {
        name: pl.read_parquet(tmp_path / name / f"dt={DATE}" / "part-*.parquet")
        for name in ("local", "ray")
    }
    assert parts["local"].height == local["counts"]["rows"] > 0
    assert parts["local"].equals(parts["ray"])  # identical lists, item for item
    assert local["method"] == on_ray["method"] == "diffcdr"  # per-user sampling noise
    assert (tmp_path / "ray" / f"dt={DATE}" / "_SUCCESS").exists()
    assert {**local, "engine": "ray"} == on_ray
