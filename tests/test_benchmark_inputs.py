"""The cold-start benchmark gives `ours` the same condition inputs as the pipeline, less only
the ones that need files it was not given."""

from __future__ import annotations

import numpy as np

from benchmarks.cold_start import condition_inputs
from pipeline.cdr.configs import TrainParams


def test_only_inputs_that_need_files_are_dropped():
    train = TrainParams()
    assert set(train.ours.condition) == {"liked_items", "profile", "habits"}
    kept, extra = condition_inputs(train, None, None, None)
    assert kept.ours.condition == ["habits"] and extra == {}
    assert train.ours.condition != kept.ours.condition  # the caller's params are not changed


def test_users_valid_reports_on_the_validation_users(tmp_path):
    """`--users valid` measures the users every selection was made on, and says so in each
    record; the default stays the test users."""
    import json

    from benchmarks.cold_start import main
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
    roles = assign_roles(set(users), set(users), SplitParams(seed=1, test_fraction=0.5))
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
