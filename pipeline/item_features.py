"""Stage ``item_features``: item text, pictures and captions -> vectors in a Parquet feature store.

For every item of ``data/prepared/items.parquet`` (every domain) it writes one row of
``data/features/items.parquet``, keyed by ``item_id`` + ``domain`` (vectors are never aligned
by row order), with

- ``text_emb``: the item text (title, then categories, then description, with HTML tags,
  control characters and extra spaces removed, cut to ``max_text_chars``) through the text
  encoder: the offline MiniLM package by default, the CLIP text tower (``text_encoder: clip``),
  or any Hugging Face encoder by name or directory;
- ``image_emb`` (only with ``image_encoder: clip``): the item's first ``ok`` picture in the
  ``images`` store through the open_clip image tower (``clip.model`` / ``clip.pretrained``);
- ``caption`` / ``caption_emb`` (only with ``caption.enabled``): a vision-language model's
  caption of that picture (prompt from ``caption.prompt``), embedded with the text encoder;
- ``fused_emb``: the parts joined into one vector (below);
- flags ``has_text``, ``has_image``, ``has_caption``, and the input hashes the cache uses.

Every vector part is L2-normalised. A missing part (no title/description/categories, no ``ok``
picture, an image that does not decode, an empty caption) is a vector of zeros with its flag
false: never a crash, never a made-up vector.

**Fused vector.** ``fused_emb`` is the concatenation ``[text | image | caption]`` of the parts
that are switched on (only ``text`` with the default params, so ``fused_emb == text_emb``
there), each part scaled by ``1 / sqrt(k)`` where ``k`` is the number of parts the item has.
An item with at least one part therefore has a unit-norm fused vector, a dot product of two
fused vectors is the average of the per-part cosines they share, and an item that lacks a part
keeps full weight on the parts it has; an item with no part at all gets zeros. Concatenation
rather than a mean, because the parts come from different models and spaces (MiniLM 384-d,
CLIP 512-d) and a mean is only defined within one space.

**Incremental.** The store keeps ``text_hash`` (of the exact encoder input) and
``image_sha256`` (of the picture bytes) per item, and its footer metadata names the id of every
encoder (which changes with the weights, the prompt and the generation length). A re-run reuses
a vector whenever its encoder id is unchanged and its input hash is found in the previous store,
so only new or changed items are encoded; identical inputs (two items with the same picture or
text) are encoded once. The store is written to a temporary file and renamed into place.

Under ``accelerate launch`` each rank encodes every ``world``-th item into its own part; rank 0
merges the parts into the store. ``metrics/item_features.json`` gets the counts and timings.
"""

from __future__ import annotations

import hashlib
import html
import logging
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline import cli, distributed, paths
from pipeline.config import ItemFeaturesParams, Params
from pipeline.errors import PipelineError
from pipeline.features import image_store
from pipeline.io import read_json, read_meta, read_parquet, stable_hash, write_json, write_parquet

log = logging.getLogger("item_features")

FEATURES = paths.DATA / "features"
ITEM_FEATURES = FEATURES / "items.parquet"
METRICS = paths.METRICS / "item_features.json"
STORE_VERSION = 1
FUSION = (
    "concat of the enabled parts [text | image | caption], each L2-normalised and scaled by "
    "1/sqrt(number of parts the item has); a missing part is zeros; no part at all: all zeros"
)
IMAGE_CHUNK = 512  # pictures read from the images store, decoded and encoded per round

_TAG = re.compile(r"<[^>]{0,200}>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")
_SPACE = re.compile(r"\s+")


