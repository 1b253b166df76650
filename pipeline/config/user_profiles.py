"""params.yaml ``user_profiles``: the LLM that writes user profiles, and how."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config import Section
from pipeline.config.engine import Device, Engine, RayParams


class UserProfilesParams(Section):
    enabled: bool = True
    # transformers (in-process) | llamacpp (a llama.cpp server started for the run) | openai
    backend: Literal["transformers", "llamacpp", "openai"] = "transformers"
    model: str = "smollm2"  # "smollm2" (offline GGUF package), a Hub name or local dir; the served model for openai
    gguf_file: str | None = None  # GGUF file inside a local model directory
    endpoint: str | None = None  # OpenAI-compatible base URL (backend openai)
    template: str = "prompts/user_profile_v1.txt"
    max_items: int = Field(6, ge=1)  # history items shown to the LLM, most informative first
    # share of the training-overlap users profiled (a sample stable under data growth, by a
    # hash of the user id); validation and test cold users always get a profile
    train_fraction: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(32, ge=1)
    batch_size: int = Field(16, ge=1)
    max_retries: int = Field(1, ge=0)  # regenerations of a rejected output before the fallback
    device: Device = "auto"  # auto | cpu | cuda[:N]
    concurrency: int = Field(4, ge=1)  # requests in flight to the endpoint (openai, llamacpp)
    threads: int | None = Field(None, ge=1)  # CPU threads of the llamacpp server; null = all
    timeout_seconds: float = Field(120.0, gt=0)  # per request to the endpoint, then retried
    engine: Engine = "local"  # local | ray (Ray Data actors, pipeline.engine)
    ray: RayParams = RayParams(batch_size=64)  # users per actor call (whole generate batches)
