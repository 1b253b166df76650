"""Encoders that turn item text, images and user histories into vectors or text.

- :mod:`.base`: the text encoder contract (``encode`` texts -> L2-normalised vectors);
- :mod:`.text`: sentence embeddings (MiniLM from its offline package, any Hugging Face
  encoder, or the CLIP text tower) through :func:`~.text.load_text_encoder`;
- :mod:`.clip`: open_clip image and text towers, :func:`~.clip.load_clip`;
- :mod:`.caption`: a vision-language model that writes one sentence per image;
- :mod:`.llm`: instruction LLMs (transformers, or an OpenAI-compatible endpoint) that write
  user profiles.

Every encoder has a ``name`` (what it is), a ``source`` (where its weights came from) and an
``id`` that changes whenever its outputs could change (other weights, other prompt): the feature
store keeps vectors only while the id that produced them is unchanged.
Heavy libraries (torch, transformers, open_clip) are imported inside the submodules only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError

SMALL_FILE = 16 << 20  # files up to this size are hashed whole when fingerprinting weights
SAMPLE = 4 << 20  # bytes hashed from the start, middle and end of a larger file


class ModelLoadError(PipelineError):
    """A model could not be loaded: bad name, missing file, wrong architecture, no network."""


# --------------------------------------------------------------------------- fingerprints
def fingerprint(path: str | Path, length: int = 16) -> str:
    """A content hash of a checkpoint file or a model directory, cheap even for large weights.

    Small files (configs, tokenizers, small checkpoints) are hashed whole. Of a large file the
    size and three 4 MiB samples (start, middle, end) are hashed: fine-tuned weights of the same
    architecture differ in practically every block, so a changed checkpoint changes the hash
    without reading gigabytes on every run.
    """
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():  # hidden files (.gitattributes, caches) are not part of the model
        files = [
            p
            for p in sorted(path.rglob("*"))
            if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts)
        ]
    else:
        files = [path]
    for file in files:
        size = file.stat().st_size
        name = file.relative_to(path).as_posix() if path.is_dir() else file.name
        h.update(f"{name}\0{size}\0".encode())
        with open(file, "rb") as fh:
            if size <= SMALL_FILE:
                h.update(fh.read())
                continue
            for offset in (0, size // 2, size - SAMPLE):
                fh.seek(offset)
                h.update(fh.read(SAMPLE))
    return h.hexdigest()[:length]


# --------------------------------------------------------------------------- torch helpers
@contextlib.contextmanager
def inference(device: str) -> Iterator[None]:
    """``torch.inference_mode`` plus autocast on CUDA (bf16 where supported, else fp16).

    Autocast gives several times the throughput of fp32 on GPUs; on CPU the models run in
    plain fp32 (CPU autocast is slower for these models and changes the numbers).
    """
    import torch

    with torch.inference_mode():
        if str(device).startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                yield
        else:
            yield


def open_image(data: bytes, min_side: int | None = None):
    """Decode image bytes to an RGB PIL image, or ``None`` when they are not a readable image.

    ``min_side`` lets JPEG decode at a reduced scale that still covers the model's input size
    (several times faster for large photos). Transparent images are put on white, as shops
    show them.
    """
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        if min_side and img.format == "JPEG":
            img.draft("RGB", (min_side, min_side))
        img.load()
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
