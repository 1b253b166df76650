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
    cond_drop: float = Field(0.1, ge=0, le=1)
    task_lambda: float = Field(0.1, ge=0)
    epochs: int = Field(20, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(512, ge=1)
    patience: int = Field(3, ge=0)


class CDEaseConfig(BaseModel):
    """The cross-domain ridge item map (pipeline/cdr/methods/item_models.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # SVD rank of the overlap users' source rows: exact ridge at the matrix's rank; memory
    # (n_source_items + n_target_items + n_overlap_users) x rank floats.
    rank: int = Field(256, ge=1)


class CDItemKNNConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    neighbours: int = Field(100, ge=1)  # target items kept per source item (sparse)


class OursConfig(BaseModel):
    """The latent diffusion generator (see pipeline/cdr/methods/ours.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latent_dim: int = Field(128, ge=2)  # target autoencoder latent: what the diffusion generates
    width: int = Field(256, ge=4)  # condition encoder / denoiser width
    rank: int = Field(256, ge=1)  # SVD rank of the closed-form item map (as cd_ease.rank)
    # Condition inputs besides the source history (always used): pooled features of the liked
    # source items (item_features store), the embedded LLM profile (user_profiles store), the
    # user's rating habits (explicit data only).
    condition: list[Literal["liked_items", "profile", "habits"]] = [
        "liked_items",
        "profile",
        "habits",
    ]
    item_map: bool = True  # the closed-form item map as the generator's partner expert
    diffusion: bool = True  # false: the same network as a deterministic regressor (ablation)
    side_users: bool = True  # target-only users train the unconditional branch
    sample_steps: int = Field(10, ge=1)  # DPM-Solver++ steps at generation
    epochs: int = Field(150, ge=1)  # most epochs; the checkpoint is picked on valid_cold users
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, ge=1)


METHOD_NAMES = (
    "global_mean",
    "popularity",
    "item_mean",
    "item_mean_user_bias",
    "habit_bias",
    "tgt_mf",
    "cd_itemknn",
    "cd_ease",
    "emcdr",
    "ptupcdr",
    "diffcdr",
    "ours",
    "ours_deterministic",
    "ours_no_item_map",
    "ours_no_side_users",
    "ours_no_profile",
    "ours_no_item_features",
)


class TrainParams(BaseModel):
    """params.yaml ``train``: which methods to fit and their hyper-parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0  # seeds every model: same seed, same models
    # Every method but the ablations, and the ablations that ask what the diffusion, the
    # profiles and the item features add.
    methods: list[str] = [
        m
        for m in METHOD_NAMES
        if not m.startswith("ours_")
        or m in ("ours_deterministic", "ours_no_profile", "ours_no_item_features")
    ]
    base: MFConfig = MFConfig()
    emcdr: EMCDRConfig = EMCDRConfig()
    ptupcdr: PTUPCDRConfig = PTUPCDRConfig()
    diffcdr: DiffCDRConfig = DiffCDRConfig()
    cd_ease: CDEaseConfig = CDEaseConfig()
    cd_itemknn: CDItemKNNConfig = CDItemKNNConfig()
    ours: OursConfig = OursConfig()  # also the base of the ours_* ablations

    @field_validator("methods")
    @classmethod
    def _known(cls, methods: list[str]) -> list[str]:
        if not methods:
            raise ValueError("name at least one method to train")
        unknown = [m for m in methods if m not in METHOD_NAMES]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {list(METHOD_NAMES)}")
        return methods

    def method_configs(self) -> dict[str, BaseModel]:
        return {name: getattr(self, name) for name in METHOD_NAMES if hasattr(self, name)}
