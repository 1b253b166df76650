"""Small training utilities shared by every method: seeding, batching, early stopping."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return a torch generator for shuffling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


class EarlyStopping:
    """Keeps the best state by a validation score; says when patience has run out.

    ``mode='min'`` for errors (RMSE), ``'max'`` for ranking metrics (NDCG).
    """

    def __init__(self, patience: int, mode: str = "min"):
        self.patience, self.mode = patience, mode
        self.best: float | None = None
        self.best_epoch = -1
        self.best_state: dict | None = None
        self.history: list[float] = []
        self._bad = 0

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best - 1e-7 if self.mode == "min" else value > self.best + 1e-7

    def step(self, value: float, epoch: int, state: dict | None = None) -> bool:
        """Record one evaluation; return True when training should stop."""
        self.history.append(float(value))
        if self.improved(value):
            self.best, self.best_epoch, self._bad = float(value), epoch, 0
            self.best_state = copy.deepcopy(state) if state is not None else None
        else:
            self._bad += 1
        return self._bad > self.patience
