"""params.yaml ``synthetic``: the embedded sample (``dataset.format: synthetic``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from pipeline.config import Section


class SyntheticParams(Section):
    seed: int = 7
    n_users: int = Field(1000, ge=20)
    overlap_fraction: float = Field(0.6, gt=0, le=1)  # users with history in both domains
    target_only_fraction: float = Field(0.15, ge=0, lt=1)  # side users (target domain only)
    n_items: int = Field(300, ge=20)  # per domain
    min_per_user: int = Field(8, ge=1)
    max_per_user: int = Field(40, ge=1)
    rating_noise: float = Field(0.6, ge=0)
    image_base_url: str | None = None  # where generated item images are served; null = none

    @model_validator(mode="after")
    def _check(self) -> SyntheticParams:
        if self.overlap_fraction + self.target_only_fraction > 1:
            raise ValueError("overlap_fraction + target_only_fraction must be at most 1")
        if self.min_per_user > self.max_per_user:
            raise ValueError("min_per_user must be at most max_per_user")
        return self
