"""The ``engine``, ``ray`` and ``device`` keys of the batch stages' sections (``item_features``,
``user_profiles``, ``score``): where the stage runs (:mod:`pipeline.engine`) and on what."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from pipeline.config import Section

Engine = Literal["local", "ray"]  # local: this process; ray: Ray Data actors (RAY_ADDRESS)


def _check_device(name: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ValueError(f"expected auto, cpu, cuda or cuda:N (got {name!r})")
    return name


# auto: CUDA when available, else the CPU (pipeline.distributed.resolve_device)
Device = Annotated[str, AfterValidator(_check_device)]


class RayParams(Section):
    """How the ``ray`` engine runs a stage: ignored by ``local``."""

    actors: int = Field(2, ge=1)  # actors holding the model; one GPU each where there are GPUs
    cpus_per_actor: float = Field(1.0, gt=0)  # CPUs Ray reserves per actor (its torch threads)
    batch_size: int = Field(1024, ge=1)  # rows per actor call
