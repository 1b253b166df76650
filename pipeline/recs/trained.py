"""The trained models that rank: loaded with the data they were fitted on, the method that
scores (named, or the best on validation), and a fingerprint of the model files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline import paths
from pipeline.cdr import data as cdr_data
from pipeline.cdr import features, store
from pipeline.cdr.data import CDRData
from pipeline.cdr.harness import Fitted
from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.io import read_json, sha256_file, stable_hash

SELECT_METRIC = "ndcg@10"  # what score.method auto maximises on the validation cold users


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


def choose_method(requested: str, trained: Sequence[str], valid_path: Path) -> tuple[str, dict]:
    """The method to score with, and how it was chosen (for the manifest)."""
    if requested != "auto":
        if requested not in trained:
            raise PipelineError(
                f"score.method: '{requested}' was not trained (trained: {', '.join(trained)}); "
                "add it to train.methods or pick another"
            )
        return requested, {"by": "params"}
    if not Path(valid_path).exists():
        raise PipelineError(
            f"score.method is auto but {valid_path} does not exist: run `dvc repro evaluate` "
            "or set score.method"
        )
    valid = read_json(valid_path)
    scored = [
        (m, valid[m][SELECT_METRIC])
        for m in trained
        if m in valid and valid[m].get(SELECT_METRIC) is not None
    ]
    if not scored:
        raise PipelineError(f"{valid_path}: no {SELECT_METRIC} for any trained method")
    # max() keeps the first of equal values: ties go to the earlier method in train order.
    name, value = max(scored, key=lambda mv: mv[1])
    return name, {"by": f"best valid {SELECT_METRIC}", "value": value, "file": str(valid_path)}
