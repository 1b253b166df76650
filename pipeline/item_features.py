"""Stage ``item_features``: item text, pictures and captions -> vectors in a Parquet feature store.

For every item of ``data/prepared/items.parquet`` (every domain) it writes one row of
``data/features/items.parquet``, keyed by ``item_id`` + ``domain``, with

- ``text_emb``: the item text (title, then categories, then description, with HTML tags,
  control characters and extra spaces removed, cut to ``max_text_chars``) through the text
  encoder: the offline MiniLM package by default, the CLIP text tower (``text_encoder: clip``),
  or any Hugging Face encoder by name or directory;
- ``image_emb`` (only with ``image_encoder: clip``): the item's first ``ok`` picture in the
  ``images`` store through the open_clip image tower (``clip.model`` / ``clip.pretrained``);
- ``caption`` / ``caption_emb`` (only with ``caption.enabled``): a vision-language model's
  caption of that picture (prompt from ``caption.prompt``), embedded with the text encoder;
- ``fused_emb``: the parts joined into one vector, each part L2-normalised and scaled so the
  whole has unit norm (:mod:`pipeline.features.item_store` says how and why);
- flags ``has_text``, ``has_image``, ``has_caption``, and the input hashes the cache uses.

A missing part (no text, no ``ok`` picture, an image that does not decode, an empty caption)
is a vector of zeros with its flag false: never a crash, never a made-up vector. A re-run
encodes only new or changed inputs (:mod:`pipeline.features.items`); the store is written to
a temporary file and renamed into place. Items are encoded :data:`CHUNK_ITEMS` at a time, each
chunk journalled, so a killed run resumes after its last chunk
(:class:`~pipeline.features.item_store.Journal`). ``metrics/item_features.json`` gets the
counts.

``engine: ray`` runs the same encode loop on Ray Data actors, a batch of items per call, and
streams the rows into the same store (:mod:`pipeline.features.item_batches`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from pipeline import cli, cpu, distributed, engine, paths
from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.features import item_batches
from pipeline.features.image_store import IMAGES
from pipeline.features.item_store import Journal, load_cache, store_meta, table_cache, write_store
from pipeline.features.items import (
    encode_rank,
    load_encoders,
    log_encoders,
    log_summary,
    run_stats,
    sum_counts,
)
from pipeline.io import read_parquet, write_json

if TYPE_CHECKING:
    from pipeline.config.item_features import ItemFeaturesParams

log = logging.getLogger("item_features")
PARAMS = ("images.enabled", "item_features")  # read here; dvc.yaml lists the same

ITEM_FEATURES = paths.ITEM_FEATURES
METRICS = paths.METRICS / "item_features.json"
CHUNK_ITEMS = 4096  # items encoded and journalled at a time (what a killed run can lose)


def item_features(
    params: Params,
    items_path: Path = paths.ITEMS,
    image_store: Path = IMAGES,
    out_path: Path = ITEM_FEATURES,
    metrics_path: Path = METRICS,
) -> dict:
    """Encode (or reuse) every item's features into ``out_path``; the run's stats."""
    p = params.item_features
    started = time.perf_counter()
    if p.caption.enabled and not params.images.enabled:
        raise PipelineError("item_features.caption.enabled needs images.enabled: true")
    wants_pictures = p.image_encoder == "clip" or p.caption.enabled
    if wants_pictures and not Path(image_store).is_dir():  # before any model is loaded
        raise PipelineError(
            f"item features need item pictures but {image_store} does not exist: run the "
            "images stage first (dvc repro images)"
        )
    ray = p.engine == "ray"
    n_items = read_parquet(items_path, columns=["item_id"]).height if ray else 0
    if n_items:  # the ray engine (an empty table has nothing to send out)
        with engine.session():
            meta, per_worker = item_batches.encode_on_ray(
                p, items_path, image_store, out_path, n_items
            )
    else:
        meta, per_worker = _encode_here(p, items_path, image_store, out_path)
    log_encoders(meta)
    stats = run_stats(per_worker, meta, time.perf_counter() - started)
    write_json(stats, metrics_path)
    log_summary(stats, out_path)
    return stats


def _encode_here(
    p: ItemFeaturesParams, items_path: Path, image_store: Path, out_path: Path
) -> tuple[dict, list]:
    """The local engine: every item in this process, chunk by chunk (each journalled, and
    reused by the later chunks as one pass would); (store meta, [counts])."""
    items = read_parquet(items_path, columns=item_batches.COLUMNS)
    encoders = load_encoders(p, distributed.resolve_device(p.device, "item_features.device"))
    ids, dims = encoders.ids, encoders.dims
    cache, journal = load_cache(out_path, ids, dims), Journal(out_path)
    cache.update(journal.cache(ids, dims))  # what a killed run encoded
    meta = store_meta(p, encoders)
    tables, counts = [], []
    with cpu.Job("item_features") as job:  # torch threads: this job's share of the cores
        for lo in range(0, max(items.height, 1), CHUNK_ITEMS):
            job.rebalance()
            chunk = items.slice(lo, CHUNK_ITEMS)
            table, chunk_counts = encode_rank(p, chunk, encoders, cache, image_store)
            if items.height > CHUNK_ITEMS:
                journal.add(lo // CHUNK_ITEMS, table, meta)
                cache.update(table_cache(table, dict.fromkeys(ids, True), dims))
            tables.append(table)
            counts.append(chunk_counts)
    write_store(pa.concat_tables(tables), meta, out_path)
    journal.remove()
    total = sum_counts(counts)
    total["encode_seconds"] = sum(c["encode_seconds"] for c in counts)
    return meta, [total]


def main(argv: Sequence[str] | None = None) -> dict:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    return item_features(cli.params_from(args, "item_features", PARAMS))


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
