"""DiffCDR as published (Xuan et al., arXiv 2402.02182), on this project's base models.

- Diffusion Module: a conditional denoiser with a sinusoidal time embedding and *no*
  non-linearity (:class:`~models.denoisers.LinearDenoiser`), trained to predict the noise
  (smooth L1) on overlapping users' target vectors, conditioned on their source vectors, the
  condition dropped with probability 0.1; linear beta schedule over 1,000 steps.
- Sampling: DPM-Solver (the third-order multistep DPM-Solver++ in diffusers) with 30 function evaluations, starting from the *source vector* (the
  paper's choice) rather than noise, classifier-free guidance with scale s.
- Alignment Module: one linear layer (no bias) on the sample, trained with the vector loss
  plus lambda (0.1) times the task-oriented rating loss. As in the public code, the sampler
  runs without gradients, so the task loss reaches only the alignment layer.

Unlike the public code, epochs and the guidance scale are chosen on validation cold users.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.denoisers import LinearDenoiser
from models.diffusion import VectorDiffusion
from pipeline.cdr.configs import DiffCDRConfig
from pipeline.cdr.methods.base import Factors, FitContext, Method, StepsSwitch
from pipeline.cdr.methods.spaces import Space, main_space, target_rows
from pipeline.cdr.training import EarlyStopping, minibatches, seed_everything

GUIDANCE_GRID = (0.1, 0.5, 1.0, 2.0, 4.0)  # scales tried on validation after training


class DiffCDR(StepsSwitch, Method):
    name = "diffcdr"
    saved_attributes = ("guidance",)

    def __init__(self, config: DiffCDRConfig | None = None):
        super().__init__(config or DiffCDRConfig())
        self.space: Space | None = None

    def build(self, ctx: FitContext) -> None:
        cfg = self.config
        self.space = main_space(ctx)
        dim = self.space.dim
        if self.space.source.shape[1] != dim:
            raise ValueError(
                "DiffCDR starts sampling from the source vector: dimensions must match"
            )
        self.diffusion = VectorDiffusion(num_train_timesteps=cfg.timesteps)
        self.denoiser = LinearDenoiser(dim, dim, hidden=cfg.hidden)
        self.align = nn.Linear(dim, dim, bias=False)  # the Alignment Module
        nn.init.eye_(self.align.weight)
        self.guidance = cfg.guidance
        self.sample_steps = cfg.sample_steps

    def sample(self, cond: torch.Tensor, guidance: float | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.diffusion.sample(
                self.denoiser,
                cond,
                x_T=cond,  # start from the source vector
                guidance=self.guidance if guidance is None else guidance,
                steps=self.sample_steps,
                order=3,
            )

    def generate(self, users: np.ndarray, guidance: float | None = None) -> torch.Tensor:
        cond = self.space.source[torch.as_tensor(users)]
        return self.align(self.sample(cond, guidance))

    def fit(self, ctx: FitContext) -> None:
        cfg = self.config
        gen = seed_everything(ctx.seed + 17)
        self.build(ctx)
        users = ctx.data.users("train_overlap")
        _, rows, items, ratings = target_rows(ctx, users)
        x0_all = self.space.target[torch.as_tensor(users)]
        cond_all = self.space.source[torch.as_tensor(users)]
        params = list(self.denoiser.parameters()) + list(self.align.parameters())
        opt = torch.optim.Adam(params, lr=cfg.lr)
        valid = ctx.data.cold_users("valid")
        stop = EarlyStopping(cfg.patience, self.space.select_mode)
        T = self.diffusion.num_train_timesteps
        for epoch in range(1, cfg.epochs + 1):
            self.denoiser.train()
            # Like the public code, one pass goes over target interactions, not users.
            for batch in minibatches(len(rows), cfg.batch_size, gen):
                row = rows[batch]
                x0, cond = x0_all[row], cond_all[row]
                # Diffusion step: antithetic timesteps (t, T-1-t), as in the public code.
                half = self.diffusion.sample_timesteps((len(row) + 1) // 2, gen)
                t = torch.cat([half, T - 1 - half])[: len(row)]
                x_t, noise = self.diffusion.add_noise(x0, t, gen)
                keep = (torch.rand(len(row), generator=gen) >= cfg.cond_drop).float()
                loss = F.smooth_l1_loss(self.denoiser(x_t, t, cond, keep), noise)
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                # Task step: the sample carries no gradient; only the alignment layer learns.
                aligned = self.align(self.sample(cond))
                loss = F.smooth_l1_loss(aligned, x0) + cfg.task_lambda * self.space.task_loss(
                    aligned, items[batch], ratings[batch], gen
                )
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
            self.denoiser.eval()
            with torch.no_grad():
                value = self.space.score(ctx, self.generate(valid), "valid")
            state = {"denoiser": self.denoiser.state_dict(), "align": self.align.state_dict()}
            if stop.step(value, epoch, state):
                break
        self.denoiser.load_state_dict(stop.best_state["denoiser"])
        self.align.load_state_dict(stop.best_state["align"])
        self.denoiser.eval()
        # Guidance scale: the best on validation users.
        scores = {}
        with torch.no_grad():
            for s in GUIDANCE_GRID:
                scores[s] = self.space.score(ctx, self.generate(valid, s), "valid")
        pick = min if self.space.select_mode == "min" else max
        self.guidance = pick(scores, key=scores.get)
        self.info = {
            "epoch": stop.best_epoch,
            "guidance": self.guidance,
            f"valid_{self.space.select_metric}": scores[self.guidance],
        }

    def rating_factors(self, ctx: FitContext, users: np.ndarray) -> Factors | None:
        return self.space.factors(self.generate(users)) if self.space.kind == "rating" else None

    def ranking_factors(self, ctx: FitContext, users: np.ndarray) -> Factors:
        return self.space.factors(self.generate(users))
