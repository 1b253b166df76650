"""params.yaml ``pair``: the (source, target) direction of the cold-start transfer."""

from __future__ import annotations

from pydantic import model_validator

from pipeline.config import Section


class PairParams(Section):
    source: str = "books"
    target: str = "movies"

    @model_validator(mode="after")
    def _check(self) -> PairParams:
        if self.source == self.target:
            raise ValueError("source and target must be different domains")
        return self
