"""The benchmark's paired bootstrap: by-hand statistics on tiny records, a null difference is
not significant, a clear one is, and MAE/RMSE are recomputed from per-user error sums."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import significance


def record(method, seed, ndcg, errors=None, beta=0.2):
    users = [f"u{i}" for i in range(len(ndcg))]
    r = {
        "beta": beta,
        "seed": seed,
        "method": method,
        "ndcg@10": float(np.mean(ndcg)),
        "per_user": {"user_id": users, "ndcg@10": list(map(float, ndcg))},
    }
    if errors is not None:
        n, a, s = np.asarray(errors, dtype=float).T
        r.update(mae=a.sum() / n.sum(), rmse=np.sqrt(s.sum() / n.sum()))
        r["per_user_errors"] = {
            "user_id": users,
            "n": n.tolist(),
            "abs": a.tolist(),
            "sq": s.tolist(),
        }
    return r


def test_identical_methods_differ_by_nothing():
    rng = np.random.default_rng(0)
    values = rng.random(50)
    records = [record("ours", 1, values), record("cd_ease", 1, values)]
    test = significance.paired_bootstrap(records, 0.2, "ours", "cd_ease", "ndcg@10", replicates=200)
    assert test["difference"] == 0.0 and test["p"] == 1.0 and test["users"] == 50


def test_a_clear_gain_is_significant_and_noise_is_not():
    rng = np.random.default_rng(1)
    base = rng.random(200)
    records = [record("cd_ease", s, base) for s in (1, 2)]
    records += [record("ours", s, np.clip(base + 0.1, 0, 1)) for s in (1, 2)]
    clear = significance.paired_bootstrap(records, 0.2, "ours", "cd_ease", "ndcg@10")
    assert clear["difference"] > 0.05 and clear["low"] > 0 and clear["p"] < 0.01
    noisy = [record("cd_ease", 1, base), record("ours", 1, base + rng.normal(0, 0.3, 200))]
    test = significance.paired_bootstrap(noisy, 0.2, "ours", "cd_ease", "ndcg@10")
    assert test["low"] < 0 < test["high"] and test["p"] > 0.05


def test_mae_and_rmse_come_from_the_error_sums_of_the_users():
    # user 0: 2 ratings, |e| sums 1, e^2 sums 0.5; user 1: 1 rating, 2 and 4.
    a = record("ours", 1, [0.1, 0.2], errors=[(2, 1.0, 0.5), (1, 2.0, 4.0)])
    b = record("habit_bias", 1, [0.1, 0.2], errors=[(2, 2.0, 2.0), (1, 2.0, 4.0)])
    test = significance.paired_bootstrap([a, b], 0.2, "ours", "habit_bias", "mae", replicates=50)
    assert test["difference"] == pytest.approx(3.0 / 3 - 4.0 / 3)
    test = significance.paired_bootstrap([a, b], 0.2, "ours", "habit_bias", "rmse", replicates=50)
    assert test["difference"] == pytest.approx(np.sqrt(4.5 / 3) - np.sqrt(6.0 / 3))


def test_best_other_skips_the_method_and_its_ablations():
    records = [
        record("ours", 1, [0.5]),
        record("ours_deterministic", 1, [0.9]),
        record("cd_ease", 1, [0.4]),
        record("popularity", 1, [0.2]),
    ]
    assert significance.best_other(records, 0.2, "ours", "ndcg@10") == "cd_ease"
    line = significance.table(records, metrics=("ndcg@10",)).splitlines()[-1]
    assert line.startswith("| 0.2 | ndcg@10 | 0.5000 | cd_ease 0.4000 | +0.1000")


def test_before_compares_a_method_with_itself_in_an_earlier_run(tmp_path, capsys):
    """``--before FILE``: what a change did to a method, paired by user across two runs."""
    import json

    base = np.random.default_rng(2).random(100)
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    before.write_text(json.dumps([record("ours", 1, base), record("cd_ease", 1, base + 0.5)]))
    after.write_text(json.dumps([record("ours", 1, np.clip(base + 0.1, 0, 1))]))
    significance.main([str(after), "--before", str(before), "--metrics", "ndcg@10"])
    row = capsys.readouterr().out.splitlines()[-1]
    assert "ours (before)" in row and "cd_ease" not in row
    assert float(row.split("|")[5].split()[0]) > 0.05 and row.split("|")[6].strip() == "0.000"
    with pytest.raises(SystemExit):  # one other method or the earlier run, not both
        significance.main([str(after), "--before", str(before), "--against", "cd_ease"])
