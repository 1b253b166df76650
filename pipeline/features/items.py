"""Item features computed: the encoders the params name, and the encode loop of one rank.

:func:`encode_rank` turns a batch of items into feature-store rows, part by part:

1. **text**: the item text (:mod:`pipeline.features.item_text`) through the text encoder;
2. **pictures**: the first ``ok`` picture of each item in the images store, through the
   open_clip image tower and/or the captioner, each distinct picture once;
3. **captions**: the caption text through the same text encoder (and cache) as item text;
4. the store rows, with the fused vector (:mod:`pipeline.features.item_store`).

Every input is looked up in the previous store's :class:`~pipeline.features.item_store.Cache`
first: only new or changed inputs reach a model, and identical inputs (two items with the same
picture or text) are encoded once. A part an item lacks is zeros with its flag false.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.features import image_store
from pipeline.features.item_store import Cache, Part, store_table
from pipeline.features.item_text import clean_text, cut, item_text, text_hash

if TYPE_CHECKING:
    from pipeline.config.item_features import ItemFeaturesParams

log = logging.getLogger("item_features")

IMAGE_CHUNK = 512  # pictures read from the images store, decoded and encoded per round


# --------------------------------------------------------------------------- encoders
@dataclass
class Encoders:
    text: Any  # features.encoders.base.TextEncoder
    clip: Any = None  # features.encoders.clip.ClipEncoder, when image_encoder is clip
    captioner: Any = None  # features.encoders.caption.Captioner, when captions are on

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


def load_encoders(p: ItemFeaturesParams, device: str) -> Encoders:
    from pipeline.features.encoders.text import load_item_text_encoder

    clip = None
    if p.image_encoder == "clip":
        from pipeline.features.encoders.clip import load_clip

        clip = load_clip(p.clip.model, p.clip.pretrained, device)
    text = load_item_text_encoder(p, device, clip)
    captioner = None
    if p.caption.enabled:
        from pipeline.features.encoders.caption import load_captioner

        captioner = load_captioner(
            p.caption.model, p.caption.prompt, device, p.caption.max_new_tokens
        )
    return Encoders(text, clip, captioner)


# --------------------------------------------------------------------------- bookkeeping
@dataclass
class PartStats:
    computed: int = 0  # distinct inputs run through the model this time
    reused: int = 0  # items served from the previous store
    missing: int = 0  # items without this part
    failed: int = 0  # inputs the model could not use (undecodable picture, empty caption)

    def as_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class Work:
    """What one rank did: per-part counts, which items got a new input, time in the models."""

    n: int
    bar_off: bool | None  # tqdm's disable: None shows bars on a terminal, True hides them
    stats: dict[str, PartStats] = field(
        default_factory=lambda: {p: PartStats() for p in ("text", "image", "caption")}
    )
    fresh: np.ndarray = field(init=False)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.fresh = np.zeros(self.n, dtype=bool)

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start


# --------------------------------------------------------------------------- the loop
def encode_rank(
    p: ItemFeaturesParams,
    items: pl.DataFrame,
    encoders: Encoders,
    cache: Cache,
    image_store_dir: Path,
    is_main: bool = True,
) -> tuple[pa.Table, dict]:
    """Encode (or reuse) the parts of ``items``: the store rows and this rank's counts."""
    work = Work(items.height, None if is_main else True)
    texts = [
        item_text(r["title"], r["description"], r["categories"], p.max_text_chars)
        for r in items.select("title", "description", "categories").iter_rows(named=True)
    ]
    known = dict(cache.text)  # text_hash -> vector: the cache, then what is encoded now
    text, hashes = _text_part(texts, encoders.text, known, p.batch_size, work)
    parts = {"text": text}
    pictures = _Pictures.plan(items, encoders, cache, image_store_dir)
    if pictures.wanted:
        pictures.run_models(encoders, image_store_dir, p, work)
    if encoders.clip is not None:
        parts["image"] = pictures.image_part(encoders.clip.dim, work)
    captions: list[str | None] = [None] * items.height
    if encoders.captioner is not None:
        captions = pictures.captions_of_items(p.max_text_chars, work)
        parts["caption"] = _caption_part(captions, encoders.text, known, p.batch_size, work)
    table = store_table(
        items.select("item_id", "domain"), texts, hashes, pictures.shas, captions, parts
    )
    return table, _counts(work, parts, encoders)


