"""The device a stage's models run on, and data parallelism for ``images`` through accelerate.

Run ``images`` as ``accelerate launch -m pipeline.images`` (on one machine or many): each rank
takes every ``world``-th row of the work list and writes its own Parquet shards; rank 0 waits
for the others and then finishes the store. Run plainly, the stage is rank 0 of 1. The model
stages (``item_features``, ``user_profiles``, ``score``) scale out with the ray engine instead
(:mod:`pipeline.engine`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Rank:
    index: int
    world: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def shard(self, n: int) -> range:
        """This rank's rows of ``n``: a strided split, so every rank gets a similar mix."""
        return range(self.index, n, self.world)


@cache
def rank(device: str = "auto") -> Rank:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState(cpu=device == "cpu")
        return Rank(state.process_index, state.num_processes, str(state.device))
    return Rank(0, 1, resolve_device(device))


def resolve_device(device: str = "auto", key: str = "device") -> str:
    """``auto`` is CUDA when available, else the CPU; a CUDA device asked for by name must be
    available (the error names the param ``key``)."""
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise PipelineError(f"{key}: {device} requested but CUDA is not available")
    return device


def barrier() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()
