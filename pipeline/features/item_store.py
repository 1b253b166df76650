"""The item feature store ``data/features/items.parquet``: schema, fused vector, cache, writing.

One row per item keyed by ``item_id`` + ``domain`` (vectors are never aligned by row order):
``text_emb``, ``image_emb`` / ``caption_emb`` when those parts are on, ``fused_emb``, the flags
``has_text`` / ``has_image`` / ``has_caption`` and the input hashes the cache uses. The footer
metadata names every encoder by an id that changes with its weights, prompt and settings.

**Fused vector.** ``fused_emb`` is the concatenation ``[text | image | caption]`` of the parts
that are switched on, each part scaled by ``1 / sqrt(k)`` where ``k`` is the number of parts the
item has. An item with at least one part therefore has a unit-norm fused vector, a dot product
of two fused vectors is the average of the per-part cosines they share, and an item that lacks
a part keeps full weight on the parts it has; an item with no part at all gets zeros.
Concatenation rather than a mean, because the parts come from different models and spaces
(MiniLM 384-d, CLIP 512-d) and a mean is only defined within one space.

**Cache.** A re-run reuses a vector whenever its encoder id is unchanged and its input hash
(``text_hash`` of the exact encoder input, ``image_sha256`` of the picture) is found in the
previous store (:func:`load_cache`).

**Journal.** While the local engine encodes, each finished chunk of rows is written to a hidden
directory beside the store (:class:`Journal`); a killed run's chunks feed the next run's cache,
so it resumes instead of starting over. The journal goes once the store is in place.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.engine import EXECUTION_KEYS
from pipeline.features.item_text import text_hash
from pipeline.io import read_meta, stable_hash, write_parquet

if TYPE_CHECKING:
    from pipeline.config.item_features import ItemFeaturesParams

log = logging.getLogger("item_features")

STORE_VERSION = 1
PARTS = ("text", "image", "caption")
FUSION = (
    "concat of the enabled parts [text | image | caption], each L2-normalised and scaled by "
    "1/sqrt(number of parts the item has); a missing part is zeros; no part at all: all zeros"
)


def fuse(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """``[a | b | ...]`` of ``(vectors, present)`` parts, scaled by ``1/sqrt(parts present)``."""
    n = parts[0][0].shape[0]
    present = np.zeros(n, dtype=np.float32)
    for _, has in parts:
        present += has
    scale = np.where(present > 0, 1.0 / np.sqrt(np.maximum(present, 1.0)), 0.0).astype(np.float32)
    return np.concatenate([vec * (scale * has)[:, None] for vec, has in parts], axis=1)


# --------------------------------------------------------------------------- the table
def store_schema(dims: dict[str, int], fused_dim: int) -> pa.Schema:
    fields = [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("has_text", pa.bool_()),
        pa.field("has_image", pa.bool_()),
        pa.field("has_caption", pa.bool_()),
        pa.field("text_chars", pa.int32()),  # length of the encoder input
        pa.field("text_hash", pa.string()),  # sha256 of the encoder input (cache key)
        pa.field("image_sha256", pa.string()),  # of the picture used; null without one
        pa.field("caption", pa.string()),  # null when captions are off or failed
        pa.field("text_emb", pa.list_(pa.float32(), dims["text"])),
    ]
    if dims["image"]:
        fields.append(pa.field("image_emb", pa.list_(pa.float32(), dims["image"])))
    if dims["caption"]:
        fields.append(pa.field("caption_emb", pa.list_(pa.float32(), dims["caption"])))
    fields.append(pa.field("fused_emb", pa.list_(pa.float32(), fused_dim)))
    return pa.schema(fields)


def _fixed(vectors: np.ndarray) -> pa.FixedSizeListArray:
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, dim)


@dataclass
class Part:
    """One vector part of every item of a batch: ``vectors`` (n, dim), ``has`` (n,)."""

    vectors: np.ndarray
    has: np.ndarray


def store_table(
    keys: pl.DataFrame,
    texts: list[str],
    text_hashes: list[str],
    shas: list[str | None],
    captions: list[str | None],
    parts: dict[str, Part],
) -> pa.Table:
    """The store rows of ``keys`` (item_id, domain): every column of :func:`store_schema`.

    ``parts`` holds ``text`` and the other parts that are switched on.
    """
    n = keys.height
    has = {name: parts[name].has if name in parts else np.zeros(n, bool) for name in PARTS}
    fused = fuse([(parts[p].vectors, parts[p].has) for p in PARTS if p in parts])
    hashes = [h if ok else None for h, ok in zip(text_hashes, has["text"], strict=True)]
    columns = {
        "item_id": keys["item_id"].to_arrow(),
        "domain": keys["domain"].to_arrow(),
        "has_text": pa.array(has["text"]),
        "has_image": pa.array(has["image"]),
        "has_caption": pa.array(has["caption"]),
        "text_chars": pa.array([len(t) for t in texts], pa.int32()),
        "text_hash": pa.array(hashes, pa.string()),
        "image_sha256": pa.array(shas, pa.string()),
        "caption": pa.array(captions, pa.string()),
        **{f"{p}_emb": _fixed(parts[p].vectors) for p in PARTS if p in parts},
        "fused_emb": _fixed(fused),
    }
    dims = {p: parts[p].vectors.shape[1] if p in parts else 0 for p in PARTS}
    schema = store_schema(dims, fused.shape[1])
    return pa.table([columns[f.name] for f in schema], schema=schema)


def content(table: pa.Table) -> dict:
    """What the store holds (the same for the same inputs, however many were reused)."""
    count = {
        c: int(pc.sum(table[c]).as_py() or 0) for c in ("has_text", "has_image", "has_caption")
    }
    return {
        "items": table.num_rows,
        "with_text": count["has_text"],
        "with_image": count["has_image"],
        "with_caption": count["has_caption"],
    }


def store_meta(p: ItemFeaturesParams, encoders: Any) -> dict:
    """Footer metadata: the encoders (``features.items.Encoders``), fusion and params used."""
    dims = encoders.dims
    fused_parts = [part for part in PARTS if dims[part]]
    captioner = encoders.captioner
    return {
        "stage": "item_features",
        "store_version": STORE_VERSION,
        "key": ["item_id", "domain"],
        "params_hash": stable_hash(p.model_dump(exclude=EXECUTION_KEYS)),  # what, not where
        "params": p.model_dump(),
        "normalisation": "l2 per part (text_emb, image_emb, caption_emb); fused_emb unit norm",
        "fusion": FUSION,
        "fused_parts": fused_parts,
        "dims": {**dims, "fused": sum(dims[k] for k in fused_parts)},
        "encoder_ids": encoders.ids,
        "text_encoder": encoders.text.describe(),
        "image_encoder": (
            encoders.clip.describe()
            if encoders.clip is not None
            else {"name": "none", "reason": "item_features.image_encoder is none: no image vectors"}
        ),
        "captioner": (
            captioner.describe()
            if captioner is not None
            else {"name": "none", "reason": "item_features.caption.enabled is false"}
        ),
        "prompt_id": captioner.prompt.id if captioner is not None else None,
        "prompt_version": captioner.prompt.version if captioner is not None else None,
        "text_input": "title. categories. description (HTML/control characters removed), "
        f"cut to {p.max_text_chars} characters",
    }


# --------------------------------------------------------------------------- writing
def write_store(table: pa.Table, meta: dict, out_path: Path) -> None:
    """Write the whole store at once (the local engine; the ray engine streams it)."""
    write_parquet(table, out_path, {**meta, "content": content(table)})


# --------------------------------------------------------------------------- the previous store
@dataclass
class Cache:
    """Vectors of the previous store that the current encoders may reuse, keyed by input hash."""

    text: dict[str, np.ndarray] = field(default_factory=dict)  # text_hash -> vector
    # image sha256 -> vector / caption; None: the same encoder failed on that picture before
    # (it does not decode, the caption came out empty), so it is not tried again
    image: dict[str, np.ndarray | None] = field(default_factory=dict)
    caption: dict[str, str | None] = field(default_factory=dict)

    def update(self, other: Cache) -> None:
        self.text.update(other.text)
        self.image.update(other.image)
        self.caption.update(other.caption)


def load_cache(path: Path, ids: dict[str, str | None], dims: dict[str, int]) -> Cache:
    """What the store at ``path`` holds for encoders with these ``ids`` (text, image, caption);
    an unreadable store is logged and reused for nothing."""
    if not path.is_file():
        return Cache()
    try:
        return _read_cache(path, ids, dims)
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        log.warning("item features: cannot reuse %s (%s); encoding everything", path, exc)
        return Cache()


def _read_cache(path: Path, ids: dict[str, str | None], dims: dict[str, int]) -> Cache:
    old = read_meta(path).get("encoder_ids", {})
    same = {part: ids.get(part) is not None and old.get(part) == ids[part] for part in PARTS}
    if not any(same.values()):
        return Cache()
    names = set(pq.read_schema(path).names)
    wanted = ["has_text", "has_image", "has_caption", "text_hash", "image_sha256", "caption"]
    wanted += ["text_emb", "caption_emb"] if same["text"] else []
    wanted += ["image_emb"] if same["image"] else []
    return table_cache(pq.read_table(path, columns=[c for c in wanted if c in names]), same, dims)


def table_cache(table: pa.Table, same: dict[str, bool], dims: dict[str, int]) -> Cache:
    """What store rows ``table`` give the encoders of the parts ``same`` marks as unchanged."""
    names = set(table.column_names)
    cache = Cache()
    if same["text"]:  # item text and captions share the text encoder, hence its cache
        for column, key, flag in (
            ("text_emb", "text_hash", "has_text"),
            ("caption_emb", "caption", "has_caption"),
        ):
            if column in names and key in names:
                keys = table[key].to_pylist()
                if column == "caption_emb":
                    keys = [text_hash(k) if k else None for k in keys]
                vectors = _vectors(table[column], dims["text"])
                for k, has, vec in zip(keys, table[flag].to_pylist(), vectors, strict=True):
                    if has and k:
                        cache.text[k] = vec
    if same["image"] and "image_emb" in names:
        shas = table["image_sha256"].to_pylist()
        vectors = _vectors(table["image_emb"], dims["image"])
        for sha, ok, vec in zip(shas, table["has_image"].to_pylist(), vectors, strict=True):
            if sha:
                cache.image[sha] = vec if ok else None
    if same["caption"] and "caption" in names:
        shas = table["image_sha256"].to_pylist()
        for sha, caption in zip(shas, table["caption"].to_pylist(), strict=True):
            if sha:
                cache.caption[sha] = caption or None
    return cache


class Journal:
    """The chunks of rows a local run has encoded so far, ``chunk-NNNNN.parquet`` in
    ``.<store>.journal/`` beside the store, each with the store's metadata (encoder ids)."""

    def __init__(self, store: Path):
        self.dir = store.with_name(f".{store.name}.journal")

    def cache(self, ids: dict[str, str | None], dims: dict[str, int]) -> Cache:
        """Everything an interrupted run encoded with the same encoders (a chunk it was
        writing when killed never got its final name: it is not read)."""
        cache = Cache()
        for chunk in sorted(self.dir.glob("chunk-*.parquet")):
            cache.update(load_cache(chunk, ids, dims))
        return cache

    def add(self, index: int, table: pa.Table, meta: dict) -> None:
        write_parquet(table, self.dir / f"chunk-{index:05d}.parquet", meta)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _vectors(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    arr = column.combine_chunks()
    if arr.type.list_size != dim:
        raise ValueError(f"{column} has {arr.type.list_size}-d vectors, expected {dim}")
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
