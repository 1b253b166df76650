"""Per-domain base models: biased matrix factorisation (explicit) and BPR-MF (implicit).

Both expose ``score_vectors``: scoring arbitrary user vectors against every item, which is
how generated (cold-start) user vectors are ranked.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BiasedMF(nn.Module):
    """r(u, i) = mu + b_u + b_i + <p_u, q_i>  (Koren et al., 2009)."""

    def __init__(self, n_users: int, n_items: int, dim: int, *, global_mean: float = 0.0):
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))
        nn.init.normal_(self.user.weight, std=0.05)
        nn.init.normal_(self.item.weight, std=0.05)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    @property
    def dim(self) -> int:
        return self.user.embedding_dim

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        p, q = self.user(users), self.item(items)
        return (
            self.global_mean
            + self.user_bias(users).squeeze(-1)
            + self.item_bias(items).squeeze(-1)
            + (p * q).sum(-1)
        )

    def regulariser(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Mean squared norm of the parameters a batch touches (L2 on what was used)."""
        return (
            self.user(users).pow(2).sum(-1)
            + self.item(items).pow(2).sum(-1)
            + self.user_bias(users).squeeze(-1).pow(2)
            + self.item_bias(items).squeeze(-1).pow(2)
        ).mean()

    def score_vectors(self, user_vec: torch.Tensor, user_bias: torch.Tensor) -> torch.Tensor:
        """Predicted ratings (n, n_items) for user vectors (n, dim) and biases (n,)."""
        return (
            self.global_mean
            + user_bias[:, None]
            + self.item_bias.weight[:, 0][None, :]
            + user_vec @ self.item.weight.T
        )


class BPRMF(nn.Module):
    """s(u, i) = b_i + <p_u, q_i>, trained with BPR (Rendle et al., 2009).

    The item bias learns popularity, so a zero user vector ranks by popularity: a cold-start
    generator can only add to that floor.
    """

    def __init__(self, n_users: int, n_items: int, dim: int):
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.normal_(self.user.weight, std=0.05)
        nn.init.normal_(self.item.weight, std=0.05)
        nn.init.zeros_(self.item_bias.weight)

    @property
    def dim(self) -> int:
        return self.user.embedding_dim

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.item_bias(items).squeeze(-1) + (self.user(users) * self.item(items)).sum(-1)

    def bpr_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid(self(users, pos) - self(users, neg)).mean()

    def regulariser(
        self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        return (
            self.user(users).pow(2).sum(-1)
            + self.item(pos).pow(2).sum(-1)
            + self.item(neg).pow(2).sum(-1)
            + self.item_bias(pos).squeeze(-1).pow(2)
            + self.item_bias(neg).squeeze(-1).pow(2)
        ).mean()

    def score_vectors(self, user_vec: torch.Tensor) -> torch.Tensor:
        return self.item_bias.weight[:, 0][None, :] + user_vec @ self.item.weight.T
