"""Source-to-target mapping networks of the cross-domain baselines."""

from __future__ import annotations

import torch
from torch import nn


class MetaBridge(nn.Module):
    """PTUPCDR's meta network (Zhu et al., WSDM 2022, arXiv 2110.11154).

    A characteristic encoder attends over the user's source items; a decoder turns the pooled
    history into a personal bridge matrix that maps the source user vector to the target one.
    Padding is an explicit mask, never an item id.
    """

    def __init__(self, item_dim: int, src_dim: int, out_dim: int, meta_dim: int = 50):
        super().__init__()
        self.src_dim, self.out_dim = src_dim, out_dim
        self.key = nn.Sequential(
            nn.Linear(item_dim, item_dim), nn.ReLU(), nn.Linear(item_dim, 1, bias=False)
        )
        self.decoder = nn.Sequential(
            nn.Linear(item_dim, meta_dim), nn.ReLU(), nn.Linear(meta_dim, src_dim * out_dim)
        )

    def forward(self, items: torch.Tensor, mask: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """items (B, L, item_dim), mask (B, L) True where real, src (B, src_dim) -> (B, out_dim)."""
        logits = self.key(items).squeeze(-1).masked_fill(~mask, float("-inf"))
        # A user with no history at all gets a zero pooled vector instead of NaNs.
        att = torch.softmax(logits, dim=1).nan_to_num(0.0)
        pooled = (att.unsqueeze(-1) * items).sum(1)
        bridge = self.decoder(pooled).view(-1, self.src_dim, self.out_dim)
        return torch.bmm(src.unsqueeze(1), bridge).squeeze(1)
