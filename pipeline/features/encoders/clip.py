"""open_clip image and text towers: item pictures (and optionally item text) -> CLIP vectors.

:func:`load_clip` goes through open_clip's own loading path, so whatever open_clip can load
works here. ``model`` is an open_clip architecture name (``ViT-B-32``, ``ViT-L-14``, ...), a
JSON architecture file (registered with ``open_clip.add_model_config``) or a schema source;
``pretrained`` is one of

- a pretrained tag of that architecture (``openai``, ``laion2b_s34b_b79k``, ...), fetched by
  open_clip into its cache on first use (needs a network once);
- a local checkpoint file (``.pt``, ``.bin``, ``.safetensors``) of that architecture;
- ``local-dir:PATH``: a folder with ``open_clip_config.json`` and the weights (what
  ``open_clip.push_to_hf_hub`` writes, or a downloaded Hub repository);
- ``hf-hub:ORG/NAME``: an open_clip repository on the Hugging Face Hub (config and weights).

With a schema source the architecture comes from its config and ``model`` is not used (open_clip
ignores ``pretrained`` for such names; here the schema may be given in either field). Loading
never falls back to random weights: a source without weights is a :class:`ModelLoadError`, as
is a tag whose weights cannot be fetched (no network) or a checkpoint of another architecture.

The encoder returns L2-normalised float32 vectors; on CUDA it runs under autocast. Images are
decoded and preprocessed (open_clip's inference transform) one batch ahead of the model, in a
background thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.features.encoders import ModelLoadError, fingerprint, inference, open_image
from pipeline.features.encoders.base import TextEncoder

log = logging.getLogger(__name__)

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


class ClipEncoder:
    """An open_clip model: images and texts -> L2-normalised float32 vectors of size ``dim``.

    ``name`` is the architecture, ``source`` where the weights came from, ``id`` changes with
    the weights (tag, checkpoint content hash, Hub revision).
    """

    def __init__(
        self,
        model,
        preprocess: Callable,
        tokenizer: Callable,
        *,
        name: str,
        source: str,
        id: str,
        device: str,
    ):
        self.model = model.to(device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name, self.source, self.id, self.device = name, source, id, device
        size = getattr(model.visual, "image_size", 224)
        self.image_size = int(max(size) if isinstance(size, tuple | list) else size)
        self.dim = _output_dim(model, self.image_size, device)

    # ------------------------------------------------------------------ images
    def prepare_images(self, images: Sequence[Any]) -> tuple[Any, np.ndarray]:
        """Decode and preprocess one batch: ``(pixel tensor of the readable ones, readable mask)``.

        ``images`` holds encoded bytes or PIL images; bytes that do not decode are skipped.
        """
        import torch

        tensors, ok = [], np.zeros(len(images), dtype=bool)
        for i, image in enumerate(images):
            if isinstance(image, bytes | bytearray | memoryview):
                image = open_image(bytes(image), min_side=self.image_size)
            elif image is not None and getattr(image, "mode", "RGB") != "RGB":
                image = image.convert("RGB")
            if image is None:
                continue
            tensors.append(self.preprocess(image))
            ok[i] = True
        if not tensors:
            return None, ok
        return torch.stack(tensors), ok

    def embed_pixels(self, pixels) -> np.ndarray:
        """The model forward of one preprocessed batch: normalised float32 rows."""
        import torch

        emb = self.model.encode_image(pixels.to(self.device, non_blocking=True))
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()

    def encode_images(
        self, images: Sequence[Any], batch_size: int = 64, progress: Any = None
    ) -> np.ndarray:
        """Vectors of ``images`` (bytes or PIL images) in input order, ``(n, dim)`` float32.

        A row is all zeros where the image could not be decoded (see :meth:`encode_images_ok`).
        """
        return self.encode_images_ok(images, batch_size, progress)[0]

    def encode_images_ok(
        self, images: Sequence[Any], batch_size: int = 64, progress: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors, decoded)``: :meth:`encode_images` plus which rows were readable."""
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        decoded = np.zeros(len(images), dtype=bool)
        starts = range(0, len(images), batch_size)
        with ThreadPoolExecutor(1, thread_name_prefix="clip-preprocess") as pool:
            pending = [
                pool.submit(self.prepare_images, images[s : s + batch_size]) for s in starts[:1]
            ]
            with inference(self.device):
                for k, start in enumerate(starts):
                    pixels, ok = pending.pop(0).result()
                    if k + 1 < len(starts):  # decode the next batch while the model runs
                        nxt = starts[k + 1]
                        pending.append(
                            pool.submit(self.prepare_images, images[nxt : nxt + batch_size])
                        )
                    rows = np.arange(start, start + len(ok))[ok]
                    if pixels is not None:
                        out[rows] = self.embed_pixels(pixels)
                    decoded[start : start + len(ok)] = ok
                    if progress is not None:
                        progress.update(len(ok))
        return out, decoded

    # ------------------------------------------------------------------ texts
    def text_encoder(self) -> ClipTextEncoder:
        """The text tower as a :class:`~pipeline.features.encoders.base.TextEncoder` (same model)."""
        return ClipTextEncoder(self)

    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 64, progress: Any = None
    ) -> np.ndarray:
        return self.text_encoder().encode(texts, batch_size, progress)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "id": self.id,
            "dim": self.dim,
            "image_size": self.image_size,
        }


