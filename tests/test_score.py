"""Batch top-K scoring: schema and order, exclusions, determinism, fold-in, rejects, crashes."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from pipeline import score as score_mod
from pipeline.cdr import data as cdr_data
from pipeline.cdr import foldin, harness, store
from pipeline.config import load_params
from pipeline.errors import PipelineError
from pipeline.io.lock import locked
from pipeline.recs import lists, metrics, partition, trained
from tests.conftest import ROOT, write_params, write_valid_users

METHODS = [
    "global_mean",
    "popularity",
    "item_mean_user_bias",
    "cd_ease",
    "emcdr",
    "ptupcdr",
    "diffcdr",
    "ours",
]
TRAIN = {
    "methods": METHODS,
    "base": {"epochs": 10, "bpr_epochs": 10, "dim": 8, "bpr_dim": 8},
    "emcdr": {"epochs": 20},
    "ptupcdr": {"epochs": 2},
    "diffcdr": {"epochs": 2, "sample_steps": 5},
    "ours": {"epochs": 10, "width": 32, "latent_dim": 16, "rank": 32, "condition": ["habits"]},
}
DATE = "2024-03-01"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def project(tiny_project, tmp_path_factory) -> Path:
    """The tiny project's data, small trained models, and per-user validation values with emcdr
    clearly best."""
    from pipeline import train

    root = tmp_path_factory.mktemp("score")
    for rel in ("data/prepared/interactions.parquet", "data/split/roles.parquet"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_project / rel, root / rel)
    write_params(root / "params.yaml", synthetic={"n_users": 240, "n_items": 80}, train=TRAIN)
    old = Path.cwd()
    os.chdir(root)
    try:
        torch.set_num_threads(1)
        train.train(load_params("params.yaml"))
        # emcdr clearly ahead of every other method on 30 validation users
        noise = np.random.default_rng(0).uniform(0, 0.2, 30)
        write_valid_users(root, {m: noise + 0.3 * (m == "emcdr") for m in METHODS})
    finally:
        os.chdir(old)
    return root


def params(**score):
    return load_params("params.yaml", {f"score.{k}": v for k, v in score.items()})


def run(project: Path, monkeypatch, out="out", date=DATE, **kw) -> dict:
    monkeypatch.chdir(project)
    score_kw = {k: kw.pop(k) for k in list(kw) if k in ("method", "k", "chunk_size", "steps")}
    return score_mod.score(params(**score_kw), out=project / out, date=date, progress=False, **kw)


def read_part(project: Path, out="out", date=DATE) -> pl.DataFrame:
    return pl.read_parquet(project / out / f"dt={date}" / "part-*.parquet")


def load_fitted(project: Path):
    data = cdr_data.load(
        project / "data/prepared/interactions.parquet",
        project / "data/split/roles.parquet",
        "books",
        "movies",
    )
    return data, store.load(
        project / "data/models", data, load_params(project / "params.yaml").train
    )


# --------------------------------------------------------------------------- the stage
def test_stage_writes_schema_ordering_manifest_and_marker(project, monkeypatch):
    manifest = run(project, monkeypatch, out="stage", k=10, chunk_size=7)
    part_dir = project / "stage" / f"dt={DATE}"
    assert sorted(p.name for p in part_dir.iterdir()) == [
        "_SUCCESS",
        "manifest.json",
        "part-00000.parquet",
        "rejects.parquet",
    ]
    df = read_part(project, "stage")
    assert df.schema == pl.Schema(
        {
            "user_id": pl.String,
            "rank": pl.Int32,
            "item_id": pl.String,
            "score": pl.Float32,
            "method": pl.String,
            "model_version": pl.String,
        }
    )
    roles = pl.read_parquet(project / "data/split/roles.parquet")
    cold = roles.filter(pl.col("role").is_in(["valid_cold", "test_cold"]))["user_id"]
    assert sorted(df["user_id"].unique()) == sorted(cold)
    # Sorted by user then rank; ranks 1..K; scores never increase down a list.
    assert df.equals(df.sort("user_id", "rank"))
    per_user = df.group_by("user_id").agg(pl.col("rank"), pl.col("score"), pl.col("item_id"))
    for ranks, scores, items in per_user.select("rank", "score", "item_id").iter_rows():
        assert ranks == list(range(1, 11))
        assert all(a >= b for a, b in zip(scores, scores[1:], strict=False))
        assert len(set(items)) == 10
    assert set(df["method"]) == {"emcdr"}  # auto: significantly best on validation
    assert set(df["model_version"]) == {manifest["model_version"]}
    saved = json.loads((part_dir / "manifest.json").read_text())
    assert saved == json.loads(json.dumps(manifest))
    assert saved["method"] == "emcdr" and saved["selection"]["best"] == "emcdr"
    assert saved["counts"]["scored"] == len(cold) and saved["counts"]["rejected"] == 0
    assert saved["counts"]["rows"] == df.height and saved["k"] == 10
    assert pl.read_parquet(part_dir / "rejects.parquet").height == 0


@pytest.mark.parametrize(
    "method", ["global_mean", "popularity", "cd_ease", "emcdr", "diffcdr", "ours"]
)
def test_stage_lists_are_the_rankings_evaluate_measured(project, monkeypatch, method):
    """Item for item, on every stage user (valid and test cold), score's lists are the rankings
    evaluate's metrics were computed on (global_mean ties every item: ties by item index)."""
    run(project, monkeypatch, out=f"eval-{method}", method=method, k=max(metrics.KS), chunk_size=16)
    df = read_part(project, f"eval-{method}").sort("user_id", "rank")
    data, fitted = load_fitted(project)
    measured = []
    real = metrics.ranking_metrics

    def record(ranked, positives, ks=metrics.KS, scored=None, per_user=False):
        measured.append(ranked)
        return real(ranked, positives, ks, scored, per_user)

    monkeypatch.setattr(metrics, "ranking_metrics", record)
    only = harness.Fitted(fitted.ctx, {method: fitted.methods[method]})
    for which in ("valid", "test"):
        harness.evaluate(only, which)
        users = data.user_ids[data.cold_users(which)]
        got = df.filter(pl.col("user_id").is_in(users.tolist()))
        assert got["user_id"].unique(maintain_order=True).to_list() == users.tolist()
        expected = data.tgt_item_ids[measured[-1]]
        assert got["item_id"].to_numpy().reshape(expected.shape).tolist() == expected.tolist()
    assert len(measured) == 2


