"""Save and load a fitted harness: base models plus every method, as torch state dicts.

Layout of ``data/models/``: ``base.pt`` (the four base models), ``<method>.pt`` (its
networks, selected hyper-parameters and selection info) and ``manifest.json`` (what was
trained on what, and the sha256 of every ``.pt`` file). The same weights give the same bytes:
the files hold no timings (:func:`timings` are ``train``'s metrics), so a retraining that
changes nothing keeps the model version and DVC's hash.

Loading checks every file against the manifest's sha256 before torch reads it, then loads it
weights-only (``torch.load(weights_only=True)``: tensors and plain values, nothing else is
unpickled). A file that is missing, changed, corrupt or of another method is refused with one
line naming it; a model is never silently replaced by fresh weights.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from models.mf import BPRMF, BiasedMF
from pipeline.cdr.base import BaseModels
from pipeline.cdr.configs import TrainParams
from pipeline.cdr.data import CDRData
from pipeline.cdr.harness import Fitted, make_context
from pipeline.cdr.methods import METHODS
from pipeline.errors import PipelineError
from pipeline.io import atomic_dir, read_json, sha256_file, stable_hash, write_json

MANIFEST = "manifest.json"
BASE = "base.pt"
RETRAIN = "run `dvc repro train`"


def data_fingerprint(data: CDRData) -> str:
    """Identifies the indexing a model was trained with (users, items, roles)."""
    h = hashlib.sha256()
    for arr in (data.user_ids, data.src_item_ids, data.tgt_item_ids):
        h.update("\n".join(arr.tolist()).encode())
    h.update(data.role.tobytes())
    return h.hexdigest()[:16]


def _base_state(base: BaseModels) -> dict[str, Any]:
    return {
        name: None if getattr(base, name) is None else getattr(base, name).state_dict()
        for name in ("src_mf", "tgt_mf", "src_bpr", "tgt_bpr")
    }


def _load_base(state: dict[str, Any], data: CDRData) -> BaseModels:
    def mf(st, n_items):
        if st is None:
            return None
        m = BiasedMF(data.n_users, n_items, st["user.weight"].shape[1])
        m.load_state_dict(st)
        return m.eval()

    def bpr(st, n_items):
        m = BPRMF(data.n_users, n_items, st["user.weight"].shape[1])
        m.load_state_dict(st)
        return m.eval()

    return BaseModels(
        src_mf=mf(state["src_mf"], data.n_src_items),
        tgt_mf=mf(state["tgt_mf"], data.n_tgt_items),
        src_bpr=bpr(state["src_bpr"], data.n_src_items),
        tgt_bpr=bpr(state["tgt_bpr"], data.n_tgt_items),
        seconds=0.0,  # loaded, not trained: the training time is in train's metrics
    )


def save(fitted: Fitted, out_dir: Path, meta: dict[str, Any]) -> None:
    """Write the whole model directory atomically (a crash leaves the previous one)."""
    with atomic_dir(out_dir) as tmp:
        torch.save(_base_state(fitted.ctx.base), tmp / BASE)
        for name, method in fitted.methods.items():
            torch.save({"state": method.state_dict()}, tmp / f"{name}.pt")
        files = {p.name: sha256_file(p) for p in sorted(tmp.glob("*.pt"))}
        write_json(
            {
                **meta,
                "methods": list(fitted.methods),
                "skipped": fitted.skipped,
                "data_fingerprint": data_fingerprint(fitted.ctx.data),
                "files": files,
            },
            tmp / MANIFEST,
        )


def timings(fitted: Fitted) -> dict[str, Any]:
    """How long training took (base models, each method): ``train``'s metrics, kept out of the
    model files so that the same weights give the same files."""
    return {
        "base_seconds": round(fitted.ctx.base.seconds, 3),
        "train_seconds": {m: round(s, 3) for m, s in fitted.train_seconds.items()},
    }


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """The manifest of ``model_dir``; one-line errors when it is missing or broken."""
    path = Path(model_dir) / MANIFEST
    if not path.exists():
        raise PipelineError(f"{model_dir}: no trained models ({RETRAIN})")
    try:
        manifest = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{path}: unreadable ({_reason(exc)}); {RETRAIN}") from None
    missing = [
        k
        for k in ("methods", "data_fingerprint", "files")
        if not isinstance(manifest, dict) or k not in manifest
    ]
    if missing:
        what = (
            "no sha256 per model file (written before they were recorded)"
            if missing == ["files"]
            else f"no {', '.join(missing)}"
        )
        raise PipelineError(f"{path}: {what}; {RETRAIN}")
    return manifest


def verify(model_dir: Path, manifest: dict[str, Any]) -> None:
    """Every model file the manifest lists exists and has the sha256 recorded at training."""
    for name in [BASE, *(f"{m}.pt" for m in manifest["methods"])]:
        path = Path(model_dir) / name
        expected = manifest["files"].get(name)
        if expected is None:
            raise PipelineError(f"{path}: not in {MANIFEST}'s checksums; {RETRAIN}")
        if not path.is_file():
            raise PipelineError(f"{path}: missing (listed in {MANIFEST}); {RETRAIN}")
        got = sha256_file(path)
        if got != expected:
            raise PipelineError(
                f"{path}: sha256 {got[:12]}... is not the {expected[:12]}... recorded at "
                f"training: the file is damaged or was replaced; {RETRAIN}"
            )


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, its failures as one line naming the file."""
    try:
        with warnings.catch_warnings():  # the file's sha256 was checked: the O(nnz) scan is kept,
            # its notice about speed is not for users
            warnings.filterwarnings("ignore", "Validating sparse tensor invariants")
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        # torch's own message suggests the unsafe weights_only=False: never for these files
        raise PipelineError(
            f"{path}: not a weights-only torch file (only tensors and plain values are "
            f"loaded); {RETRAIN}"
        ) from None
    except EOFError:
        raise PipelineError(f"{path}: truncated; {RETRAIN}") from None
    except (OSError, RuntimeError, ValueError) as exc:
        raise PipelineError(
            f"{path}: cannot be read as a torch file ({_reason(exc)}); {RETRAIN}"
        ) from None