# --------------------------------------------------------------------------- item text
def clean_text(value: Any) -> str:
    """Shop text made plain: HTML tags and entities, control characters and runs of spaces out."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        value = " ".join(str(v) for v in value if v)
    text = str(value)
    if "<" in text:
        text = _TAG.sub(" ", text)
    if "&" in text:
        text = html.unescape(text)
    return _SPACE.sub(" ", _CONTROL.sub(" ", text)).strip()


def item_text(
    title: str | None, description: str | None, categories: Sequence[str] | None, max_chars: int
) -> str:
    """The text encoder's input: ``title. categories. description``, cut to ``max_chars``.

    Categories come before the description so that a cut shortens the (long, least dense)
    description first. Empty parts are left out; no part at all gives ``""``.
    """
    cats = [clean_text(c) for c in (categories or [])]
    parts = [clean_text(title), ", ".join(c for c in cats if c), clean_text(description)]
    return cut(". ".join(p.rstrip(". ") for p in parts if p.rstrip(". ")), max_chars)


def cut(text: str, max_chars: int) -> str:
    """``text`` shortened to ``max_chars``, at a space when one is near the end."""
    if len(text) <= max_chars:
        return text
    space = text.rfind(" ", 0, max_chars + 1)
    return text[: space if space > max_chars // 2 else max_chars].rstrip()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


# --------------------------------------------------------------------------- the previous store
@dataclass
class Cache:
    """Vectors of the previous store that the current encoders may reuse, keyed by input hash."""

    text: dict[str, np.ndarray] = field(default_factory=dict)  # text_hash -> vector
    # image sha256 -> vector / caption; None: the same encoder failed on that picture before
    # (it does not decode, the caption came out empty), so it is not tried again
    image: dict[str, np.ndarray | None] = field(default_factory=dict)
    caption: dict[str, str | None] = field(default_factory=dict)


def load_cache(path: Path, ids: dict[str, str | None], dims: dict[str, int]) -> Cache:
    """What the store at ``path`` holds for encoders with these ``ids`` (text, image, caption)."""
    cache = Cache()
    if not path.is_file():
        return cache
    try:
        meta = read_meta(path)
        old = meta.get("encoder_ids", {})
        names = set(pq.read_schema(path).names)

        def same(part: str) -> bool:
            return ids.get(part) is not None and old.get(part) == ids[part]

        if not any(same(p) for p in ("text", "image", "caption")):
            return cache
        wanted = ["has_text", "has_image", "has_caption", "text_hash", "image_sha256", "caption"]
        wanted += ["text_emb", "caption_emb"] if same("text") else []
        wanted += ["image_emb"] if same("image") else []
        table = pq.read_table(path, columns=[c for c in wanted if c in names])
        if same("text"):
            for col, hashes in (("text_emb", "text_hash"), ("caption_emb", "caption")):
                flag = "has_text" if col == "text_emb" else "has_caption"
                if col not in names or hashes not in names:
                    continue
                vectors = _vectors(table[col], dims["text"])
                keys = table[hashes].to_pylist()
                if col == "caption_emb":
                    keys = [text_hash(k) if k else None for k in keys]
                for key, has, vec in zip(keys, table[flag].to_pylist(), vectors, strict=True):
                    if has and key:
                        cache.text[key] = vec
        if same("image") and "image_emb" in names:
            vectors = _vectors(table["image_emb"], dims["image"])
            shas, has = table["image_sha256"].to_pylist(), table["has_image"].to_pylist()
            for sha, ok, vec in zip(shas, has, vectors, strict=True):
                if sha:
                    cache.image[sha] = vec if ok else None
        if same("caption") and "caption" in names:
            for sha, caption in zip(
                table["image_sha256"].to_pylist(), table["caption"].to_pylist(), strict=True
            ):
                if sha:
                    cache.caption[sha] = caption or None
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        log.warning("item features: cannot reuse %s (%s); encoding everything", path, exc)
        return Cache()
    return cache


def _vectors(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    arr = column.combine_chunks()
    if arr.type.list_size != dim:
        raise ValueError(f"{column} has {arr.type.list_size}-d vectors, expected {dim}")
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


# --------------------------------------------------------------------------- encoders
@dataclass
class Encoders:
    text: Any  # pipeline.encoders.text.TextEncoder
    clip: Any = None  # pipeline.encoders.clip.ClipEncoder, when image_encoder is clip
    captioner: Any = None  # pipeline.encoders.caption.Captioner, when captions are on

    @property
    def ids(self) -> dict[str, str | None]:
        return {
            "text": self.text.id,
            "image": self.clip.id if self.clip is not None else None,
            "caption": self.captioner.id if self.captioner is not None else None,
        }

    @property
    def dims(self) -> dict[str, int]:
        return {
            "text": self.text.dim,
            "image": self.clip.dim if self.clip is not None else 0,
            "caption": self.text.dim if self.captioner is not None else 0,
        }


def load_item_text_encoder(p: ItemFeaturesParams, device: str, clip: Any = None):
    """The text encoder ``item_features`` names (``clip`` included): other stages that embed
    text into the same space as item text (user profiles) load it through this."""
    from pipeline.encoders.text import load_text_encoder

    spec = clip if clip is not None else (p.clip.model, p.clip.pretrained)
    return load_text_encoder(p.text_encoder, device, clip=spec)


def load_encoders(p: ItemFeaturesParams, device: str) -> Encoders:
    clip = None
    if p.image_encoder == "clip":
        from pipeline.encoders.clip import load_clip

        clip = load_clip(p.clip.model, p.clip.pretrained, device)
    text = load_item_text_encoder(p, device, clip)
    captioner = None
    if p.caption.enabled:
        from pipeline.encoders.caption import load_captioner

        captioner = load_captioner(
            p.caption.model, p.caption.prompt, device, p.caption.max_new_tokens
        )
    return Encoders(text, clip, captioner)


def fuse(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """``[a | b | ...]`` of ``(vectors, present)`` parts, scaled by ``1/sqrt(parts present)``."""
    n = parts[0][0].shape[0]
    present = np.zeros(n, dtype=np.float32)
    for _, has in parts:
        present += has
    scale = np.where(present > 0, 1.0 / np.sqrt(np.maximum(present, 1.0)), 0.0).astype(np.float32)
    return np.concatenate([vec * (scale * has)[:, None] for vec, has in parts], axis=1)


# --------------------------------------------------------------------------- the work
@dataclass
class PartStats:
    computed: int = 0  # distinct inputs run through the model this time
    reused: int = 0  # items served from the previous store
    missing: int = 0  # items without this part
    failed: int = 0  # inputs the model could not use (undecodable picture, empty caption)

    def as_dict(self) -> dict:
        return dict(vars(self))


def _fixed(vectors: np.ndarray) -> pa.FixedSizeListArray:
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, dim)


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


def first_images(store: Path, keys: pl.DataFrame) -> pl.DataFrame:
    """Per (domain, item_id) of ``keys``: the first ``ok`` picture's position and sha256."""
    try:
        rows = image_store.read_images(
            store, columns=["item_id", "domain", "position", "status", "sha256"]
        )
    except FileNotFoundError:
        raise PipelineError(
            f"item features need item pictures but {store} does not exist: run the images "
            "stage first (dvc repro images)"
        ) from None
    ok = (
        rows.filter(pl.col("status") == "ok")
        .sort("position")
        .unique(subset=["domain", "item_id"], keep="first", maintain_order=True)
        .select("domain", "item_id", "position", image_sha256="sha256")
    )
    return keys.join(ok, on=["domain", "item_id"], how="left", maintain_order="left")