def _embed(
    texts: list[str | None], encoder: Any, known: dict[str, np.ndarray], batch_size: int,
    work: Work, desc: str | None = None,
) -> tuple[Part, list[str | None], set[str]]:  # fmt: skip
    """Vectors of ``texts`` (zeros for an empty one) from ``known`` (by :func:`text_hash`) or
    encoded now and added to it; also the hashes, and those encoded now."""
    hashes = [text_hash(t) if t else None for t in texts]
    todo = {h: t for h, t in zip(hashes, texts, strict=True) if h and h not in known}
    if todo:
        bar_off = work.bar_off if desc else True
        with work.timed(), tqdm(total=len(todo), desc=desc, unit="text", disable=bar_off) as bar:
            vectors = encoder.encode(list(todo.values()), batch_size, progress=bar)
        known.update(zip(todo, vectors, strict=True))
    part = Part(
        np.zeros((len(texts), encoder.dim), np.float32), np.array([bool(h) for h in hashes])
    )
    for i, h in enumerate(hashes):
        if h:
            part.vectors[i] = known[h]
            work.fresh[i] |= h in todo
    return part, hashes, set(todo)


def _text_part(
    texts: list[str], encoder: Any, known: dict[str, np.ndarray], batch_size: int, work: Work
) -> tuple[Part, list[str]]:
    part, _, computed = _embed(texts, encoder, known, batch_size, work, desc="item text")
    hashes = [text_hash(t) for t in texts]
    stats = work.stats["text"]
    stats.computed = len(computed)
    stats.missing = int((~part.has).sum())
    stats.reused = sum(ok and h not in computed for h, ok in zip(hashes, part.has, strict=True))
    return part, hashes


def _caption_part(
    captions: list[str | None], encoder: Any, known: dict[str, np.ndarray], batch_size: int,
    work: Work,
) -> Part:  # fmt: skip
    """Caption vectors: the text encoder, through the same cache as item text."""
    return _embed(captions, encoder, known, batch_size, work)[0]


@dataclass
class _Pictures:
    """The first ``ok`` picture of each item, and what the models know or learn of it."""

    shas: list[str | None]  # per item; None: no picture (or pictures not wanted)
    wanted: dict[tuple[str, str, int], str]  # (domain, item_id, position) -> sha, to run
    vectors: dict[str, np.ndarray]  # sha -> image vector, cached or computed now
    captions: dict[str, str | None]  # sha -> caption, cached or computed now
    new_vectors: set[str]  # shas the image tower runs on now
    new_captions: set[str]  # shas the captioner runs on now

    @classmethod
    def plan(cls, items: pl.DataFrame, encoders: Encoders, cache: Cache, store: Path) -> _Pictures:
        n = items.height
        if encoders.clip is None and encoders.captioner is None:
            return cls([None] * n, {}, {}, {}, set(), set())
        pics = first_images(store, items.select("domain", "item_id"))
        shas, positions = pics["image_sha256"].to_list(), pics["position"].to_list()
        plan = cls(shas, {}, {}, {}, set(), set())
        for sha in shas:
            if sha is None:
                continue
            if encoders.clip is not None:
                if sha not in cache.image:
                    plan.new_vectors.add(sha)
                elif cache.image[sha] is not None:
                    plan.vectors[sha] = cache.image[sha]
            if encoders.captioner is not None:
                if sha in cache.caption:
                    plan.captions[sha] = cache.caption[sha]
                else:
                    plan.new_captions.add(sha)
        keys = zip(items["domain"], items["item_id"], positions, shas, strict=True)
        plan.wanted = {
            (d, i, pos): sha
            for d, i, pos, sha in keys
            if sha is not None and (sha in plan.new_vectors or sha in plan.new_captions)
        }
        return plan

    def run_models(
        self, encoders: Encoders, store: Path, p: ItemFeaturesParams, work: Work
    ) -> None:
        """Image vectors and captions of the wanted pictures, chunk by chunk of the store."""
        bars = [
            tqdm(total=len(todo), desc=desc, unit="img", disable=work.bar_off if todo else True)
            for todo, desc in ((self.new_vectors, "item images"), (self.new_captions, "captions"))
        ]
        chunk = max(IMAGE_CHUNK, p.clip.batch_size, p.caption.batch_size)
        with work.timed(), bars[0], bars[1]:
            for shas, blobs in iter_picture_chunks(store, self.wanted, chunk):
                idx = [k for k, s in enumerate(shas) if s in self.new_vectors]
                if idx:
                    vecs, ok = encoders.clip.encode_images_ok(
                        [blobs[k] for k in idx], p.clip.batch_size, progress=bars[0]
                    )
                    self.vectors.update(
                        (shas[k], v) for k, v, good in zip(idx, vecs, ok, strict=True) if good
                    )
                    work.stats["image"].computed += len(idx)
                    work.stats["image"].failed += int((~ok).sum())
                idx = [k for k, s in enumerate(shas) if s in self.new_captions]
                if idx:
                    out = encoders.captioner.caption(
                        [blobs[k] for k in idx], p.caption.batch_size, progress=bars[1]
                    )
                    self.captions.update((shas[k], text) for k, text in zip(idx, out, strict=True))
                    work.stats["caption"].computed += len(idx)
                    work.stats["caption"].failed += sum(t is None for t in out)

    def image_part(self, dim: int, work: Work) -> Part:
        part = Part(np.zeros((len(self.shas), dim), np.float32), np.zeros(len(self.shas), bool))
        stats = work.stats["image"]
        for i, sha in enumerate(self.shas):
            if sha is not None and sha in self.vectors:
                part.vectors[i], part.has[i] = self.vectors[sha], True
                work.fresh[i] |= sha in self.new_vectors
                stats.reused += sha not in self.new_vectors
            else:
                stats.missing += 1
        return part

    def captions_of_items(self, max_chars: int, work: Work) -> list[str | None]:
        out: list[str | None] = [None] * len(self.shas)
        stats = work.stats["caption"]
        for i, sha in enumerate(self.shas):
            caption = self.captions.get(sha) if sha is not None else None
            if caption:
                out[i] = cut(clean_text(caption), max_chars) or None
                work.fresh[i] |= sha in self.new_captions
                stats.reused += sha not in self.new_captions
            else:
                stats.missing += 1
        return out