def _reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def params_hash(train: TrainParams) -> str:
    """The manifest's ``params_hash``: what the models were trained with (the train section)."""
    return stable_hash(train.model_dump())


def _flat(tree: Any, prefix: str = "train") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}.{key}").items()}


def _changed_params(manifest: dict, train: TrainParams) -> str:
    """The train params that differ from the ones the models were trained with, for the error."""
    old = manifest.get("train_params")
    if old is None:
        return "params.yaml or -S changed since"
    then, now = _flat(old), _flat(train.model_dump(mode="json"))  # as train.py stores them
    keys = sorted(k for k in then.keys() | now.keys() if then.get(k, "-") != now.get(k, "-"))
    shown = [f"{k}: {then.get(k, '(none)')!r} then, {now.get(k, '(none)')!r} now" for k in keys]
    return "; ".join(shown[:5]) + (f"; {len(keys) - 5} more" if len(keys) > 5 else "")


def load(
    model_dir: Path, data: CDRData, train: TrainParams, extra: dict[str, Any] | None = None
) -> Fitted:
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    if manifest["data_fingerprint"] != data_fingerprint(data):
        raise PipelineError(
            f"{model_dir / MANIFEST}: the models were trained on other data or another split "
            f"({RETRAIN})"
        )
    trained_with = manifest.get("params_hash")
    if trained_with is not None and trained_with != params_hash(train):
        raise PipelineError(
            f"{model_dir / MANIFEST}: the models were trained with other `train` params than "
            f"the ones given now ({_changed_params(manifest, train)}): {RETRAIN}, or use the "
            "params they were trained with"
        )
    verify(model_dir, manifest)
    try:
        base = _load_base(_torch_load(model_dir / BASE), data)
    except (KeyError, TypeError, RuntimeError, IndexError, AttributeError) as exc:
        raise PipelineError(
            f"{model_dir / BASE}: does not hold the base models of this data ({_reason(exc)}); "
            f"{RETRAIN}"
        ) from None
    ctx = make_context(data, base, train.base, int(manifest.get("seed", train.seed)))
    ctx.extra.update(extra or {})
    fitted = Fitted(ctx, {}, skipped=manifest.get("skipped", {}))
    configs = train.method_configs()
    for name in manifest["methods"]:
        path = model_dir / f"{name}.pt"
        if name not in METHODS:
            raise PipelineError(f"{model_dir / MANIFEST}: unknown method '{name}'; {RETRAIN}")
        blob = _torch_load(path)
        cls = METHODS[name]
        method = cls(configs.get(cls.config_name or name))
        try:
            with torch.no_grad():
                method.load_state_dict(ctx, blob["state"])  # a wrong file: a missing key
        except (KeyError, TypeError, RuntimeError, ValueError, IndexError, AttributeError) as exc:
            raise PipelineError(
                f"{path}: does not hold a trained '{name}' model ({_reason(exc)}); {RETRAIN}"
            ) from None
        fitted.methods[name] = method
    return fitted
