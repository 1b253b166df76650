"""The networks of ``ours``: a source-history encoder, a latent denoiser and a latent decoder.

The generator works in the latent space of a linear autoencoder over target-domain interaction
vectors (L-DiffRec, Wang et al., SIGIR 2023, arXiv 2304.04971, compresses the item space the
same way): a user's target history ``x_t`` is the latent ``z = x_t V / scale``, and a latent
decodes to scores over every target item, ``temperature * scale * z V' + b``, a matrix product
(``V`` fixed, from the autoencoder; ``temperature`` and ``b`` learned with the task loss).

The condition is the user's source history: an ``EmbeddingBag`` over the source items they had
(each weighted 1/sqrt(n), items dropped at random while training, as in Mult-DAE, Liang et al.
2018), plus optional dense inputs (pooled item text/image features of the liked items, the
embedded LLM profile, rating habits), each projected and summed.

The denoiser is deliberately shallow (one tanh layer): the networks are trained on the few
thousand users that have both domains, where deeper networks overfit. It predicts the clean
latent (x0), which is what the task loss needs.
"""

from __future__ import annotations

import torch
from torch import nn

from models.denoisers import timestep_embedding


class SourceEncoder(nn.Module):
    """Source history (+ dense inputs) -> condition vector (batch, width)."""

    def __init__(
        self, n_items: int, width: int, dense: dict[str, int], *, item_dropout: float = 0.5
    ):
        super().__init__()
        self.items = nn.EmbeddingBag(n_items, width, mode="sum")
        nn.init.normal_(self.items.weight, std=1.0 / width**0.5)
        self.dense = nn.ModuleDict(
            {
                k: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, width))
                for k, d in sorted(dense.items())
            }
        )
        self.bias = nn.Parameter(torch.zeros(width))
        self.item_dropout = item_dropout

    def forward(
        self,
        items: torch.Tensor,
        offsets: torch.Tensor,
        weights: torch.Tensor,
        dense: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``items``/``offsets``: the users' source items, as for ``nn.EmbeddingBag``;
        ``weights``: one per item (1/sqrt(n) of its user); ``dense``: (batch, d) per input."""
        if self.training and self.item_dropout > 0:
            keep = torch.rand(weights.shape, generator=generator) >= self.item_dropout
            weights = weights * keep / (1 - self.item_dropout)
        out = self.items(items, offsets, per_sample_weights=weights) + self.bias
        for name, project in self.dense.items():
            out = out + project(dense[name])
        return out


class LatentDenoiser(nn.Module):
    """x0 prediction: ``h = tanh(c + A z_t + B emb(t))``, ``z0 = W h``.

    ``keep`` = 0 swaps the condition for a learned null vector: the unconditional branch of
    classifier-free guidance (Ho & Salimans, 2022, arXiv 2207.12598), which target-only users
    train. ``deterministic=True`` is the same network without the noisy latent and the time
    (a plain regressor of the latent: the diffusion's twin for ablations).
    """

    def __init__(self, dim: int, width: int, *, deterministic: bool = False):
        super().__init__()
        self.width = width
        self.deterministic = deterministic
        self.null = nn.Parameter(torch.zeros(width))
        if not deterministic:
            self.latent = nn.Linear(dim, width, bias=False)
            self.time = nn.Linear(width, width)
        self.out = nn.Linear(width, dim)

    def forward(
        self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, keep: torch.Tensor
    ) -> torch.Tensor:
        k = keep[:, None]
        h = (1 - k) * self.null
        if cond is not None:
            h = h + k * cond
        if not self.deterministic:
            h = h + self.latent(z_t) + self.time(timestep_embedding(t, self.width))
        return self.out(torch.tanh(h))


class LatentDecoder(nn.Module):
    """Latent -> scores over every target item: ``temperature * z basis' + bias``."""

    def __init__(self, basis: torch.Tensor):
        super().__init__()
        self.register_buffer("basis", basis.float())  # (n_items, dim), includes the scale
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(basis.shape[0]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.log_temperature.exp() * (z @ self.basis.T) + self.bias

    def item_vectors(self) -> torch.Tensor:
        """(n_items, dim + 1): scores are ``[z, 1] @ item_vectors'``."""
        scale = self.log_temperature.exp()
        return torch.cat([self.basis * scale, self.bias[:, None]], 1)
