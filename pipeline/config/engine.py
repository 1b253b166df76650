"""The ``engine`` and ``ray`` keys of the batch stages' sections (``item_features``,
``user_profiles``, ``score``): where the stage runs (:mod:`pipeline.engine`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config import Section

Engine = Literal["local", "ray"]  # local: this process; ray: Ray Data actors (RAY_ADDRESS)


class RayParams(Section):
    """How the ``ray`` engine runs a stage: ignored by ``local``."""

    actors: int = Field(2, ge=1)  # actors holding the model; one GPU each where there are GPUs
    cpus_per_actor: float = Field(1.0, gt=0)  # CPUs Ray reserves per actor (its torch threads)
    batch_size: int = Field(1024, ge=1)  # rows per actor call
