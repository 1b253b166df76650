"""params.yaml ``score``: batch top-K scoring of cold-start users (the ``score`` stage and the
nightly command)."""

from __future__ import annotations

import datetime

from pydantic import Field, field_validator, model_validator

from pipeline.cdr.configs import METHOD_NAMES
from pipeline.config import Section
from pipeline.config.engine import Device, Engine, RayParams


class ScoreParams(Section):
    # auto: the simplest trained method within noise of the best valid ndcg@10
    # (pipeline.recs.trained.simplest_within_noise); or a method name
    method: str = "auto"
    k: int = Field(20, ge=1)  # items per user
    chunk_size: int = Field(1024, ge=1)  # users scored at once (memory ~ chunk_size x items)
    device: Device = "auto"  # auto | cpu | cuda[:N]
    steps: int | None = Field(None, ge=1)  # sampling steps of a diffusion generator; null = its own
    date: str | None = None  # partition date YYYY-MM-DD; null = today (UTC)
    engine: Engine = "local"  # local | ray (Ray Data actors, pipeline.engine)
    ray: RayParams = RayParams(batch_size=4096)  # users per actor call

    @field_validator("date", mode="before")
    @classmethod
    def _date_text(cls, value: object) -> object:
        # YAML reads an unquoted 2026-01-05 (params.yaml, or -S on a stage) as a date.
        return value.isoformat() if isinstance(value, datetime.date) else value

    @model_validator(mode="after")
    def _check(self) -> ScoreParams:
        if self.method != "auto" and self.method not in METHOD_NAMES:
            raise ValueError(f"method: expected auto or one of {list(METHOD_NAMES)}")
        if self.date is not None:
            check_date(self.date)
        return self


def check_date(text: str, name: str = "date") -> str:
    """``text`` when it is a calendar date written YYYY-MM-DD, else a ValueError naming ``name``
    (score.date in params.yaml and the score command's ``--date``)."""
    try:
        ok = datetime.date.fromisoformat(text).isoformat() == text
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name} {text!r}: expected YYYY-MM-DD")
    return text
