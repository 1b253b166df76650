"""params.yaml ``item_features``: the encoders of item text, pictures and captions."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config import Section
from pipeline.config.engine import Device, Engine, RayParams


class ClipParams(Section):
    model: str = "ViT-B-32"  # open_clip architecture name
    pretrained: str = (
        "openai"  # pretrained tag, local checkpoint file, local-dir:PATH or hf-hub:ORG/NAME
    )
    batch_size: int = Field(64, ge=1)


class CaptionParams(Section):
    enabled: bool = False  # multimodal-LLM caption of each item image
    model: str | None = None  # transformers vision-language model: Hub name or local directory
    prompt: str = "prompts/item_caption_v1.txt"
    max_new_tokens: int = Field(40, ge=1)
    batch_size: int = Field(8, ge=1)


class ItemFeaturesParams(Section):
    text_encoder: str = (
        "minilm"  # minilm (offline package), clip (CLIP text tower), or a Hub name / local dir
    )
    image_encoder: Literal["none", "clip"] = "none"  # "clip" needs images.enabled
    clip: ClipParams = ClipParams()
    caption: CaptionParams = CaptionParams()
    batch_size: int = Field(64, ge=1)
    max_text_chars: int = Field(1000, ge=16)  # longer text is cut (titles can be huge)
    device: Device = "auto"  # auto | cpu | cuda[:N]
    engine: Engine = "local"  # local | ray (Ray Data actors, pipeline.engine)
    ray: RayParams = RayParams(batch_size=1024)  # items per actor call
