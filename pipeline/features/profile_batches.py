"""User profiles generated and embedded on ``user_profiles.engine``: in this process
(``local``), or in Ray Data actors (``ray``, :mod:`pipeline.engine`) with the same per-batch code.

On ray, two passes. First the users pending generation go to actors that load the LLM once
(:class:`WriteProfiles`) and run :func:`~pipeline.features.profiles.generate_profiles` on each
batch; every ``user_profiles.batch_size`` users of the pending list form one generate call, as
in the local engine, so greedy decoding writes the same texts. Each finished batch is
journalled here as it comes back, so an interrupted run resumes. Then every profile text goes
to actors that load the item text encoder once (:class:`EmbedTexts`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipeline import cpu, distributed, engine
from pipeline.features.encoders.text import load_item_text_encoder
from pipeline.features.profile_store import JOURNAL_KEYS, Journal
from pipeline.features.profiles import generate_profiles, load_prompt, make_writer

if TYPE_CHECKING:
    from pipeline.config.item_features import ItemFeaturesParams
    from pipeline.config.user_profiles import UserProfilesParams
    from pipeline.features.prompts import Prompt

PENDING = pa.schema(
    [
        ("user_id", pa.string()),
        ("history", pa.list_(pa.string())),  # the prompt lines
        ("liked", pa.list_(pa.string())),  # categories for the fallback
        ("input_hash", pa.string()),
    ]
)


def generate(
    p: UserProfilesParams, prompt: Prompt, todo: list[dict], source: str, target: str,
    journal: Journal, job: cpu.Job,
) -> None:  # fmt: skip
    """Fill ``profile_text``, ``status``, ``model`` (and ``rejected``) of the pending users,
    each finished batch journalled (resumable); on the local engine the torch threads are
    resized between batches to this job's share of the cores."""
    if p.engine == "ray":
        generate_on_ray(p, todo, source, target, journal)
        return
    with contextlib.closing(
        make_writer(p, distributed.resolve_device(p.device, "user_profiles.device"))
    ) as writer:

        def on_batch(batch: list[dict]) -> None:
            journal.append(batch, writer.model_id)
            job.rebalance()

        generate_profiles(writer, prompt, todo, p, source, target, on_batch)
    for rec in todo:
        rec["model"] = writer.model_id


def embed(
    features: ItemFeaturesParams, texts: list[str], p: UserProfilesParams
) -> tuple[np.ndarray, dict]:
    """The profile vectors, in the item text encoder's space, and the encoder's description."""
    if p.engine == "ray" and texts:
        return embed_on_ray(features, texts, p)
    encoder = load_item_text_encoder(
        features, distributed.resolve_device(p.device, "user_profiles.device")
    )
    if not texts:
        return np.zeros((0, encoder.dim), np.float32), encoder.describe()
    return encoder.encode(texts, features.batch_size), encoder.describe()


class WriteProfiles:
    """A Ray Data actor: the LLM loaded once, then the profiles of one batch of users a call."""

    def __init__(self, p: UserProfilesParams, template: Path, source: str, target: str):
        self.p, self.source, self.target = p, source, target
        self.prompt = load_prompt(template)
        device = distributed.resolve_device(p.device, "user_profiles.device")
        self.writer = make_writer(p, device, engine.threads(p.ray.cpus_per_actor))

    def __call__(self, batch: pa.Table) -> pa.Table:
        users = batch.to_pylist()
        generate_profiles(
            self.writer, self.prompt, users, self.p, self.source, self.target, progress=False
        )
        out = {k: [u.get(k) for u in users] for k in JOURNAL_KEYS}
        return pa.table({**out, "model": [self.writer.model_id] * len(users)})

    def __del__(self) -> None:  # when the actor shuts down (engine.Hosted lets go of it)
        if hasattr(self, "writer"):
            self.writer.close()  # a llamacpp writer stops its server


def generate_on_ray(
    p: UserProfilesParams, todo: list[dict], source: str, target: str, journal: Journal
) -> None:
    """Fill ``profile_text``, ``status``, ``model`` (and ``rejected``) of the pending users."""
    per_call = p.batch_size * max(1, p.ray.batch_size // p.batch_size)  # whole generate calls
    table = pa.Table.from_pylist([{k: u[k] for k in PENDING.names} for u in todo], PENDING)
    kwargs = {"p": p, "template": Path(p.template).resolve(), "source": source, "target": target}
    ds = engine.blocks(table, per_call)
    done = 0
    for block in engine.map_ordered(
        ds, WriteProfiles, kwargs, p.ray, p.device, len(todo), per_call
    ):
        users = todo[done : done + block.num_rows]
        for user, row in zip(users, block.to_pylist(), strict=True):
            if row["input_hash"] != user["input_hash"]:
                raise RuntimeError("the ray engine returned profiles out of order")
            user.update((k, v) for k, v in row.items() if v is not None)
        for model, rows in _by_model(users).items():
            journal.append(rows, model)
        done += block.num_rows


def _by_model(users: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for u in users:
        out.setdefault(u["model"], []).append(u)
    return out


class EmbedTexts:
    """A Ray Data actor: the item text encoder loaded once, then one batch of texts a call."""

    def __init__(self, features: ItemFeaturesParams, device: str):
        self.batch_size = features.batch_size
        self.encoder = load_item_text_encoder(
            features, distributed.resolve_device(device, "user_profiles.device")
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = self.encoder.encode(batch["text"].to_pylist(), self.batch_size)
        flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1), pa.float32())
        table = pa.table({"emb": pa.FixedSizeListArray.from_arrays(flat, self.encoder.dim)})
        return engine.with_side(table, self.encoder.describe())


def embed_on_ray(
    features: ItemFeaturesParams, texts: list[str], p: UserProfilesParams
) -> tuple[np.ndarray, dict]:
    """The vectors of ``texts`` (at least one), and the encoder's description."""
    ds = engine.blocks(pa.table({"text": pa.array(texts, pa.string())}), p.ray.batch_size)
    kwargs = {"features": features, "device": p.device}
    parts, encoder = [], {}
    for block in engine.map_ordered(ds, EmbedTexts, kwargs, p.ray, p.device, len(texts)):
        rows, facts = engine.split_side(block)
        encoder = facts[0] if facts else encoder
        column = rows["emb"].combine_chunks()
        parts.append(column.flatten().to_numpy().reshape(-1, column.type.list_size))
    return np.concatenate(parts), encoder