def iter_picture_chunks(
    store: Path, wanted: dict[tuple[str, str, int], str], size: int
) -> Iterable[tuple[list[str], list[bytes]]]:
    """``(sha256s, bytes)`` chunks of the wanted pictures, each distinct picture once."""
    shas: list[str] = []
    blobs: list[bytes] = []
    seen: set[str] = set()
    for item_id, domain, position, data in image_store.iter_ok_images(store):
        sha = wanted.get((domain, item_id, position))
        if sha is None or sha in seen:
            continue
        seen.add(sha)
        shas.append(sha)
        blobs.append(data)
        if len(shas) >= size:
            yield shas, blobs
            shas, blobs = [], []
    if shas:
        yield shas, blobs


def encode_rank(
    params: Params,
    items: pl.DataFrame,
    encoders: Encoders,
    cache: Cache,
    image_store: Path,
    is_main: bool = True,
) -> tuple[pa.Table, dict]:
    """Encode (or reuse) the parts of ``items``: the store rows and this rank's counts."""
    p = params.item_features
    n = items.height
    bar_off = None if is_main else True
    stats = {"text": PartStats(), "image": PartStats(), "caption": PartStats()}

    # text
    texts = [
        item_text(r["title"], r["description"], r["categories"], p.max_text_chars)
        for r in items.select("title", "description", "categories").iter_rows(named=True)
    ]
    hashes = [text_hash(t) for t in texts]
    has_text = np.array([bool(t) for t in texts])
    text_vectors: dict[str, np.ndarray] = {}
    todo: dict[str, str] = {}
    for t, h, has in zip(texts, hashes, has_text, strict=True):
        if not has:
            stats["text"].missing += 1
        elif h in cache.text:
            text_vectors[h] = cache.text[h]
            stats["text"].reused += 1
        else:
            todo.setdefault(h, t)
    fresh = set(todo)
    encode_seconds = 0.0
    if todo:
        start = time.perf_counter()
        with tqdm(total=len(todo), desc="item text", unit="text", disable=bar_off) as bar:
            vectors = encoders.text.encode(list(todo.values()), p.batch_size, progress=bar)
        encode_seconds += time.perf_counter() - start
        text_vectors.update(zip(todo, vectors, strict=True))
        stats["text"].computed = len(todo)
    text_emb = np.zeros((n, encoders.text.dim), dtype=np.float32)
    for i, (h, has) in enumerate(zip(hashes, has_text, strict=True)):
        if has:
            text_emb[i] = text_vectors[h]
    items_fresh = np.array([has and h in fresh for h, has in zip(hashes, has_text, strict=True)])

    # pictures: CLIP vectors and captions, from the first ok picture of each item
    want_images = encoders.clip is not None or encoders.captioner is not None
    if want_images:
        pics = first_images(image_store, items.select("domain", "item_id"))
        shas = pics["image_sha256"].to_list()
        positions = pics["position"].to_list()
    else:
        shas, positions = [None] * n, [None] * n
    image_vectors: dict[str, np.ndarray] = {}
    captions: dict[str, str | None] = {}
    need_image: set[str] = set()
    need_caption: set[str] = set()
    for sha in shas:
        if sha is None:
            continue
        if encoders.clip is not None:
            if sha not in cache.image:
                need_image.add(sha)
            elif cache.image[sha] is not None:
                image_vectors[sha] = cache.image[sha]
        if encoders.captioner is not None:
            if sha in cache.caption:
                captions[sha] = cache.caption[sha]
            else:
                need_caption.add(sha)
    wanted = {
        (d, i, pos): sha
        for d, i, pos, sha in zip(items["domain"], items["item_id"], positions, shas, strict=True)
        if sha is not None and (sha in need_image or sha in need_caption)
    }
    if wanted:
        start = time.perf_counter()
        image_bar = tqdm(
            total=len(need_image),
            desc="item images",
            unit="img",
            disable=bar_off if need_image else True,
        )
        caption_bar = tqdm(
            total=len(need_caption),
            desc="captions",
            unit="img",
            disable=bar_off if need_caption else True,
        )
        chunk = max(IMAGE_CHUNK, p.clip.batch_size, p.caption.batch_size)
        with image_bar, caption_bar:
            for chunk_shas, blobs in iter_picture_chunks(image_store, wanted, chunk):
                idx = [k for k, s in enumerate(chunk_shas) if s in need_image]
                if idx:
                    vecs, ok = encoders.clip.encode_images_ok(
                        [blobs[k] for k in idx], p.clip.batch_size, progress=image_bar
                    )
                    for k, v, good in zip(idx, vecs, ok, strict=True):
                        if good:
                            image_vectors[chunk_shas[k]] = v
                    stats["image"].computed += len(idx)
                    stats["image"].failed += int((~ok).sum())
                idx = [k for k, s in enumerate(chunk_shas) if s in need_caption]
                if idx:
                    out = encoders.captioner.caption(
                        [blobs[k] for k in idx], p.caption.batch_size, progress=caption_bar
                    )
                    for k, text in zip(idx, out, strict=True):
                        captions[chunk_shas[k]] = text
                    stats["caption"].computed += len(idx)
                    stats["caption"].failed += sum(t is None for t in out)
        encode_seconds += time.perf_counter() - start

    has_image = np.zeros(n, dtype=bool)
    image_emb = np.zeros((n, encoders.dims["image"]), dtype=np.float32)
    caption_col: list[str | None] = [None] * n
    if encoders.clip is not None:
        for i, sha in enumerate(shas):
            if sha is not None and sha in image_vectors:
                image_emb[i] = image_vectors[sha]
                has_image[i] = True
                items_fresh[i] |= sha in need_image
                stats["image"].reused += sha not in need_image
            else:
                stats["image"].missing += 1
    if encoders.captioner is not None:
        for i, sha in enumerate(shas):
            caption = captions.get(sha) if sha is not None else None
            if caption:
                caption_col[i] = cut(clean_text(caption), p.max_text_chars) or None
                items_fresh[i] |= sha in need_caption
                stats["caption"].reused += sha not in need_caption
            else:
                stats["caption"].missing += 1

    # caption vectors: the text encoder, through the same cache as item text
    has_caption = np.array([c is not None for c in caption_col])
    caption_emb = np.zeros((n, encoders.dims["caption"]), dtype=np.float32)
    if encoders.captioner is not None:
        cap_hashes = [text_hash(c) if c else None for c in caption_col]
        todo = {
            h: c
            for h, c in zip(cap_hashes, caption_col, strict=True)
            if h and h not in text_vectors and h not in cache.text
        }
        if todo:
            start = time.perf_counter()
            vectors = encoders.text.encode(list(todo.values()), p.batch_size)
            encode_seconds += time.perf_counter() - start
            text_vectors.update(zip(todo, vectors, strict=True))
        for i, h in enumerate(cap_hashes):
            if h:
                caption_emb[i] = text_vectors[h] if h in text_vectors else cache.text[h]
                items_fresh[i] |= h in todo

    parts = [(text_emb, has_text)]
    if encoders.clip is not None:
        parts.append((image_emb, has_image))
    if encoders.captioner is not None:
        parts.append((caption_emb, has_caption))
    fused = fuse(parts)

    dims = encoders.dims
    columns = {
        "item_id": items["item_id"].to_arrow(),
        "domain": items["domain"].to_arrow(),
        "has_text": pa.array(has_text),
        "has_image": pa.array(has_image),
        "has_caption": pa.array(has_caption),
        "text_chars": pa.array([len(t) for t in texts], pa.int32()),
        "text_hash": pa.array(
            [h if has else None for h, has in zip(hashes, has_text, strict=True)]
        ),
        "image_sha256": pa.array(shas, pa.string()),
        "caption": pa.array(caption_col, pa.string()),
        "text_emb": _fixed(text_emb),
    }
    if dims["image"]:
        columns["image_emb"] = _fixed(image_emb)
    if dims["caption"]:
        columns["caption_emb"] = _fixed(caption_emb)
    columns["fused_emb"] = _fixed(fused)
    schema = store_schema(dims, fused.shape[1])
    table = pa.table([columns[f.name] for f in schema], schema=schema.remove_metadata())
    n_fresh = int(items_fresh.sum())
    counts = {
        "items": n,
        "encoded": n_fresh,
        "reused": n - n_fresh,
        "missing_text": int((~has_text).sum()),
        "missing_image": int((~has_image).sum()) if encoders.clip is not None else None,
        "missing_caption": int((~has_caption).sum()) if encoders.captioner is not None else None,
        "encode_seconds": round(encode_seconds, 3),
        "parts": {k: v.as_dict() for k, v in stats.items()},
    }
    return table, counts


