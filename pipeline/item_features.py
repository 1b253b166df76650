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
a temporary file and renamed into place. Under ``accelerate launch`` each rank encodes every
``world``-th item; rank 0 merges the parts. ``metrics/item_features.json`` gets the counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline import cli, distributed, paths
from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.features.image_store import IMAGES
from pipeline.features.item_store import load_cache, store_meta, write_store
from pipeline.features.items import Encoders, encode_rank, load_encoders, run_stats
from pipeline.io import read_parquet, write_json

log = logging.getLogger("item_features")
PARAMS = ("images.enabled", "item_features")  # read here; dvc.yaml lists the same

ITEM_FEATURES = paths.ITEM_FEATURES
METRICS = paths.METRICS / "item_features.json"


def item_features(
    params: Params,
    items_path: Path = paths.ITEMS,
    image_store: Path = IMAGES,
    out_path: Path = ITEM_FEATURES,
    metrics_path: Path = METRICS,
) -> dict:
    """Encode (or reuse) every item's features into ``out_path``; the stats on rank 0."""
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
    rank = distributed.rank(p.device)
    items = read_parquet(
        items_path, columns=["item_id", "domain", "title", "description", "categories"]
    ).with_row_index("row")
    mine = items
    if rank.world > 1 and items.height:
        mine = items.gather_every(rank.world, offset=rank.index)

    encoders = load_encoders(p, rank.device)
    _log_encoders(encoders)
    cache = load_cache(out_path, encoders.ids, encoders.dims)
    table, counts = encode_rank(p, mine, encoders, cache, image_store, rank.is_main)
    meta = store_meta(p, encoders)
    per_rank = write_store(table, mine["row"], counts, meta, out_path, rank)
    if not rank.is_main:
        return {}
    stats = run_stats(per_rank, encoders, time.perf_counter() - started)
    write_json(stats, metrics_path)
    _log_summary(stats, out_path)
    return stats


def _log_encoders(encoders: Encoders) -> None:
    text = encoders.text
    log.info("item features: text encoder %s (%d-d) from %s", text.name, text.dim, text.source)
    if encoders.clip is not None:
        c = encoders.clip
        log.info(
            "item features: image encoder open_clip %s (%d-d) from %s", c.name, c.dim, c.source
        )
    else:
        log.info("item features: image encoder off (item_features.image_encoder: none)")
    if encoders.captioner is not None:
        c = encoders.captioner
        log.info("item features: captions by %s, prompt %s", c.name, c.prompt.version)
    else:
        log.info("item features: captions off (item_features.caption.enabled: false)")


def _log_summary(stats: dict, out_path: Path) -> None:
    parts = stats["parts"]
    log.info(
        "item features: %d items -> %s: %d encoded, %d reused (text %d computed / %d reused, "
        "images %d / %d, captions %d / %d); %d without text, %s without picture; %.1f s",
        stats["items"],
        out_path,
        stats["encoded"],
        stats["reused"],
        parts["text"]["computed"],
        parts["text"]["reused"],
        parts["image"]["computed"],
        parts["image"]["reused"],
        parts["caption"]["computed"],
        parts["caption"]["reused"],
        stats["missing_text"],
        "-" if stats["missing_image"] is None else stats["missing_image"],
        stats["seconds"],
    )


def main(argv: Sequence[str] | None = None) -> dict:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    return item_features(cli.params_from(args, "item_features", PARAMS))


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
