"""params.yaml ``split``: which overlapping users become cold-start test and validation users."""

from __future__ import annotations

from pydantic import Field, model_validator

from pipeline.config import Section


class SplitParams(Section):
    seed: int = 2024
    test_fraction: float = Field(0.2, ge=0, lt=1)
    valid_fraction: float = Field(0.1, ge=0, lt=1)
    test_users_file: str | None = None
    valid_users_file: str | None = None

    @model_validator(mode="after")
    def _check(self) -> SplitParams:
        if self.test_fraction + self.valid_fraction >= 1:
            raise ValueError("test_fraction + valid_fraction must leave training users (< 1)")
        return self