def test_seen_target_items_are_excluded(project, monkeypatch, tmp_path):
    inter = pl.read_parquet(project / "data/prepared/interactions.parquet")
    roles = pl.read_parquet(project / "data/split/roles.parquet")
    users = roles.filter(pl.col("role").is_in(["test_cold", "train_overlap"]))["user_id"][:40]
    pl.DataFrame({"user_id": users}).write_csv(tmp_path / "users.csv")
    run(
        project,
        monkeypatch,
        out="seen",
        users_path=tmp_path / "users.csv",
        interactions_path=project / "data/prepared/interactions.parquet",
        k=10,
    )
    df = read_part(project, "seen")
    seen = inter.filter(pl.col("domain") == "movies").select("user_id", "item_id")
    assert df.join(seen, on=["user_id", "item_id"]).height == 0
    assert df["user_id"].n_unique() == len(users)
    assert (df.group_by("user_id").len()["len"] == 10).all()
    # K beyond what is left: each user gets every item they do not have, ranks 1..n.
    run(
        project,
        monkeypatch,
        out="seen-all",
        users_path=tmp_path / "users.csv",
        interactions_path=project / "data/prepared/interactions.parquet",
        k=10_000,
    )
    df = read_part(project, "seen-all")
    n_items = inter.filter(pl.col("domain") == "movies")["item_id"].n_unique()
    n_seen = seen.filter(pl.col("user_id").is_in(users)).group_by("user_id").len()
    got = df.group_by("user_id").agg(n=pl.len(), top=pl.col("rank").max())
    both = got.join(n_seen, on="user_id", how="left").fill_null(0)
    assert (both["n"] == n_items - both["len"]).all() and (both["n"] == both["top"]).all()


