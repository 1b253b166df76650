"""A vision-language model writes one short caption per item picture (MuSiC's MLLM item text).

:func:`load_captioner` loads any transformers image-text-to-text model (LLaVA, Idefics, SmolVLM,
Qwen2-VL, PaliGemma, BLIP, ...) by Hub name or local directory with ``AutoProcessor`` and
``AutoModelForImageTextToText``. The instruction comes from a versioned prompt file in
``prompts/`` (``#`` lines are comments); it is rendered with the processor's chat template (an
image entry, then the instruction) or, for processors without one, after the model's image
token. Generation is batched (left padding) and greedy, so captions are reproducible.

The captioner's ``id`` names the weights (content hash of a local directory, commit of a Hub
model), the prompt version (file name and content hash) and the generation length: a caption
is reused only while all three are unchanged.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.features.encoders import ModelLoadError, fingerprint, inference, open_image
from pipeline.features.prompts import Prompt

log = logging.getLogger(__name__)

MAX_CAPTION_CHARS = 500  # a runaway generation is cut here
_SPACE = re.compile(r"\s+")


class Captioner:
    """Batched greedy captions of images (bytes or PIL images) with a vision-language model."""

    def __init__(
        self,
        model,
        processor,
        prompt: Prompt,
        *,
        name: str,
        source: str,
        weights_id: str,
        device: str,
        max_new_tokens: int,
    ):
        self.model = model.to(device).eval()
        self.processor = processor
        self.prompt = prompt
        self.name, self.source, self.device = name, source, device
        self.max_new_tokens = max_new_tokens
        self.weights_id = weights_id
        self.id = f"caption:{weights_id}|{prompt.version}|{max_new_tokens}"
        tokenizer = getattr(processor, "tokenizer", processor)
        tokenizer.padding_side = "left"  # generation continues from the right edge
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.text = self._render()

    def _render(self) -> str:
        """The model input text of every image: chat template, else image token + prompt."""
        messages = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": self.prompt.text}],
            }
        ]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        token = getattr(self.processor, "image_token", None)
        return f"{token}\n{self.prompt.text}" if token else self.prompt.text

    def caption(
        self, images: Sequence[Any], batch_size: int = 8, progress: Any = None
    ) -> list[str | None]:
        """One caption per image, in input order; ``None`` for an unreadable image or an empty
        output."""
        out: list[str | None] = [None] * len(images)
        for start in range(0, len(images), batch_size):
            batch = []
            for i in range(start, min(start + batch_size, len(images))):
                img = images[i]
                if isinstance(img, bytes | bytearray | memoryview):
                    img = open_image(bytes(img))
                elif img is not None and getattr(img, "mode", "RGB") != "RGB":
                    img = img.convert("RGB")
                if img is not None:
                    batch.append((i, img))
            if batch:
                texts = self.generate([img for _, img in batch])
                for (i, _), text in zip(batch, texts, strict=True):
                    out[i] = text
            if progress is not None:
                progress.update(min(batch_size, len(images) - start))
        return out

    def generate(self, images: list) -> list[str | None]:
        import torch

        with warnings.catch_warnings():  # some processors warn about max_length on every call
            warnings.filterwarnings(
                "ignore", message=".*max_length.*is ignored", category=UserWarning
            )
            inputs = self.processor(
                images=images, text=[self.text] * len(images), return_tensors="pt", padding=True
            )
        dtype = next(self.model.parameters()).dtype
        inputs = {
            k: (v.to(self.device, dtype) if torch.is_floating_point(v) else v.to(self.device))
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor)
        }
        options = {"max_new_tokens": self.max_new_tokens, "do_sample": False, "num_beams": 1}
        if self.tokenizer.pad_token_id is not None:
            options["pad_token_id"] = self.tokenizer.pad_token_id
        with inference(self.device):
            generated = self.model.generate(**inputs, **options)
        prompt_ids = inputs.get("input_ids")
        if (
            prompt_ids is not None
            and generated.shape[1] >= prompt_ids.shape[1]
            and torch.equal(generated[:, : prompt_ids.shape[1]], prompt_ids)
        ):  # decoder-only models echo the prompt: keep the new tokens
            generated = generated[:, prompt_ids.shape[1] :]
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [clean_caption(t) for t in texts]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "id": self.id,
            "prompt_id": self.prompt.id,
            "prompt_version": self.prompt.version,
            "max_new_tokens": self.max_new_tokens,
            "decoding": "greedy",
        }


def clean_caption(text: str) -> str | None:
    text = _SPACE.sub(" ", text).strip()
    if len(text) > MAX_CAPTION_CHARS:
        text = text[: MAX_CAPTION_CHARS - 1] + "\u2026"
    return text or None


# --------------------------------------------------------------------------- loading
def _auto_classes() -> list:
    """The transformers auto classes for vision-language generation, newest first."""
    import transformers

    names = ("AutoModelForImageTextToText", "AutoModelForVision2Seq")
    return [getattr(transformers, n) for n in names if hasattr(transformers, n)]


def load_captioner(
    model: str | None, prompt: str | Path, device: str = "cpu", max_new_tokens: int = 40
) -> Captioner:
    """The captioner of ``item_features.caption``: a Hub name or a local model directory."""
    if not model:
        raise ModelLoadError(
            "item_features.caption.model: set a vision-language model (Hub name or local "
            "directory) or turn captions off (item_features.caption.enabled: false)"
        )
    import torch
    from transformers import AutoProcessor

    prompt_obj = Prompt.load(prompt, param="item_features.caption.prompt")
    path = Path(model).expanduser()
    local = path.is_dir()
    if not local and model.startswith(("/", "./", "../", "~")):
        raise ModelLoadError(f"captioner directory '{model}' not found")
    source = str(path) if local else model
    kwargs: dict[str, Any] = {}
    if str(device).startswith("cuda"):
        kwargs["dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_explain(model, local, "processor", exc)) from None
    net, errors = None, []
    for auto in _auto_classes():
        try:
            net = auto.from_pretrained(source, **kwargs)
            break
        except ValueError as exc:  # not a model type this auto class knows
            errors.append(f"{auto.__name__}: {_first_line(exc)}")
        except OSError as exc:
            raise ModelLoadError(_explain(model, local, "model", exc)) from None
    if net is None:
        raise ModelLoadError(
            f"captioner '{model}' is not a vision-language generation model ({'; '.join(errors)})"
        )
    if local:
        weights_id = f"{path.name}:{fingerprint(path)}"
        name = path.name
    else:
        weights_id = f"{model}@{getattr(net.config, '_commit_hash', None) or 'hub'}"
        name = model
    captioner = Captioner(
        net,
        processor,
        prompt_obj,
        name=name,
        source=source,
        weights_id=weights_id,
        device=device,
        max_new_tokens=max_new_tokens,
    )
    log.info(
        "captioner %s (%s) from %s on %s, prompt %s",
        name,
        type(net).__name__,
        source,
        device,
        prompt_obj.version,
    )
    return captioner


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _explain(model: str, local: bool, what: str, exc: BaseException) -> str:
    if local:
        return f"cannot load the captioner {what} in {model}: {_first_line(exc)}"
    return (
        f"cannot load captioner '{model}' from the Hugging Face Hub ({_first_line(exc)}). "
        "Without a network, download the model on another machine and set "
        "item_features.caption.model to its local directory"
    )