def _counts(work: Work, parts: dict[str, Part], encoders: Encoders) -> dict:
    n_fresh = int(work.fresh.sum())
    has_any = np.zeros(work.n, dtype=bool)  # an item with no text, picture or caption: zeros
    for part in parts.values():
        has_any |= np.asarray(part.has, dtype=bool)

    def missing(name: str) -> int | None:
        return int((~parts[name].has).sum()) if name in parts else None

    return {
        "items": work.n,
        "encoded": n_fresh,
        "reused": int((~work.fresh & has_any).sum()),  # vectors from the previous store
        "nothing_to_encode": int((~has_any).sum()),
        "missing_text": missing("text"),
        "missing_image": missing("image"),
        "missing_caption": missing("caption"),
        "encode_seconds": round(work.seconds, 3),
        "parts": {k: v.as_dict() for k, v in work.stats.items()},
    }


# --------------------------------------------------------------------------- pictures
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


# --------------------------------------------------------------------------- all workers
def sum_counts(per_rank: list[dict]) -> dict:
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


def run_stats(per_rank: list[dict], meta: dict, seconds: float) -> dict:
    """``metrics/item_features.json``: the workers' counts added up (the local process, or each
    actor of the ray engine), timings, and the encoders the store ``meta`` names."""
    counts = sum_counts(per_rank)
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
        "text_encoder": meta["text_encoder"]["name"],
        "image_encoder": meta["image_encoder"]["name"],
        "captioner": meta["captioner"]["name"],
    }


def log_encoders(meta: dict) -> None:
    """One log line per encoder the store was built with (or that it is off)."""
    text, clip, captioner = meta["text_encoder"], meta["image_encoder"], meta["captioner"]
    log.info(
        "item features: text encoder %s (%d-d) from %s", text["name"], text["dim"], text["source"]
    )
    if clip["name"] != "none":
        log.info(
            "item features: image encoder open_clip %s (%d-d) from %s",
            clip["name"],
            clip["dim"],
            clip["source"],
        )
    else:
        log.info("item features: image encoder off (item_features.image_encoder: none)")
    if captioner["name"] != "none":
        log.info(
            "item features: captions by %s, prompt %s",
            captioner["name"],
            captioner["prompt_version"],
        )
    else:
        log.info("item features: captions off (item_features.caption.enabled: false)")


def log_summary(stats: dict, out_path: Path) -> None:
    """The run's counts in one log line."""
    parts = stats["parts"]
    log.info(
        "item features: %d items -> %s: %d encoded, %d reused, %d with nothing to encode "
        "(text %d computed / %d reused, "
        "images %d / %d, captions %d / %d); %d without text, %s without picture; %.1f s",
        stats["items"],
        out_path,
        stats["encoded"],
        stats["reused"],
        stats["nothing_to_encode"],
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
