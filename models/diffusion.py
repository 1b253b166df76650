"""Gaussian diffusion over user vectors, with diffusers' schedulers doing the noise schedule.

The denoising network never sees the schedule: :class:`VectorDiffusion` noises with
``DDPMScheduler.add_noise`` for training and samples with the multistep DPM-Solver++
(``DPMSolverMultistepScheduler``, Lu et al. 2022, arXiv 2211.01095) for generation. Classifier-free
guidance (Ho & Salimans, 2022, arXiv 2207.12598) mixes the conditional and unconditional
predictions: ``eps = eps_uncond + s * (eps_cond - eps_uncond)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


class VectorDiffusion:
    """Forward noising, x0 recovery and guided sampling for (batch, dim) vectors."""

    def __init__(
        self,
        *,
        num_train_timesteps: int = 1000,  # DiffCDR / DDPM: 1000 steps
        beta_start: float = 1e-4,
        beta_end: float = 0.02,  # linear schedule (Ho et al., 2020)
        prediction_type: str = "epsilon",  # what the network predicts: "epsilon" or "sample" (x0)
    ):
        self.train = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule="linear",
            beta_start=beta_start,
            beta_end=beta_end,
            prediction_type=prediction_type,
            clip_sample=False,
        )
        self.prediction_type = prediction_type

    @property
    def num_train_timesteps(self) -> int:
        return self.train.config.num_train_timesteps

    # -- training ---------------------------------------------------------------------------
    def sample_timesteps(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator)

    def add_noise(
        self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        return self.train.add_noise(x0, noise, t), noise

    # -- generation -------------------------------------------------------------------------
    def sampler(self, steps: int = 30, order: int = 2) -> DPMSolverMultistepScheduler:
        """A fresh DPM-Solver++ with ``steps`` model evaluations over the training schedule."""
        sched = DPMSolverMultistepScheduler.from_config(
            self.train.config,
            algorithm_type="dpmsolver++",
            solver_order=order,
            lower_order_final=True,
        )
        sched.set_timesteps(steps)
        return sched

    def sample(
        self,
        denoiser: Denoiser,
        cond: torch.Tensor | None,
        x_T: torch.Tensor,
        *,
        guidance: float = 1.0,
        steps: int = 30,
        order: int = 2,
    ) -> torch.Tensor:
        """Run the reverse process from ``x_T`` (noise, or e.g. the source vector).

        ``denoiser(x, t, cond, keep)`` gets ``keep`` = 1 where the condition is used and 0 for
        the unconditional branch; with ``guidance`` = 1 only the conditional branch runs.
        Gradients flow through unless the caller disables them.
        """
        sched = self.sampler(steps, order)
        x = x_T * sched.init_noise_sigma
        n = x.shape[0]
        ones, zeros = torch.ones(n), torch.zeros(n)
        for t in sched.timesteps:
            tt = torch.full((n,), int(t), dtype=torch.long)
            if cond is None:
                out = denoiser(x, tt, None, zeros)
            elif guidance == 1.0:
                out = denoiser(x, tt, cond, ones)
            else:
                uncond = denoiser(x, tt, cond, zeros)
                out = uncond + guidance * (denoiser(x, tt, cond, ones) - uncond)
            x = sched.step(out, t, x).prev_sample
        return x
