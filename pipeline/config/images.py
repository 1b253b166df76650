"""params.yaml ``images``: item pictures fetched into the image store."""

from __future__ import annotations

from pydantic import Field

from pipeline.config import Section


class ImagesParams(Section):
    enabled: bool = False  # fetch item images (the image encoder needs them)
    max_per_item: int = Field(1, ge=1)  # first N image URLs of an item
    workers: int = Field(16, ge=1)  # concurrent downloads
    timeout_seconds: float = Field(10.0, gt=0)
    retries: int = Field(2, ge=0)
    max_bytes: int = Field(5_000_000, ge=1)  # bigger images are recorded as too_large
