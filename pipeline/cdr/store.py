"""Save and load a fitted harness: base models plus every method, as torch state dicts.

Layout of ``data/models/``: ``base.pt`` (the four base models), ``<method>.pt`` (its
networks, selected hyper-parameters and selection info) and ``manifest.json`` (what was
trained on what). Files hold tensors and plain values only (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
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
from pipeline.io import atomic_dir, read_json, write_json


def data_fingerprint(data: CDRData) -> str:
    """Identifies the indexing a model was trained with (users, items, roles)."""
    h = hashlib.sha256()
    for arr in (data.user_ids, data.src_item_ids, data.tgt_item_ids):
        h.update("\n".join(arr.tolist()).encode())
    h.update(data.role.tobytes())
    return h.hexdigest()[:16]


def _base_state(base: BaseModels) -> dict[str, Any]:
    out: dict[str, Any] = {"seconds": base.seconds}
    for name in ("src_mf", "tgt_mf", "src_bpr", "tgt_bpr"):
        model = getattr(base, name)
        out[name] = None if model is None else model.state_dict()
    return out


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
        seconds=state["seconds"],
    )


def save(fitted: Fitted, out_dir: Path, meta: dict[str, Any]) -> None:
    """Write the whole model directory atomically (a crash leaves the previous one)."""
    with atomic_dir(out_dir) as tmp:
        torch.save(_base_state(fitted.ctx.base), tmp / "base.pt")
        for name, method in fitted.methods.items():
            torch.save(
                {"state": method.state_dict(), "train_seconds": fitted.train_seconds[name]},
                tmp / f"{name}.pt",
            )
        write_json(
            {
                **meta,
                "methods": list(fitted.methods),
                "skipped": fitted.skipped,
                "data_fingerprint": data_fingerprint(fitted.ctx.data),
                "base_seconds": fitted.ctx.base.seconds,
            },
            tmp / "manifest.json",
        )


def load(
    model_dir: Path, data: CDRData, train: TrainParams, extra: dict[str, Any] | None = None
) -> Fitted:
    model_dir = Path(model_dir)
    manifest_path = model_dir / "manifest.json"
    if not manifest_path.exists():
        raise PipelineError(f"{model_dir}: no trained models (run `dvc repro train`)")
    manifest = read_json(manifest_path)
    if manifest["data_fingerprint"] != data_fingerprint(data):
        raise PipelineError(
            f"{manifest_path}: the models were trained on other data or another split "
            "(run `dvc repro train`)"
        )
    base = _load_base(torch.load(model_dir / "base.pt", weights_only=True), data)
    ctx = make_context(data, base, train.base, int(manifest.get("seed", train.seed)))
    ctx.extra.update(extra or {})
    fitted = Fitted(ctx, {}, skipped=manifest.get("skipped", {}))
    configs = train.method_configs()
    for name in manifest["methods"]:
        blob = torch.load(model_dir / f"{name}.pt", weights_only=True)
        cls = METHODS[name]
        method = cls(configs.get(cls.config_name or name))
        with torch.no_grad():
            method.load_state_dict(ctx, blob["state"])
        fitted.methods[name] = method
        fitted.train_seconds[name] = blob["train_seconds"]
    return fitted
