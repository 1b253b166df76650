"""DiffCDR's denoiser (linear, as published) and the timestep embedding every denoiser uses;
ours is in :mod:`models.generator`."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al., 2017; DDPM)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1)
    )
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    return emb if dim % 2 == 0 else torch.nn.functional.pad(emb, (0, 1))


class LinearDenoiser(nn.Module):
    """DiffCDR's denoiser (arXiv 2402.02182): x + W_t emb(t) + keep * W_c c, then three
    linear layers with no non-linearity in between, predicting the noise."""

    def __init__(self, dim: int, cond_dim: int, hidden: int = 128):
        super().__init__()
        self.hidden = hidden
        self.time = nn.Linear(hidden, dim)
        self.cond = nn.Linear(cond_dim, dim)
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, dim)
        )

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, keep: torch.Tensor
    ) -> torch.Tensor:
        h = x + self.time(timestep_embedding(t, self.hidden))
        if cond is not None:
            h = h + self.cond(cond) * keep[:, None]
        return self.net(h)
