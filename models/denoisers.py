"""Denoising networks for user vectors: DiffCDR's (linear, as published) and ours (MLP + FiLM)."""

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


class FiLMBlock(nn.Module):
    """Residual MLP block whose activations are scaled and shifted by the context (FiLM,
    Perez et al., 2018)."""

    def __init__(self, width: int, context: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width * 2)
        self.film = nn.Linear(context, width * 4)
        self.fc2 = nn.Linear(width * 2, width)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(ctx).chunk(2, dim=-1)
        z = self.fc1(self.norm(h)) * (1 + scale) + shift
        return h + self.fc2(self.drop(nn.functional.silu(z)))


class FiLMDenoiser(nn.Module):
    """Our denoiser: residual SiLU MLP blocks; timestep and condition enter through FiLM.

    The condition is whatever the caller concatenates (source CF vector, rating statistics,
    profile embedding, pooled item features); ``keep`` = 0 swaps it for a learned null
    condition, which is the unconditional branch of classifier-free guidance.
    """

    def __init__(
        self, dim: int, cond_dim: int, *, width: int = 128, depth: int = 2, dropout: float = 0.0
    ):
        super().__init__()
        self.width = width
        self.inp = nn.Linear(dim, width)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.cond = nn.Sequential(nn.Linear(cond_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.null = nn.Parameter(torch.zeros(width))
        self.blocks = nn.ModuleList(FiLMBlock(width, width, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, keep: torch.Tensor
    ) -> torch.Tensor:
        ctx = self.time(timestep_embedding(t, self.width))
        c = self.null.expand(x.shape[0], -1)
        if cond is not None:
            k = keep[:, None]
            c = k * self.cond(cond) + (1 - k) * c
        ctx = ctx + c
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, ctx)
        return self.out(h)


class ConditionEncoder(nn.Module):
    """Named condition inputs -> one condition vector.

    Each input (source CF vector, rating statistics, profile embedding, pooled item features,
    ...) is normalised and projected on its own, then the projections are concatenated and
    mixed. Adding an input later adds one projection; the denoiser does not change.
    """

    def __init__(self, dims: dict[str, int], width: int, *, nonlinear: bool = True):
        super().__init__()
        self.names = sorted(dims)
        self.project = nn.ModuleDict(
            {k: nn.Sequential(nn.LayerNorm(dims[k]), nn.Linear(dims[k], width)) for k in self.names}
        )
        joint = width * len(self.names)
        if nonlinear:
            self.mix = nn.Sequential(
                nn.SiLU(), nn.Linear(joint, width), nn.SiLU(), nn.Linear(width, width)
            )
        else:
            self.mix = nn.Linear(joint, width)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mix(torch.cat([self.project[k](inputs[k]) for k in self.names], dim=-1))


class ConditionalGenerator(nn.Module):
    """A condition encoder in front of a denoiser; called as ``net(x, t, inputs, keep)``."""

    def __init__(self, encoder: ConditionEncoder, denoiser: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.denoiser = denoiser

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        inputs: dict[str, torch.Tensor] | None,
        keep: torch.Tensor,
    ) -> torch.Tensor:
        cond = None if inputs is None else self.encoder(inputs)
        return self.denoiser(x, t, cond, keep)
