"""PTUPCDR (Zhu et al., WSDM 2022): a meta network turns the user's source history into a
personalised bridge; trained task-oriented, on the overlapping users' target interactions."""

from __future__ import annotations

import numpy as np
import torch

from models.mapping import MetaBridge
from pipeline.cdr.configs import PTUPCDRConfig
from pipeline.cdr.methods.base import Factors, FitContext, Method
from pipeline.cdr.methods.history import padded_history
from pipeline.cdr.methods.spaces import Space, main_space, target_rows
from pipeline.cdr.training import EarlyStopping, minibatches, seed_everything


class PTUPCDR(Method):
    name = "ptupcdr"

    def __init__(self, config: PTUPCDRConfig | None = None):
        super().__init__(config or PTUPCDRConfig())
        self.net: MetaBridge | None = None
        self.space: Space | None = None

    def build(self, ctx: FitContext) -> None:
        self.space = main_space(ctx)
        src_items = (
            ctx.base.src_mf.item.weight
            if self.space.kind == "rating"
            else ctx.base.src_bpr.item.weight
        )
        self.src_items = src_items.detach().clone()
        self.net = MetaBridge(
            self.src_items.shape[1],
            self.space.source.shape[1],
            self.space.dim,
            self.config.meta_dim,
        )

    def generate(self, ctx: FitContext, users: np.ndarray) -> torch.Tensor:
        items, _, mask = padded_history(
            ctx.src, users, self.config.max_history, liked_only=ctx.data.explicit
        )
        return self.net(self.src_items[items], mask, self.space.source[torch.as_tensor(users)])

    def fit(self, ctx: FitContext) -> None:
        cfg = self.config
        gen = seed_everything(ctx.seed + 13)
        self.build(ctx)
        users = ctx.data.users("train_overlap")
        items, _, mask = padded_history(
            ctx.src, users, cfg.max_history, liked_only=ctx.data.explicit
        )
        hist = self.src_items[items]
        _, rows, it, r = target_rows(ctx, users)
        src = self.space.source[torch.as_tensor(users)]
        valid = ctx.data.cold_users("valid")
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        stop = EarlyStopping(cfg.patience, self.space.select_mode)
        for epoch in range(1, cfg.epochs + 1):
            self.net.train()
            for batch in minibatches(len(rows), cfg.batch_size, gen):
                row = rows[batch]
                vec = self.net(hist[row], mask[row], src[row])
                loss = self.space.task_loss(vec, it[batch], r[batch], gen)
                opt.zero_grad()
                loss.backward()
                opt.step()
            self.net.eval()
            with torch.no_grad():
                value = self.space.score(ctx, self.generate(ctx, valid), "valid")
            if stop.step(value, epoch, self.net.state_dict()):
                break
        self.net.load_state_dict(stop.best_state)
        self.net.eval()
        self.info = {"epoch": stop.best_epoch, f"valid_{self.space.select_metric}": stop.best}

    def rating_factors(self, ctx: FitContext, users: np.ndarray) -> Factors | None:
        return (
            self.space.factors(self.generate(ctx, users)) if self.space.kind == "rating" else None
        )

    def ranking_factors(self, ctx: FitContext, users: np.ndarray) -> Factors:
        return self.space.factors(self.generate(ctx, users))