# --------------------------------------------------------------------------- the stage
def item_features(
    params: Params,
    items_path: Path = paths.ITEMS,
    image_store: Path = image_store.IMAGES,
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
    _log_encoders(p, encoders)
    cache = load_cache(out_path, encoders.ids, encoders.dims)
    table, counts = encode_rank(params, mine, encoders, cache, image_store, rank.is_main)
    meta = _meta(params, encoders)

    if rank.world == 1:
        write_parquet(table, out_path, {**meta, "content": _content(table)})
        per_rank = [counts]
    else:
        per_rank = _merge_ranks(table, mine["row"], counts, meta, out_path, rank)
    if not rank.is_main:
        return {}
    seconds = time.perf_counter() - started
    stats = _stats(per_rank, encoders, seconds)
    write_json(stats, metrics_path)
    _log_summary(stats, out_path)
    return stats


def _merge_ranks(
    table: pa.Table,
    rows: pl.Series,
    counts: dict,
    meta: dict,
    out_path: Path,
    rank: distributed.Rank,
) -> list[dict]:
    """Each rank writes a part with its items-table row numbers; rank 0 merges the parts back
    into items-table order and writes the store."""
    parts = out_path.with_name(f".{out_path.name}.parts")
    if rank.is_main:
        shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir(parents=True)
    distributed.barrier()
    write_parquet(
        table.append_column("_row", rows.to_arrow()), parts / f"part-{rank.index:03d}.parquet"
    )
    write_json(counts, parts / f"counts-{rank.index:03d}.json")
    distributed.barrier()
    per_rank: list[dict] = []
    if rank.is_main:
        per_rank = [read_json(f) for f in sorted(parts.glob("counts-*.json"))]
        merged = pa.concat_tables([pq.read_table(f) for f in sorted(parts.glob("part-*.parquet"))])
        merged = merged.sort_by("_row").drop_columns("_row")
        write_parquet(merged, out_path, {**meta, "content": _content(merged)})
        shutil.rmtree(parts, ignore_errors=True)
    distributed.barrier()
    return per_rank


def _sum_counts(per_rank: list[dict]) -> dict:
    total: dict[str, Any] = {"parts": {}}
    for counts in per_rank:
        for key, value in counts.items():
            if key == "parts":
                for part, sub in value.items():
                    into = total["parts"].setdefault(part, {})
                    for k, v in sub.items():
                        into[k] = into.get(k, 0) + v
            elif value is None:
                total.setdefault(key, None)
            elif key == "encode_seconds":
                total[key] = max(total.get(key) or 0.0, value)  # ranks run side by side
            else:
                total[key] = (total.get(key) or 0) + value
    return total


def _content(table: pa.Table) -> dict:
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


def _meta(params: Params, encoders: Encoders) -> dict:
    p = params.item_features
    dims = encoders.dims
    fused_parts = (
        ["text"] + (["image"] if dims["image"] else []) + (["caption"] if dims["caption"] else [])
    )
    meta = {
        "stage": "item_features",
        "store_version": STORE_VERSION,
        "key": ["item_id", "domain"],
        "params_hash": stable_hash(p.model_dump()),
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
            encoders.captioner.describe()
            if encoders.captioner is not None
            else {"name": "none", "reason": "item_features.caption.enabled is false"}
        ),
        "prompt_id": encoders.captioner.prompt.id if encoders.captioner is not None else None,
        "prompt_version": (
            encoders.captioner.prompt.version if encoders.captioner is not None else None
        ),
        "text_input": "title. categories. description (HTML/control characters removed), "
        f"cut to {p.max_text_chars} characters",
    }
    return meta