def test_same_inputs_same_bytes(project, monkeypatch):
    for out in ("det-a", "det-b"):
        run(project, monkeypatch, out=out, method="diffcdr", chunk_size=9)
    a, b = project / "det-a" / f"dt={DATE}", project / "det-b" / f"dt={DATE}"
    for name in ("part-00000.parquet", "rejects.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma == mb
    assert ma["steps"] == 5  # the generator's own sampling steps
    run(project, monkeypatch, out="det-c", method="diffcdr", steps=2)
    assert json.loads((project / f"det-c/dt={DATE}/manifest.json").read_text())["steps"] == 2


# --------------------------------------------------------------------------- fold-in, rejects
def _fresh_with_new_users(project: Path, tmp_path: Path, n: int) -> tuple[list[str], Path]:
    """The interactions plus a copy, under new ids, of ``n`` test users' source rows."""
    inter = pl.read_parquet(project / "data/prepared/interactions.parquet")
    roles = pl.read_parquet(project / "data/split/roles.parquet")
    test = sorted(roles.filter(pl.col("role") == "test_cold")["user_id"])[:n]
    copies = inter.filter(pl.col("user_id").is_in(test) & (pl.col("domain") == "books"))
    copies = copies.with_columns(user_id=pl.lit("NEW_") + pl.col("user_id"))
    fresh = pl.concat([inter, copies])
    fresh.write_parquet(tmp_path / "fresh.parquet")
    return test, tmp_path / "fresh.parquet"


@pytest.mark.parametrize("method", ["emcdr", "ptupcdr", "cd_ease", "ours"])
def test_new_user_folded_in_gets_the_list_of_the_same_user_seen_at_training(
    project, monkeypatch, tmp_path, method
):
    test, fresh = _fresh_with_new_users(project, tmp_path, 30)
    users = test + [f"NEW_{u}" for u in test]
    pl.DataFrame({"user_id": users}).write_parquet(tmp_path / "users.parquet")
    manifest = run(
        project,
        monkeypatch,
        out=f"fold-{method}",
        users_path=tmp_path / "users.parquet",
        interactions_path=fresh,
        method=method,
        k=20,
    )
    assert manifest["counts"]["to_fold_in"] == len(test) == manifest["fold_in"]["users"] > 20
    assert manifest["fold_in"]["known_users_max_change"] < 1e-5
    df = read_part(project, f"fold-{method}")
    lists = {u: set(g["item_id"]) for (u,), g in df.group_by("user_id")}
    overlap = [len(lists[u] & lists[f"NEW_{u}"]) / 20 for u in test]
    assert np.mean(overlap) >= 0.5, overlap
    # Known users' lists do not depend on who else was folded in.
    pl.DataFrame({"user_id": test}).write_parquet(tmp_path / "known.parquet")
    run(
        project,
        monkeypatch,
        out=f"fold-{method}-alone",
        users_path=tmp_path / "known.parquet",
        interactions_path=fresh,
        method=method,
        k=20,
    )
    alone = read_part(project, f"fold-{method}-alone").filter(pl.col("user_id").is_in(test))
    with_new = df.filter(pl.col("user_id").is_in(test))
    assert alone["item_id"].to_list() == with_new["item_id"].to_list()


def test_refolding_known_users_reproduces_their_vectors(project):
    """Both fold-in solvers (ridge biased MF, Newton BPR) land near the trained vectors."""
    data, fitted = load_fitted(project)
    ctx = fitted.ctx
    regs = foldin.calibrate(ctx, load_params(project / "params.yaml").train.base)
    users = data.cold_users("test")
    hist = foldin._history_of(ctx.src, users)
    p, b = foldin.ridge_mf(ctx.base.src_mf, hist, regs.mf)
    q = foldin.newton_bpr(ctx.base.src_bpr, hist, regs.bpr, foldin.user_seeds(users, 0))
    cos = torch.nn.functional.cosine_similarity
    assert cos(p, ctx.base.src_mf.user.weight[users]).mean() > 0.8
    # (tiny, barely trained BPR: its vectors still carry much of their random start)
    assert cos(q, ctx.base.src_bpr.user.weight[users]).mean() > 0.5
    assert np.corrcoef(b, ctx.base.src_mf.user_bias.weight[users, 0].detach())[0, 1] > 0.8


def test_unusable_users_land_in_rejects_with_a_reason(project, monkeypatch, tmp_path):
    roles = pl.read_parquet(project / "data/split/roles.parquet")
    side = sorted(roles.filter(pl.col("role") == "side")["user_id"])[0]
    test = sorted(roles.filter(pl.col("role") == "test_cold")["user_id"])[:2]
    inter = pl.read_parquet(project / "data/prepared/interactions.parquet")
    odd = pl.DataFrame(
        {"user_id": ["ODD"], "item_id": ["NOT_A_BOOK"], "domain": ["books"], "rating": [4.0]},
        schema_overrides={"rating": pl.Float32},
    )
    pl.concat([inter.select("user_id", "item_id", "domain", "rating"), odd]).write_csv(
        tmp_path / "fresh.csv"
    )
    (tmp_path / "users.csv").write_text(
        "user_id\n" + "\n".join([*test, test[0], "NOBODY", side, "ODD", ""]) + "\n"
    )
    manifest = run(
        project,
        monkeypatch,
        out="rej",
        users_path=tmp_path / "users.csv",
        interactions_path=tmp_path / "fresh.csv",
    )
    rejects = pl.read_parquet(project / f"rej/dt={DATE}/rejects.parquet")
    assert dict(zip(rejects["user_id"], rejects["reason"], strict=True)) == {
        None: "missing_user_id",
        "NOBODY": "unknown_user",
        side: "no_source_history",
        "ODD": "no_known_source_items",
    }
    assert sorted(read_part(project, "rej")["user_id"].unique()) == test
    c = manifest["counts"]
    assert (c["users_in"], c["duplicates"], c["scored"], c["rejected"]) == (7, 1, 2, 4)


def test_auto_needs_validation_values_and_names_a_trained_method(project, tmp_path):
    methods = ["emcdr", "popularity"]
    with pytest.raises(PipelineError, match="evaluate"):
        trained.choose_method("auto", methods, tmp_path / "missing.parquet")
    with pytest.raises(PipelineError, match="not trained"):
        trained.choose_method("diffcdr", methods, tmp_path / "missing.parquet")
    path = write_valid_users(tmp_path, {"x": [1.0, 1.0]})
    with pytest.raises(
        PipelineError, match=r"no ndcg@10 for the trained method\(s\) \['emcdr', 'popularity'\]"
    ):
        trained.choose_method("auto", methods, path)
    path = write_valid_users(tmp_path, {"emcdr": [0.1, 0.2], "popularity": [0.1, float("nan")]})
    with pytest.raises(PipelineError, match="NaN"):
        trained.choose_method("auto", methods, path)
    pl.DataFrame({"method": ["emcdr"], "user_id": ["u0"]}).write_parquet(path)
    with pytest.raises(PipelineError, match=r"missing column\(s\) \['ndcg@10'\]"):
        trained.choose_method("auto", methods, path)


def test_auto_keeps_the_simpler_method_unless_the_best_is_significantly_ahead(tmp_path, caplog):
    """The highest validation mean is optimistic for methods selected on those users: auto
    takes the simplest method (floors first) that the best does not beat significantly."""
    caplog.set_level("INFO", logger="score")
    rng = np.random.default_rng(0)
    simple = rng.uniform(0, 0.3, 60)
    noise = rng.normal(0, 0.1, 60)
    noisy = simple + noise - noise.mean() + 0.005  # ahead on the mean, well within the noise
    methods = ["ours", "cd_ease", "popularity"]  # train order is not the order of simplicity
    path = write_valid_users(tmp_path, {"popularity": simple, "cd_ease": simple, "ours": noisy})
    name, info = trained.choose_method("auto", methods, path)
    assert info["best"] == "ours" and info["best_value"] > info["value"]
    assert name == "popularity" and info["p"] >= trained.SELECT_ALPHA  # equal values: simplest
    assert "auto: popularity" in caplog.text and "the best, ours (" in caplog.text  # says why
    two = ["ours", "popularity"]
    path = write_valid_users(tmp_path, {"popularity": simple, "ours": simple + 0.05})
    name, info = trained.choose_method("auto", two, path)
    assert (name, info["p"], info["users"]) == ("ours", None, 60)
    # One validation user says nothing about noise: the simplest is kept.
    path = write_valid_users(tmp_path, {"popularity": [0.3], "ours": [0.31]})
    assert trained.choose_method("auto", two, path)[0] == "popularity"
    # A method worse than the simplest on every user is never chosen, whatever its order.
    path = write_valid_users(tmp_path, {"popularity": simple, "global_mean": simple - 0.1})
    assert trained.choose_method("auto", ["popularity", "global_mean"], path)[0] == "popularity"


def test_parts_rotate_between_chunks_and_an_empty_partition_still_reads(
    project, monkeypatch, tmp_path
):
    whole = run(project, monkeypatch, out="one-part", method="popularity", k=5, chunk_size=4)
    monkeypatch.setattr(lists, "ROWS_PER_PART", 50)
    manifest = run(project, monkeypatch, out="parts", method="popularity", k=5, chunk_size=4)
    # 4 users x 5 items a chunk: a part closes at the first chunk boundary at or past 50 rows
    n_parts = -(-whole["counts"]["rows"] // 60)
    assert manifest["parts"] == [f"part-{i:05d}.parquet" for i in range(n_parts)] and n_parts > 1
    part_dir = project / "parts" / f"dt={DATE}"
    heights = [pl.read_parquet(part_dir / name).height for name in manifest["parts"]]
    assert heights[:-1] == [60] * (n_parts - 1)
    assert read_part(project, "parts").equals(read_part(project, "one-part"))


def test_a_run_that_would_score_nobody_fails_and_keeps_the_partition(
    project, monkeypatch, tmp_path
):
    first = run(project, monkeypatch, out="kept", method="popularity")
    before = read_part(project, "kept")
    for name, text, message in [
        (
            "nobody.csv",
            "user_id\nNOBODY\n",
            r"all 1 users of .*nobody.csv are rejected \(unknown_user: 1",
        ),
        ("none.csv", "user_id\n", r"nobody to score: .*none.csv holds no user id"),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(PipelineError, match=message):
            run(project, monkeypatch, out="kept", method="popularity", users_path=tmp_path / name)
    assert read_part(project, "kept").equals(before) and first["counts"]["rows"] == before.height


def test_a_second_run_on_the_same_output_fails_at_once(project, monkeypatch):
    busy = pytest.raises(PipelineError, match="another scoring run holds it; wait for it")
    with locked(project / "busy", "a test"), busy:
        run(project, monkeypatch, out="busy", method="popularity")
    assert list((project / "busy").iterdir()) == []
    run(project, monkeypatch, out="busy", method="popularity")  # free again once released
    assert (project / "busy" / f"dt={DATE}" / "_SUCCESS").exists()


def test_a_date_that_is_not_a_calendar_day_fails_before_any_work(project, monkeypatch):
    with pytest.raises(PipelineError, match=r"--date '2024-02-30': expected YYYY-MM-DD"):
        run(project, monkeypatch, out="bad-date", date="2024-02-30")
    assert not (project / "bad-date").exists()
    with pytest.raises(PipelineError, match=r"date '2024-3-1': expected YYYY-MM-DD"):
        load_params(project / "params.yaml", {"score.date": "2024-3-1"})


def test_a_users_file_run_names_its_out_and_is_dated_today(project, monkeypatch, tmp_path):
    users = pl.read_parquet(project / "data/split/roles.parquet")["user_id"][:5]
    pl.DataFrame({"user_id": users}).write_csv(tmp_path / "users.csv")
    monkeypatch.chdir(project)
    with pytest.raises(PipelineError, match=r"--out: required with --users"):
        score_mod.score(params(), users_path=tmp_path / "users.csv", progress=False)
    fresh = project / "data/prepared/interactions.parquet"
    with pytest.raises(PipelineError, match=r"--out: required with --interactions"):
        score_mod.score(params(), interactions_path=fresh, progress=False)
    assert params().score.date  # the stage's pinned partition date, not a scheduled run's

    def today() -> str:
        return datetime.datetime.now(datetime.UTC).date().isoformat()

    before = today()
    got = run(project, monkeypatch, out="nightly", date=None, users_path=tmp_path / "users.csv")
    assert got["date"] in (before, today())
    assert [p.name for p in (project / "nightly").iterdir()] == [f"dt={got['date']}"]


# --------------------------------------------------------------------------- crashes
def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_failed_run_leaves_the_previous_partition(project, monkeypatch):
    run(project, monkeypatch, out="crash", method="emcdr", chunk_size=8)
    part = project / "crash" / f"dt={DATE}"
    before = _snapshot(part)
    calls = []
    real = lists.ListWriter.write

    def failing(self, *a, **kw):
        calls.append(1)
        if len(calls) > 1:
            raise OSError("disk full")
        return real(self, *a, **kw)

    monkeypatch.setattr(lists.ListWriter, "write", failing)
    with pytest.raises(OSError, match="disk full"):
        run(project, monkeypatch, out="crash", method="popularity", chunk_size=8)
    assert _snapshot(part) == before
    # the finished parts stay in the hidden build directory for the next run to resume from
    assert sorted(p.name for p in (project / "crash").iterdir()) == [
        f".dt={DATE}.resume.tmp",
        f"dt={DATE}",
    ]
    monkeypatch.setattr(lists.ListWriter, "write", real)
    run(project, monkeypatch, out="crash", method="popularity", chunk_size=8)
    assert [p.name for p in (project / "crash").iterdir()] == [f"dt={DATE}"]
    assert _snapshot(part) != before


KILL_AFTER_FIRST_CHUNK = """
import os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from pipeline import score
from pipeline.config import load_params
from pipeline.recs import lists
real = lists.ListWriter.write
def write(self, *a, **kw):
    n = real(self, *a, **kw)
    self._parts._writer._writer.close()  # the first row group is on disk...
    os.kill(os.getpid(), signal.SIGKILL)  # ...when the process dies
lists.ListWriter.write = write
p = load_params("params.yaml", {"score.method": "popularity", "score.chunk_size": 8})
score.score(p, out=Path(sys.argv[1]), date=sys.argv[2], progress=False)
"""


def test_killed_run_leaves_the_previous_partition_readable_and_complete(project, monkeypatch):
    run(project, monkeypatch, out="kill", method="emcdr", chunk_size=8)
    part = project / "kill" / f"dt={DATE}"
    before = _snapshot(part)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_FIRST_CHUNK, str(project / "kill"), DATE],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = [p for p in (project / "kill").iterdir() if p.name != f"dt={DATE}"]
    assert leftovers and all(p.name.endswith(".tmp") for p in leftovers)  # hidden, half built
    assert _snapshot(part) == before
    df = pl.read_parquet(part / "part-*.parquet")
    assert (
        set(df["method"]) == {"emcdr"}
        and df.height == json.loads(before["manifest.json"])["counts"]["rows"]
    )
    # The next run cleans up and replaces the partition.
    run(project, monkeypatch, out="kill", method="popularity", chunk_size=8)
    assert [p.name for p in (project / "kill").iterdir()] == [f"dt={DATE}"]
    assert set(read_part(project, "kill")["method"]) == {"popularity"}


def test_partition_moved_aside_by_a_killed_swap_is_restored(tmp_path):
    old = tmp_path / f".dt={DATE}.old"
    old.mkdir()
    (old / "_SUCCESS").write_text("")
    (tmp_path / f".dt={DATE}.abc.tmp").mkdir()
    partition.recover(tmp_path, DATE)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"dt={DATE}"]
    assert (tmp_path / f"dt={DATE}" / "_SUCCESS").exists()


def test_a_bad_rating_in_a_csv_names_its_line_even_after_a_field_spanning_lines(tmp_path):
    """A quoted field may hold line breaks: the error names the line the record starts on,
    not its record number."""
    from pipeline.errors import InputError
    from pipeline.recs import plan

    path = tmp_path / "fresh.csv"
    path.write_text(
        "user_id,item_id,domain,rating\n"
        'u1,"an item id\nover two lines",books,4\n'
        "u1,i2,books,5\n"
        "u1,i3,books,9\n"
        "u1,i4,books,7\n"
    )
    with pytest.raises(InputError) as err:
        plan.read_interactions(path, ["u1"], ["books"], {"books": (1.0, 5.0)})
    assert f"{path}:5: field 'rating'" in str(err.value)
    assert "lines 5, 6" in str(err.value)
    assert plan.csv_lines(path, [1, 2, 3, 9]) == {1: 1, 2: 2, 3: 4, 9: 9}
