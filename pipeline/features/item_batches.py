"""Item features on the ``ray`` engine (:mod:`pipeline.engine`): the local encode loop, one
batch of items per actor call, the store written as the batches come back.

Ray Data reads ``items.parquet`` and cuts it into batches of ``item_features.ray.batch_size``
items. Each actor (:class:`EncodeItems`) loads the encoders and the previous store's cache once,
then runs :func:`~pipeline.features.items.encode_rank`, the local engine's code, on each batch.
The rows come back in items-table order and are streamed into the store file (renamed into
place when complete), so the driver never holds the whole store. Identical inputs are encoded
once per batch rather than once per run, so the ``computed`` counts can be higher than the local
engine's; the vectors are the same.
"""

from __future__ import annotations

import os
import socket
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa

from pipeline import distributed, engine
from pipeline.features.item_store import PARTS, content, load_cache, store_meta, store_schema
from pipeline.features.items import encode_rank, load_encoders, sum_counts
from pipeline.io import ParquetPartWriter

if TYPE_CHECKING:
    from pipeline.config.item_features import ItemFeaturesParams

COLUMNS = ["item_id", "domain", "title", "description", "categories"]


class EncodeItems:
    """A Ray Data actor: the encoders and the cache loaded once, then one batch per call."""

    def __init__(self, p: ItemFeaturesParams, image_store: Path, out_path: Path):
        self.p, self.image_store = p, Path(image_store)
        self.encoders = load_encoders(
            p, distributed.resolve_device(p.device, "item_features.device")
        )
        self.cache = load_cache(Path(out_path), self.encoders.ids, self.encoders.dims)
        self.meta = store_meta(p, self.encoders)
        self.actor = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = pl.from_arrow(batch)
        table, counts = encode_rank(self.p, items, self.encoders, self.cache, self.image_store)
        return engine.with_side(table, {"actor": self.actor, "counts": counts, "meta": self.meta})


def encode_on_ray(
    p: ItemFeaturesParams, items_path: Path, image_store: Path, out_path: Path, n_items: int
) -> tuple[dict, list[dict]]:
    """Encode the ``n_items`` items on Ray actors and write the store at ``out_path``:
    ``(store metadata, counts per actor)``."""
    ds = engine.read_parquet(items_path, COLUMNS, p.ray.batch_size)
    kwargs = {
        "p": p,
        "image_store": Path(image_store).resolve(),
        "out_path": Path(out_path).resolve(),
    }
    batches = engine.map_ordered(ds, EncodeItems, kwargs, p.ray, p.device, n_items)
    per_actor: dict[str, list[dict]] = defaultdict(list)
    totals = {"items": 0, "with_text": 0, "with_image": 0, "with_caption": 0}
    writer, meta = None, {}
    try:
        for block in batches:
            rows, facts = engine.split_side(block)
            for info in facts:
                per_actor[info["actor"]].append(info["counts"])
                meta = info["meta"]
            if writer is None:
                dims = meta["dims"]
                schema = store_schema({k: dims[k] for k in PARTS}, dims["fused"])
                writer = ParquetPartWriter(out_path, schema)
            writer.write(rows)
            for key, value in content(rows).items():
                totals[key] += value
        if writer is None:
            raise RuntimeError(f"the ray engine returned no rows for {n_items} items")
        writer.set_meta({**meta, "content": totals})
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return meta, [_one_actor(counts) for counts in per_actor.values()]


def _one_actor(batches: list[dict]) -> dict:
    """One actor's batches added up: they ran one after another, so their seconds add too."""
    total = sum_counts(batches)
    total["encode_seconds"] = sum(c["encode_seconds"] for c in batches)
    return total
