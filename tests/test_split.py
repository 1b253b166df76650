"""The split stage: one role per user, deterministic from the seed alone, pinned test users."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import polars as pl
import pytest

from pipeline import split as split_stage
from pipeline.config import load_params
from pipeline.config.split import SplitParams
from pipeline.errors import InputError
from pipeline.schemas import ROLES
from pipeline.tables.roles import assign_roles
from tests.conftest import ROOT


def users_table(path, source: list[str], target: list[str]):
    rows = [(u, "books", 3) for u in source] + [(u, "movies", 2) for u in target]
    pl.DataFrame(rows, schema=["user_id", "domain", "n_interactions"], orient="row").write_parquet(
        path
    )
    return path


@pytest.fixture
def users(workdir):
    source = [f"s{i:03d}" for i in range(60)] + [f"o{i:03d}" for i in range(100)]
    target = [f"t{i:03d}" for i in range(30)] + [f"o{i:03d}" for i in range(100)]
    return users_table(workdir / "users.parquet", source, target)


def run(workdir, users, **split):
    params = load_params(workdir / "params.yaml", {f"split.{k}": v for k, v in split.items()})
    summary = split_stage.split(params, users, workdir / "roles.parquet")
    return pl.read_parquet(workdir / "roles.parquet"), summary


def test_every_user_gets_exactly_one_role(workdir, users):
    roles, summary = run(workdir, users)
    assert roles["user_id"].is_unique().all() and roles.height == 190
    assert set(roles["role"]) <= set(ROLES)
    assert summary["users"] == {
        "train_overlap": 70,
        "valid_cold": 10,
        "test_cold": 20,
        "side": 30,
        "source_only": 60,
    }
    cold = roles.filter(pl.col("role").is_in(["valid_cold", "test_cold", "train_overlap"]))
    assert cold["user_id"].str.starts_with("o").all()  # only overlapping users can be cold
    assert roles.filter(pl.col("role") == "side")["user_id"].str.starts_with("t").all()


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_gives_byte_identical_tables(workdir, users):
    run(workdir, users)
    first = digest(workdir / "roles.parquet")
    run(workdir, users)
    assert digest(workdir / "roles.parquet") == first
    run(workdir, users, seed=99)
    assert digest(workdir / "roles.parquet") != first


def test_split_ignores_python_hash_seed_and_row_order(workdir, users):
    run(workdir, users)
    expected = digest(workdir / "roles.parquet")
    shuffled = pl.read_parquet(users).sample(fraction=1.0, shuffle=True, seed=3)
    shuffled.write_parquet(workdir / "shuffled.parquet")
    code = (
        "from pipeline import split; from pipeline.config import load_params;"
        "split.split(load_params('params.yaml'), 'shuffled.parquet', 'roles2.parquet')"
    )
    for hash_seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, check=True)
        assert digest(workdir / "roles2.parquet") == expected


def test_pinned_test_users(workdir, users):
    pinned = [f"o{i:03d}" for i in range(0, 100, 4)]
    (workdir / "cold.txt").write_text("# pinned\n" + "\n".join(pinned) + "\n")
    roles, summary = run(workdir, users, test_users_file="cold.txt")
    test = roles.filter(pl.col("role") == "test_cold")["user_id"].to_list()
    assert sorted(test) == pinned
    assert summary["users"]["valid_cold"] == 10  # drawn from the remaining overlapping users


def test_pinned_unknown_user_is_named_with_its_line(workdir, users):
    (workdir / "cold.txt").write_text("o001\nnobody\n")
    with pytest.raises(
        InputError, match=r"cold\.txt:2: field 'user_id': user 'nobody' is not an overlapping user"
    ):
        run(workdir, users, test_users_file="cold.txt")


def test_domains_without_shared_users_fail_clearly(workdir):
    path = users_table(workdir / "u.parquet", ["a", "b"], ["c", "d"])
    with pytest.raises(InputError, match="'books' and 'movies' share no user"):
        run(workdir, path)


def test_assign_roles_is_pure():
    params = SplitParams(seed=5, test_fraction=0.5, valid_fraction=0.25)
    a = assign_roles({"x", "y", "z", "w"}, {"x", "y", "z", "w", "v"}, params)
    b = assign_roles({"w", "z", "y", "x"}, {"v", "w", "z", "y", "x"}, params)
    assert a == b and a["v"] == "side"