class ClipTextEncoder(TextEncoder):
    """The text tower of a :class:`ClipEncoder`: texts are cut to its context length."""

    def __init__(self, clip: ClipEncoder):
        self.clip = clip
        self.name = f"clip-text:{clip.name}"
        self.source, self.id, self.dim, self.device = (
            clip.source,
            f"text:{clip.id}",
            clip.dim,
            clip.device,
        )

    def embed_batch(self, texts: list[str]):
        tokens = self.clip.tokenizer(texts).to(self.device)
        return self.clip.model.encode_text(tokens)

    def describe(self) -> dict:
        return {**super().describe(), "pooling": "clip", "tower": "text"}


def _output_dim(model, image_size: int, device: str) -> int:
    dim = getattr(model.visual, "output_dim", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    import torch

    with torch.inference_mode():  # a tower without the attribute (timm, custom): ask it
        return int(
            model.encode_image(torch.zeros(1, 3, image_size, image_size, device=device)).shape[-1]
        )


# --------------------------------------------------------------------------- loading
def load_clip(model: str, pretrained: str | None, device: str = "cpu") -> ClipEncoder:
    """Load an open_clip model and its weights (see the module docstring for the sources).

    Raises :class:`ModelLoadError` with the reason and what to do offline when the weights
    cannot be had; never returns randomly initialised weights.
    """
    import open_clip

    pretrained = (pretrained or "").strip() or None
    model = model.strip()
    if model.startswith((LOCAL_DIR, HF_HUB)):  # open_clip's own spelling: the schema as model
        if pretrained:
            log.warning("clip: pretrained '%s' is ignored for model '%s'", pretrained, model)
        pretrained, model = model, ""
    model = _register_config_file(model, open_clip)

    if pretrained and pretrained.startswith(LOCAL_DIR):
        folder = Path(pretrained[len(LOCAL_DIR) :]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise ModelLoadError(
                f"clip: {folder} has no open_clip_config.json (expected an open_clip model folder)"
            )
        name, args, source = folder.name, (f"{LOCAL_DIR}{folder}", None), str(folder)
        model_id = f"{folder.name}:{fingerprint(folder)}"
    elif pretrained and pretrained.startswith(HF_HUB):
        repo = pretrained[len(HF_HUB) :]
        name, args, source, model_id = repo, (pretrained, None), pretrained, None
    else:
        if not model:
            raise ModelLoadError("clip: no architecture given (item_features.clip.model)")
        if model.replace("/", "-") not in open_clip.list_models():
            raise ModelLoadError(
                f"clip: unknown open_clip architecture '{model}' (see open_clip.list_models(), "
                "or give a JSON architecture file, local-dir:PATH or hf-hub:ORG/NAME)"
            )
        if not pretrained:
            raise ModelLoadError(
                f"clip: no weights for '{model}': set item_features.clip.pretrained to a tag, "
                "a checkpoint file, local-dir:PATH or hf-hub:ORG/NAME"
            )
        name, args = model, (model, pretrained)
        path = Path(pretrained).expanduser()
        if path.is_file():
            source, model_id = str(path), f"{model}:{fingerprint(path)}"
            args = (model, str(path))
        elif _looks_like_path(pretrained):
            raise ModelLoadError(f"clip: checkpoint file '{pretrained}' not found")
        else:
            tags = open_clip.list_pretrained_tags_by_model(model.replace("/", "-"))
            if _clean_tag(pretrained) not in [_clean_tag(t) for t in tags]:
                known = ", ".join(tags[:8]) + (", ..." if len(tags) > 8 else "") if tags else "none"
                raise ModelLoadError(
                    f"clip: '{pretrained}' is neither a pretrained tag of {model} (known: {known}) "
                    "nor a checkpoint file"
                )
            source, model_id = f"{model}/{pretrained}", f"{model}/{pretrained}"

    try:
        with _quiet_open_clip():
            net, _, preprocess = open_clip.create_model_and_transforms(
                args[0], pretrained=args[1], device=device, require_pretrained=True
            )
            tokenizer = open_clip.get_tokenizer(args[0])
    except ModelLoadError:
        raise
    except Exception as exc:  # open_clip reports every failure as RuntimeError/ValueError/OSError
        raise ModelLoadError(_explain(model or name, pretrained, exc)) from None
    if model_id is None:  # hf-hub: identify the weights by the cached file's content
        model_id = _hub_id(pretrained)
    encoder = ClipEncoder(
        net, preprocess, tokenizer, name=name, source=source, id=f"clip:{model_id}", device=device
    )
    log.info(
        "clip: %s from %s (%d-d, %d px) on %s",
        name,
        source,
        encoder.dim,
        encoder.image_size,
        device,
    )
    return encoder


def _register_config_file(model: str, open_clip) -> str:
    """A JSON architecture file is registered with open_clip; its stem names the model."""
    if not model.endswith(".json"):
        return model
    path = Path(model).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"clip: architecture file {path} not found")
    if path.stem not in open_clip.list_models():
        open_clip.add_model_config(path)
        if path.stem not in open_clip.list_models():
            raise ModelLoadError(
                f"clip: {path} is not an open_clip architecture (needs embed_dim, vision_cfg, text_cfg)"
            )
    return path.stem


def _looks_like_path(value: str) -> bool:
    return (
        value.startswith(("/", "./", "../", "~"))
        or os.sep in value
        or value.lower().endswith(CHECKPOINT_SUFFIXES)
    )


def _explain(model: str, pretrained: str | None, exc: BaseException) -> str:
    reason = " ".join(str(exc).split())[:400] or type(exc).__name__
    what = f"clip: cannot load {model}" + (f" with weights '{pretrained}'" if pretrained else "")
    offline = any(
        s in reason.lower()
        for s in ("download", "connection", "internet", "hub", "resolve", "urlopen", "offline")
    )
    if offline:
        return (
            f"{what}: the weights cannot be fetched ({reason}). Without a network, download them "
            "on another machine and set item_features.clip.pretrained to the checkpoint file or "
            "to local-dir:PATH (or turn image features off: item_features.image_encoder: none)"
        )
    if pretrained and Path(pretrained).is_file():
        return f"{what}: {reason} (is it a checkpoint of the architecture '{model}'?)"
    return f"{what}: {reason}"


def _hub_id(source: str) -> str:
    """``hf-hub:ORG/NAME`` plus a hash of the cached weights when they can be found."""
    from open_clip.pretrained import download_pretrained_from_hf

    try:  # cached by the load that just succeeded: no network needed
        return f"{source}:{fingerprint(download_pretrained_from_hf(source[len(HF_HUB) :]))}"
    except Exception:
        return source


class _OpenClipFilter(logging.Filter):
    """open_clip logs through the root logger, errors included, before raising: keep it to
    DEBUG so the one error the user sees is ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        if f"{os.sep}open_clip{os.sep}" in record.pathname:
            if not log.isEnabledFor(logging.DEBUG):
                return False
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    root = logging.getLogger()
    flt = _OpenClipFilter()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _clean_tag(tag: str) -> str:
    return tag.lower().replace("-", "_")  # how open_clip compares tags
