"""Hyper-parameters of the base models and of every method (the ``train`` section of
params.yaml). Pydantic only, so params validation does not import torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class MFConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(32, ge=1)  # latent dimension
    epochs: int = Field(60, ge=1)  # upper bound; early stopping on a warm holdout decides
    lr: float = Field(0.01, gt=0)
    reg: float = Field(0.05, ge=0)  # L2 on the parameters each batch touches
    batch_size: int = Field(1024, ge=1)
    patience: int = Field(4, ge=0)
    bpr_dim: int = Field(32, ge=1)  # ranking model (BPR) dimension
    bpr_reg: float = Field(0.01, ge=0)
    bpr_epochs: int = Field(60, ge=1)
    shrinkage: float = Field(5.0, ge=0)  # source bias shrunk by n / (n + shrinkage)


class EMCDRConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: int = Field(64, ge=1)  # the paper's MLP: one tanh hidden layer
    epochs: int = Field(300, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(128, ge=1)
    eval_every: int = Field(5, ge=1)
    patience: int = Field(10, ge=0)  # evaluations without improvement on valid_cold


class PTUPCDRConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    meta_dim: int = Field(50, ge=1)  # the paper's default
    max_history: int = Field(20, ge=1)  # source items per user (the paper pads to 20)
    epochs: int = Field(30, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(512, ge=1)
    patience: int = Field(4, ge=0)


class DiffCDRConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: int = Field(128, ge=2)  # diff_dim in the public config
    timesteps: int = Field(1000, ge=10)
    sample_steps: int = Field(30, ge=1)  # DPM-Solver function evaluations
    guidance: float = Field(0.1, ge=0)  # the public default scale
    guidance_grid: list[float] = [0.1, 0.5, 1.0, 2.0, 4.0]  # tried on validation after training
    cond_drop: float = Field(0.1, ge=0, le=1)
    task_lambda: float = Field(0.1, ge=0)
    epochs: int = Field(20, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(512, ge=1)
    patience: int = Field(3, ge=0)


class OursConfig(BaseModel):
    """The MuSiC-style generator (see pipeline/cdr/methods/ours.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(128, ge=4)  # denoiser and condition-encoder width
    depth: int = Field(2, ge=0)  # residual FiLM blocks
    nonlinear: bool = True  # False: linear denoiser and encoder (ablation)
    dropout: float = Field(0.0, ge=0, lt=1)
    condition: list[Literal["source_cf", "source_stats", "profile", "liked_items"]] = [
        "source_cf",
        "source_stats",
    ]  # condition inputs; profile / liked_items need the user_profiles / item_features stores
    habits: bool = True  # user bias read from the source rating habits, not the mean alone
    gate_se: float = Field(
        2.0, ge=0
    )  # validation changes the rating head only beyond this many SEs
    side_users: bool = True  # target-only users train the unconditional branch
    cond_drop: float = Field(0.1, ge=0, le=1)  # overlap users trained unconditionally this often
    task_loss: bool = True  # rating / ranking losses on the predicted x0 reach the generator
    task_weight: float = Field(1.0, ge=0)
    timesteps: int = Field(1000, ge=10)
    sample_steps: int = Field(10, ge=1)  # DPM-Solver++ steps at generation
    samples: int = Field(8, ge=1)  # draws averaged per user (estimates the conditional mean)
    epochs: int = Field(200, ge=1)
    eval_every: int = Field(20, ge=1)  # a selectable checkpoint every this many epochs
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(128, ge=1)
    guidance_grid: list[float] = [0.0, 1.0, 2.0, 3.0]  # classifier-free guidance, chosen on valid
    ranking_grid: list[float] = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]  # generated score vs popularity


METHOD_NAMES = (
    "global_mean",
    "popularity",
    "item_mean",
    "item_mean_user_bias",
    "tgt_mf",
    "emcdr",
    "ptupcdr",
    "diffcdr",
    "ours",
    "ours_no_habits",
    "ours_no_side_users",
    "ours_no_task_loss",
    "ours_linear",
    "ours_no_profile",
    "ours_no_item_features",
)


class TrainParams(BaseModel):
    """params.yaml ``train``: which methods to fit and their hyper-parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0  # seeds every model: same seed, same models
    threads: int = Field(1, ge=1)  # torch CPU threads (small models: 1 is fastest)
    methods: list[str] = [m for m in METHOD_NAMES if not m.startswith("ours_")]
    base: MFConfig = MFConfig()
    emcdr: EMCDRConfig = EMCDRConfig()
    ptupcdr: PTUPCDRConfig = PTUPCDRConfig()
    diffcdr: DiffCDRConfig = DiffCDRConfig()
    ours: OursConfig = OursConfig()  # also the base of the ours_* ablations

    @field_validator("methods")
    @classmethod
    def _known(cls, methods: list[str]) -> list[str]:
        unknown = [m for m in methods if m not in METHOD_NAMES]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {list(METHOD_NAMES)}")
        return methods

    def method_configs(self) -> dict[str, BaseModel]:
        return {name: getattr(self, name) for name in METHOD_NAMES if hasattr(self, name)}
