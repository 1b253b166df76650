"""EMCDR (Man et al., IJCAI 2017): an MLP maps a user's source vector to their target vector,
fitted on overlapping users; a cold user's target vector is the mapping of their source one."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.cdr.configs import EMCDRConfig
from pipeline.cdr.methods.base import Factors, FitContext, Method
from pipeline.cdr.methods.spaces import Space, main_space
from pipeline.cdr.training import EarlyStopping, minibatches, seed_everything

CHECK_EVERY = 5  # epochs between validation checks (patience counts checks)


class EMCDR(Method):
    name = "emcdr"

    def __init__(self, config: EMCDRConfig | None = None):
        super().__init__(config or EMCDRConfig())
        self.net: nn.Module | None = None
        self.space: Space | None = None

    def build(self, ctx: FitContext) -> None:
        self.space = main_space(ctx)
        d_in, d_out = self.space.source.shape[1], self.space.dim
        self.net = nn.Sequential(
            nn.Linear(d_in, self.config.hidden), nn.Tanh(), nn.Linear(self.config.hidden, d_out)
        )

    def fit(self, ctx: FitContext) -> None:
        cfg = self.config
        gen = seed_everything(ctx.seed + 11)
        self.build(ctx)
        users = torch.as_tensor(ctx.data.users("train_overlap"))
        x, y = self.space.source[users], self.space.target[users]
        valid = ctx.data.cold_users("valid")
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        stop = EarlyStopping(cfg.patience, self.space.select_mode)
        for epoch in range(1, cfg.epochs + 1):
            self.net.train()
            for batch in minibatches(len(users), cfg.batch_size, gen):
                loss = nn.functional.mse_loss(self.net(x[batch]), y[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if epoch % CHECK_EVERY == 0:
                self.net.eval()
                with torch.no_grad():
                    value = self.space.score(ctx, self.generate(valid), "valid")
                if stop.step(value, epoch, self.net.state_dict()):
                    break
        self.net.load_state_dict(stop.best_state)
        self.net.eval()
        self.info = {"epoch": stop.best_epoch, f"valid_{self.space.select_metric}": stop.best}

    def generate(self, users: np.ndarray) -> torch.Tensor:
        return self.net(self.space.source[torch.as_tensor(users)])

    def rating_factors(self, ctx: FitContext, users: np.ndarray) -> Factors | None:
        return self.space.factors(self.generate(users)) if self.space.kind == "rating" else None

    def ranking_factors(self, ctx: FitContext, users: np.ndarray) -> Factors:
        return self.space.factors(self.generate(users))
