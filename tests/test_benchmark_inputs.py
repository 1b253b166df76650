"""The cold-start benchmark gives `ours` the same condition inputs as the pipeline, less only
the ones that need files it was not given."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.cold_start import condition_inputs
from pipeline.cdr.configs import TrainParams


def test_only_inputs_that_need_files_are_dropped():
    train = TrainParams()
    assert set(train.ours.condition) == {"liked_items", "profile", "habits"}
    kept, extra = condition_inputs(train, None, None, None)
    assert kept.ours.condition == ["habits"] and extra == {}
    assert train.ours.condition != kept.ours.condition  # the caller's params are not changed


def _two_domains(tmp_path) -> dict[str, str]:
    """src.inter and tgt.inter of 200 users with 6 items each in both domains, all ratings
    >= 4 (every cold user has a positive); the roles of the split at beta 0.5, seed 1."""
    from pipeline.config.split import SplitParams
    from pipeline.tables.roles import assign_roles

    rng = np.random.default_rng(0)
    users = [f"u{u:03d}" for u in range(200)]
    for name, prefix in (("src", "s"), ("tgt", "t")):
        rows = [
            f"{u}\t{prefix}{i}\t{float(rng.integers(4, 6))}"
            for u in users
            for i in rng.choice(30, size=6, replace=False)
        ]
        (tmp_path / f"{name}.inter").write_text("user_id\titem_id\trating\n" + "\n".join(rows))
    return assign_roles(set(users), set(users), SplitParams(seed=1, test_fraction=0.5))


def test_users_valid_reports_on_the_validation_users(tmp_path):
    """`--users valid` measures the users every selection was made on, and says so in each
    record; the default stays the test users."""
    import json

    from benchmarks.cold_start import main

    roles = _two_domains(tmp_path)
    count = {r: sum(v == r for v in roles.values()) for r in ("valid_cold", "test_cold")}
    for which, role in (("valid", "valid_cold"), ("test", "test_cold")):
        out = tmp_path / f"{which}.json"
        argv = ["--source", str(tmp_path / "src.inter"), "--target", str(tmp_path / "tgt.inter")]
        argv += ["--betas", "0.5", "--seeds", "1", "--methods", "popularity,cd_ease"]
        argv += ["--params", str(tmp_path / "none.yaml"), "--users", which, "--out", str(out)]
        assert main(argv) == 0
        records = json.loads(out.read_text())
        assert {r["users"] for r in records} == {which}
        # every cold user has a positive (all ratings >= 4), so all of them are ranked
        assert {r["ranked_users"] for r in records} == {count[role]}
        # training is reproducible for a given torch thread count: the records name it
        assert {r["torch_threads"] for r in records} == {torch.get_num_threads()}


def test_users_valid_halves_select_on_one_half_and_measure_the_other(tmp_path):
    """`--users valid-halves`: two records per split and method, each measured on one half of
    the validation users (the halves are disjoint and together make up all of them), never on
    the test users; the significance test pairs the records half by half."""
    import json

    from benchmarks.cold_start import main
    from benchmarks.significance import paired_bootstrap

    roles = _two_domains(tmp_path)
    valid = {u for u, r in roles.items() if r == "valid_cold"}
    out = tmp_path / "halves.json"
    argv = ["--source", str(tmp_path / "src.inter"), "--target", str(tmp_path / "tgt.inter")]
    argv += ["--betas", "0.5", "--seeds", "1", "--methods", "popularity,cd_ease"]
    argv += ["--params", str(tmp_path / "none.yaml"), "--users", "valid-halves"]
    assert main([*argv, "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert sorted((r["method"], r["half"]) for r in records) == [
        ("cd_ease", 0),
        ("cd_ease", 1),
        ("popularity", 0),
        ("popularity", 1),
    ]
    measured = {
        h: {tuple(r["per_user"]["user_id"]) for r in records if r["half"] == h} for h in (0, 1)
    }
    assert all(len(m) == 1 for m in measured.values())  # both methods saw the same users
    half0, half1 = (set(next(iter(measured[h]))) for h in (0, 1))
    assert not half0 & half1 and half0 | half1 == valid
    assert {r["users"] for r in records} == {"valid-halves"}
    test = paired_bootstrap(records, 0.5, "cd_ease", "popularity", "ndcg@10", replicates=50)
    assert test["splits"] == 2 and test["users"] == len(valid)


def test_break_link_hands_each_history_to_another_user_and_keeps_the_rest():
    """`--break-link`: the same users, items and histories, each history under another id."""
    import polars as pl

    from benchmarks.cold_start import break_link

    inter = pl.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(50) for _ in range(u % 3 + 1)],
            "item_id": [f"i{u}_{k}" for u in range(50) for k in range(u % 3 + 1)],
        }
    )
    out = break_link(inter, seed=7)
    assert out["item_id"].to_list() == inter["item_id"].to_list()
    assert set(out["user_id"]) == set(inter["user_id"])
    history = {u: sorted(items) for u, items in out.group_by("user_id").agg("item_id").iter_rows()}
    before = {u: sorted(items) for u, items in inter.group_by("user_id").agg("item_id").iter_rows()}
    assert sorted(map(tuple, history.values())) == sorted(map(tuple, before.values()))
    assert sum(history[u] != before[u] for u in before) > 40  # most histories moved
    assert break_link(inter, seed=7).equals(out)  # the same seed, the same permutation


def test_overlap_fraction_keeps_a_share_of_the_training_overlap_users(tmp_path):
    """`--overlap-fraction`: a seeded share of the training overlap users stays, the others
    become source-only users (the fit sees only the kept ones); the test and validation users
    are the same as without it, and the records say which share."""
    import json

    from benchmarks.cold_start import few_overlap, main

    roles = _two_domains(tmp_path)
    thin = few_overlap(roles, 0.25, seed=1)
    train = [u for u, r in roles.items() if r == "train_overlap"]
    kept = [u for u, r in thin.items() if r == "train_overlap"]
    assert len(kept) == round(0.25 * len(train)) and set(kept) < set(train)
    assert {u for u, r in thin.items() if r == "source_only"} == set(train) - set(kept)
    assert all(thin[u] == r for u, r in roles.items() if r != "train_overlap")
    assert few_overlap(roles, 0.25, seed=1) == thin != few_overlap(roles, 0.25, seed=2)

    argv = ["--source", str(tmp_path / "src.inter"), "--target", str(tmp_path / "tgt.inter")]
    argv += ["--betas", "0.5", "--seeds", "1", "--methods", "popularity,cd_ease"]
    argv += ["--params", str(tmp_path / "none.yaml")]
    runs = {}
    for name, extra in (("all", []), ("few", ["--overlap-fraction", "0.25"])):
        assert main([*argv, *extra, "--out", str(tmp_path / f"{name}.json")]) == 0
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    ease = {k: next(r for r in v if r["method"] == "cd_ease") for k, v in runs.items()}
    assert ease["few"]["selection"]["rank"] == len(kept)  # one SVD direction per kept user
    assert ease["all"]["selection"]["rank"] > len(kept)
    assert ease["few"]["per_user"]["user_id"] == ease["all"]["per_user"]["user_id"]
    assert {r["overlap_fraction"] for r in runs["few"]} == {0.25}
    assert {r["overlap_fraction"] for r in runs["all"]} == {None}
    with pytest.raises(SystemExit):
        main([*argv, "--overlap-fraction", "0"])


def test_selection_table_picks_by_both_rules_and_reads_the_picks_test_values():
    """benchmarks.selection: per split, the highest validation mean and auto's rule, each
    with its test value."""
    from benchmarks.selection import rows

    rng = np.random.default_rng(0)
    base = rng.uniform(0, 0.3, 40)
    users = [f"u{i}" for i in range(40)]

    def record(method, values, which):
        return {
            "beta": 0.5,
            "seed": 1,
            "method": method,
            "ndcg@10": float(np.mean(values)) + (0.0 if which == "valid" else -0.05),
            "per_user": {"user_id": users, "ndcg@10": list(values)},
        }

    noise = rng.normal(0, 0.1, 40)
    noisy = base + noise - noise.mean() + 0.005  # ahead on the mean, well within the noise
    valid = [record("popularity", base, "valid"), record("ours", noisy, "valid")]
    test = [record("popularity", base, "test"), record("ours", noisy - 0.05, "test")]
    (row,) = rows(valid, test)
    assert (row["highest"], row["rule"]) == ("ours", "popularity")
    assert row["rule_test"] == pytest.approx(np.mean(base) - 0.05)
    assert row["highest_test"] == pytest.approx(np.mean(noisy) - 0.1)