def _stats(per_rank: list[dict], encoders: Encoders, seconds: float) -> dict:
    counts = _sum_counts(per_rank)
    encode_seconds = counts.pop("encode_seconds", 0.0) or 0.0
    return {
        **counts,
        "seconds": round(seconds, 3),
        "encode_seconds": round(encode_seconds, 3),
        "items_per_second": (
            round(counts["encoded"] / encode_seconds, 2)
            if counts["encoded"] and encode_seconds
            else None
        ),
        "world_size": len(per_rank),
        "text_encoder": encoders.text.name,
        "image_encoder": encoders.clip.name if encoders.clip is not None else "none",
        "captioner": encoders.captioner.name if encoders.captioner is not None else "none",
    }


def _log_encoders(p: ItemFeaturesParams, encoders: Encoders) -> None:
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


# --------------------------------------------------------------------------- reading the store
def read_item_features(path: str | Path = ITEM_FEATURES, columns: list[str] | None = None):
    """The store as a polars frame (vectors as ``Array`` columns)."""
    return read_parquet(Path(path), columns=columns)


def vectors(
    path: str | Path, item_ids: Sequence[str], domain: str, column: str = "fused_emb"
) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix, found)``: ``column`` of ``item_ids`` (one domain) in the given order.

    Rows of items the store lacks are zeros with ``found`` false: callers align by key.
    """
    table = pq.read_table(path, columns=["item_id", "domain", column])
    frame = pl.from_arrow(table).filter(pl.col("domain") == domain)
    dim = table.schema.field(column).type.list_size
    index = {k: i for i, k in enumerate(frame["item_id"].to_list())}
    matrix = frame[column].to_numpy() if frame.height else np.zeros((0, dim), np.float32)
    out = np.zeros((len(item_ids), dim), dtype=np.float32)
    found = np.zeros(len(item_ids), dtype=bool)
    for row, item in enumerate(item_ids):
        i = index.get(item)
        if i is not None:
            out[row] = matrix[i]
            found[row] = True
    return out, found


def main(argv: Sequence[str] | None = None) -> dict:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    return item_features(cli.params_from(args))


if __name__ == "__main__":
    raise SystemExit(cli.run(main))
