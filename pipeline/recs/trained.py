"""The trained models that rank: loaded with the data they were fitted on, the method that
scores (named, or chosen on the validation users), and a fingerprint of the model files."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl
from scipy.stats import ttest_1samp

from pipeline import paths, schemas
from pipeline.cdr import data as cdr_data
from pipeline.cdr import features, store
from pipeline.cdr.configs import METHOD_NAMES
from pipeline.cdr.data import CDRData
from pipeline.cdr.harness import Fitted
from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.io import read_parquet, sha256_file, stable_hash, write_parquet

log = logging.getLogger("score")
SELECT_METRIC = "ndcg@10"  # what score.method auto compares on the validation cold users
SELECT_ALPHA = 0.05  # auto: a simpler method is kept unless the best beats it at this level


def load(params: Params, model_dir: Path = paths.MODELS) -> tuple[CDRData, Fitted]:
    """The split's data and the methods trained on it (no training), with the condition
    inputs (profiles, item features) the methods were trained with."""
    pair = params.pair
    data = cdr_data.load(paths.INTERACTIONS, paths.ROLES, pair.source, pair.target)
    extra = features.condition_extra(
        data, params.train, pair.source, paths.USER_PROFILES, paths.ITEM_FEATURES
    )
    return data, store.load(model_dir, data, params.train, extra)


def model_version(model_dir: Path) -> str:
    """Fingerprint of every file of the model directory (names and contents)."""
    files = sorted(p for p in Path(model_dir).iterdir() if p.is_file())
    return stable_hash({p.name: sha256_file(p) for p in files})


def choose_method(requested: str, trained: Sequence[str], per_user_path: Path) -> tuple[str, dict]:
    """The method to score with, and how it was chosen (for the manifest): the one named, or
    for ``auto`` :func:`simplest_within_noise` of the trained methods' per-user validation
    values in ``per_user_path`` (evaluate's ``valid_users.parquet``)."""
    if requested != "auto":
        if requested not in trained:
            raise PipelineError(
                f"score.method: '{requested}' was not trained (trained: {', '.join(trained)}); "
                "add it to train.methods or pick another"
            )
        return requested, {"by": "params"}
    name, info = simplest_within_noise(_valid_values(per_user_path, trained))
    if name == info["best"]:
        why = "the best, and significantly ahead of every simpler method"
    else:
        why = (
            f"the best, {info['best']} ({info['best_value']:.4f}), is not ahead of it at "
            f"p < {SELECT_ALPHA} (p = {info['p']:.3f})"
        )
    log.info(
        "score.method auto: %s, valid %s %.4f over %d users: %s",
        name,
        SELECT_METRIC,
        info["value"],
        info["users"],
        why,
    )
    return name, {**info, "file": str(per_user_path)}


def simplest_within_noise(values: dict[str, np.ndarray]) -> tuple[str, dict]:
    """The method ``score.method: auto`` takes, from each method's validation NDCG@10 per user
    (the same users, in the same order, for every method).

    The highest mean is optimistic for the methods selected on those same users (a
    generator's checkpoint, a penalty) and exact for those that select nothing, so it alone
    can pick a method below a simple floor. As the one-standard-error rule does, the simplest
    method within noise of the best is taken instead: going from the simplest (in
    :data:`~pipeline.cdr.configs.METHOD_NAMES` order: floors, published methods, ours), the
    first that the best is *not* ahead of at ``SELECT_ALPHA`` (paired one-sided t-test over
    the users), else the best itself. ``ours``' ablations come after ``ours``: they are
    diagnostics, taken only when significantly better than everything before them.
    """
    means = {m: float(v.mean()) for m, v in values.items()}
    # max() keeps the first of equal values: ties go to the earlier method in train order.
    best = max(means, key=means.get)
    name, p = best, None
    for m in sorted(values, key=_simplicity):
        if m == best:
            break
        p_m = _p_ahead(values[best] - values[m])
        if p_m >= SELECT_ALPHA:
            name, p = m, round(p_m, 6)
            break
    return name, {
        "by": f"simplest within noise of the best valid {SELECT_METRIC}",
        "value": round(means[name], 6),
        "best": best,
        "best_value": round(means[best], 6),
        "p": p,  # one-sided p of best > chosen (None: the best itself)
        "users": len(values[best]),
    }


def _p_ahead(diff: np.ndarray) -> float:
    """One-sided p-value of a positive mean of the paired differences ``diff``."""
    if len(diff) < 2:  # one user says nothing about noise
        return 1.0
    if np.ptp(diff) <= 1e-12:  # the same difference for every user: no noise to test against
        return 0.0 if diff[0] > 0 else 1.0
    return float(ttest_1samp(diff, 0.0, alternative="greater").pvalue)


def _simplicity(method: str) -> int:
    return METHOD_NAMES.index(method) if method in METHOD_NAMES else len(METHOD_NAMES)


def write_valid_values(values: Mapping[str, tuple[Sequence, Sequence[float]]], path: Path) -> None:
    """Write what :func:`choose_method` reads: per method, (validation user ids, their
    NDCG@10), one row per (method, user) (schema :data:`pipeline.schemas.VALID_USERS`)."""
    methods, users, scores = [], [], []
    for method, (ids, vals) in values.items():
        methods += [method] * len(ids)
        users += [str(u) for u in ids]
        scores += [float(v) for v in vals]
    table = pl.DataFrame(
        {"method": methods, "user_id": users, SELECT_METRIC: scores},
        schema={"method": pl.String, "user_id": pl.String, SELECT_METRIC: pl.Float64},
    )
    write_parquet(table, path, schema=schemas.VALID_USERS)


def _valid_values(path: Path, trained: Sequence[str]) -> dict[str, np.ndarray]:
    """Each trained method's per-user validation NDCG@10, on the users every method has."""
    if not Path(path).exists():
        raise PipelineError(
            f"score.method is auto but {path} does not exist: run `dvc repro evaluate` "
            "or set score.method"
        )
    df = read_parquet(path)
    missing = sorted({"method", "user_id", SELECT_METRIC} - set(df.columns))
    if missing:
        raise PipelineError(f"{path}: missing column(s) {missing}: run `dvc repro evaluate`")
    df = df.filter(pl.col("method").is_in(list(trained)))
    absent = sorted(set(trained) - set(df["method"]))
    if absent:
        raise PipelineError(
            f"{path}: no {SELECT_METRIC} for the trained method(s) {absent}: it is older than "
            "the models; run `dvc repro evaluate` or set score.method"
        )
    if df.select(pl.struct("method", "user_id").is_duplicated().any()).item():
        raise PipelineError(f"{path}: a (method, user_id) pair appears twice: rerun evaluate")
    if not df[SELECT_METRIC].is_finite().all():
        raise PipelineError(f"{path}: {SELECT_METRIC} holds NaN or infinite values: rerun evaluate")
    wide = df.pivot(on="method", index="user_id", values=SELECT_METRIC).drop_nulls()
    if wide.is_empty():
        raise PipelineError(
            f"{path}: no validation user has a value for every trained method "
            "(no validation user with a positive?): set score.method"
        )
    return {m: wide[m].to_numpy() for m in trained}
