"""params.yaml ``prepare``: how raw records become the canonical tables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config import Section


class PrepareParams(Section):
    duplicates: Literal["mean", "last", "max"] = "mean"  # policy for repeated (user, item) rows
    k_core: int = Field(0, ge=0)  # keep users and items with >= k interactions per domain
    max_bad_fraction: float = Field(0.001, ge=0, le=1)
