"""'ours': a MuSiC-style conditional diffusion generator of the cold user's target vector.

What it generates, per user, is one vector of three standardised parts:

- ``bias``: the user's target rating bias (mean residual against the target item means),
- ``taste``: the user's vector in the target biased-MF model (scored against its item vectors),
- ``rank``: the user's vector in the target BPR model (scored against its item vectors).

What it is conditioned on is a dict of named inputs (``condition`` param): ``source_cf``
(the user's source biased-MF and BPR vectors), ``source_stats`` (shrunk source bias, history
length, mean rating), and, from the feature stores, ``profile`` (the embedded LLM-written
profile) and ``liked_items`` (mean feature vector of the source items the user liked).

Training (x0-prediction; DDPMScheduler noising over a linear 1,000-step schedule):

- overlapping training users train the conditional branch (condition dropped with
  probability ``cond_drop``); target-only *side* users train the unconditional branch, so the
  model learns what target users look like from every target user, not only the overlap;
- the denoiser predicts x0, and the task losses (rating MSE on the user's target ratings,
  softmax cross-entropy of the user's target positives over all items) are applied to that
  prediction, so they train the whole generator, not one output layer.

Generation: DPM-Solver++ (diffusers) from seeded noise with classifier-free guidance.

Predictions keep the honest floors as special cases, with the blend chosen on validation
cold users only (with the checkpoint and the guidance scale):

- rating = item_mean[i] + kappa * (mf_offset[i] - item_mean[i]) + (1 - lam) * habit_bias
  + lam * bias_hat + gam * <taste_hat, q_i>, where habit_bias is the target bias read from the
  user's source rating habits (``habits.py``, fitted on the training overlap users; the floor's
  shrunk source bias is its special case) and mf_offset is the target MF's regularised
  mu + b_i. The three weights are fitted by least squares on validation ratings, and the
  checkpoint and guidance are picked by *cross-fitted* error (weights fitted on other
  validation users); a blend that does not beat the habit readout alone by ``gate_se``
  standard errors (2) is dropped (lam = gam = kappa = 0). With the floor's readout, 0, 0, 0 is exactly
  ``item_mean_user_bias``;
- ranking score = log popularity[i] + alpha * (<rank_hat, w_i> + bpr_bias[i]);
  alpha = 0 is exactly ``popularity``.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, ClassVar

import numpy as np
import torch
from torch.nn import functional as F

from models.denoisers import (
    ConditionalGenerator,
    ConditionEncoder,
    FiLMDenoiser,
    LinearDenoiser,
)
from models.diffusion import VectorDiffusion
from pipeline.cdr.configs import OursConfig
from pipeline.cdr.methods import habits
from pipeline.cdr.methods.base import (
    Factors,
    FitContext,
    Method,
    StepsSwitch,
    significant_gain,
)
from pipeline.cdr.methods.blend import RatingBlend
from pipeline.cdr.training import minibatches, seed_everything
from pipeline.errors import PipelineError
from pipeline.recs import metrics

log = logging.getLogger("train")

SAMPLE_SEED = 1234  # generation noise: the same users get the same vectors on every run


def _column_stats(x: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """(2, columns): mean and scale of each column over ``rows``."""
    sd = x[rows].std(0)
    return torch.as_tensor(np.stack([x[rows].mean(0), np.where(sd > 1e-8, sd, 1.0)]))


def _user_noise(users: np.ndarray, draws: int, dim: int) -> torch.Tensor:
    """(draws * n, dim) starting noise, each user's own from its index: a user's vector does
    not depend on which other users are generated with it (chunking, fold-in)."""
    out = np.empty((draws, len(users), dim), np.float32)
    for j, u in enumerate(users.tolist()):
        out[:, j] = np.random.default_rng([SAMPLE_SEED, u]).standard_normal((draws, dim))
    return torch.from_numpy(out.reshape(draws * len(users), dim))


class Ours(StepsSwitch, Method):
    name = "ours"
    saved_attributes = (
        "scales",
        "rating_choice",
        "ranking_choice",
        "cond_dims",
        "cond_stats",
        "readout",
    )

    config_name = "ours"  # ablations read the same params section
    drops_inputs: ClassVar[tuple[str, ...]] = ()  # ablations: condition inputs left out
    overrides: ClassVar[dict[str, Any]] = {}  # ablations: config fields changed

    def __init__(self, config: OursConfig | None = None):
        config = (config or OursConfig()).model_copy(update=self.overrides)
        if self.drops_inputs:
            kept = [c for c in config.condition if c not in self.drops_inputs]
            config = config.model_copy(update={"condition": kept})
        super().__init__(config)
        self.sample_steps = self.config.sample_steps
        self.rating_choice: dict[str, float] = {}
        self.ranking_choice: dict[str, float] = {}
        self.cond_stats: dict[str, torch.Tensor] = {}  # fixed at training (fold-in safe)
        self.readout = habits.floor_weights()  # source habits -> target bias (fitted in fit)

    # ------------------------------------------------------------------ inputs and targets
    def _condition(self, ctx: FitContext) -> dict[str, torch.Tensor]:
        """Every user's named condition inputs, standardised with statistics taken once, at
        training, over the users with a source history."""
        data, src = ctx.data, ctx.src
        rows = np.flatnonzero(src.has_source)
        out: dict[str, np.ndarray] = {}
        for name in self.config.condition:
            if name == "source_cf":
                parts = [ctx.base.src_bpr.user.weight.detach().numpy()]
                if ctx.base.src_mf is not None:
                    mf = ctx.base.src_mf
                    parts += [mf.user.weight.detach().numpy(), mf.user_bias.weight.detach().numpy()]
                value = np.concatenate(parts, 1)
            elif name == "source_stats":
                mean = np.nan_to_num(src.mean_rating, nan=0.0) if data.explicit else src.count * 0
                value = np.stack([src.bias, np.log1p(src.count), mean], 1)
            elif name == "profile":
                value = self._extra(ctx, "profile", "user_profiles")
            else:  # liked_items
                feats = self._extra(ctx, "source_item_features", "item_features")
                liked = src.ratings >= metrics.POSITIVE_RATING if data.explicit else None
                value = _pool(feats, src.indptr, src.items, liked)
            value = np.asarray(value, dtype=np.float64)
            if name not in self.cond_stats:
                self.cond_stats[name] = _column_stats(value, rows)
            mean, scale = self.cond_stats[name].numpy()
            out[name] = (value - mean) / scale
        return {k: torch.as_tensor(v, dtype=torch.float32) for k, v in out.items()}

    def load_state_dict(self, ctx: FitContext, state: dict) -> None:
        super().load_state_dict(ctx, state)
        self.cond = self._condition(ctx)  # again, with the training statistics
        if ctx.data.explicit:
            self._set_prior()  # with the saved readout

    @staticmethod
    def _extra(ctx: FitContext, key: str, stage: str) -> np.ndarray:
        if key not in ctx.extra:
            raise PipelineError(
                f"train.ours.condition uses '{key}' but no {stage} store was given "
                f"(enable the {stage} stage or drop it from train.ours.condition)"
            )
        return np.asarray(ctx.extra[key])

    def _targets(self, ctx: FitContext) -> tuple[np.ndarray, dict[str, slice]]:
        """Every visible target user's [bias | taste | rank] vector (raw units)."""
        data = ctx.data
        tr = data.tgt_train
        rank = ctx.base.tgt_bpr.user.weight.detach().numpy().astype(np.float64)
        parts, names = [], []
        if data.explicit:
            n = np.bincount(tr.user, minlength=data.n_users)
            resid = np.bincount(
                tr.user, weights=tr.rating - ctx.item_mean[tr.item], minlength=data.n_users
            )
            bias = resid / np.maximum(n, 1)
            parts += [bias[:, None], ctx.base.tgt_mf.user.weight.detach().numpy()]
            names += ["bias", "taste"]
        parts.append(rank)
        names.append("rank")
        slices, start = {}, 0
        for name, part in zip(names, parts, strict=True):
            slices[name] = slice(start, start + part.shape[1])
            start += part.shape[1]
        return np.concatenate(parts, 1), slices

    # ------------------------------------------------------------------ networks
    def build(self, ctx: FitContext) -> None:
        cfg = self.config
        self.cond = self._condition(ctx)
        x, self.slices = self._targets(ctx)
        self.x_raw = torch.as_tensor(x, dtype=torch.float32)
        self.x_dim = x.shape[1]
        self.cond_dims = {k: int(v.shape[1]) for k, v in self.cond.items()}
        self.diffusion = VectorDiffusion(
            num_train_timesteps=cfg.timesteps, prediction_type="sample"
        )
        self.net_rating = self._network()
        self.net_ranking = self._network()
        tgt = ctx.base.tgt_bpr
        self.rank_items = tgt.item.weight.detach().float()
        self.rank_bias = tgt.item_bias.weight.detach()[:, 0].float()
        popularity = ctx.item_positive + ctx.item_count / (ctx.item_count.max() + 1.0)
        self.log_pop = torch.as_tensor(np.log1p(popularity), dtype=torch.float32)
        if ctx.data.explicit:
            self.taste_items = ctx.base.tgt_mf.item.weight.detach().float()
            self.item_mean = torch.as_tensor(ctx.item_mean, dtype=torch.float32)
            mf = ctx.base.tgt_mf
            self.item_offset = (mf.global_mean + mf.item_bias.weight.detach()[:, 0]).float()
            self.habit_x = habits.habits(ctx.src)
            self._set_prior()

    def _set_prior(self) -> None:
        """Every user's target bias as read from their source habits (the floor's by default)."""
        prior = habits.apply_readout(self.habit_x, self.readout)
        self.prior_bias = torch.as_tensor(prior, dtype=torch.float32)

    def _network(self) -> ConditionalGenerator:
        cfg = self.config
        encoder = ConditionEncoder(self.cond_dims, cfg.width, nonlinear=cfg.nonlinear)
        if cfg.nonlinear:
            denoiser = FiLMDenoiser(
                self.x_dim, cfg.width, width=cfg.width, depth=cfg.depth, dropout=cfg.dropout
            )
        else:
            denoiser = LinearDenoiser(self.x_dim, cfg.width, hidden=cfg.width)
        return ConditionalGenerator(encoder, denoiser)

    # ------------------------------------------------------------------ generation
    def _inputs(self, users: np.ndarray) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(users)
        return {k: v[idx] for k, v in self.cond.items()}

    def generate(
        self, net: ConditionalGenerator, users: np.ndarray, guidance: float
    ) -> torch.Tensor:
        """Target vectors (raw units) of ``users`` from their condition inputs."""
        k = self.config.samples
        noise = _user_noise(np.asarray(users), k, self.x_dim)
        with torch.no_grad():
            net.eval()
            x = self.diffusion.sample(
                net,
                self._inputs(np.tile(users, k)),
                noise,
                guidance=guidance,
                steps=self.sample_steps,
            )
        # The mean of several draws estimates E[x0 | condition], what RMSE and NDCG reward.
        x = x.reshape(k, len(users), self.x_dim).mean(0)
        return x * self.scales["std"] + self.scales["mean"]

    def _rating_factors(
        self, vec: torch.Tensor, users: np.ndarray, lam: float, gam: float, kappa: float = 0.0
    ) -> Factors:
        bias = vec[:, self.slices["bias"]][:, 0]
        taste = vec[:, self.slices["taste"]]
        floor = self.prior_bias[torch.as_tensor(users)]
        user_bias = (1 - lam) * floor + lam * bias
        n = len(users)
        user = torch.cat([gam * taste, user_bias[:, None], torch.ones(n, 1)], 1)
        m = len(self.item_mean)
        # kappa moves the raw item mean towards the target MF's regularised item offset.
        offset = self.item_mean + kappa * (self.item_offset - self.item_mean)
        item = torch.cat([self.taste_items, torch.ones(m, 1), offset[:, None]], 1)
        return Factors(user, item)

    def _ranking_factors(self, vec: torch.Tensor, alpha: float) -> Factors:
        rank = vec[:, self.slices["rank"]]
        n = len(rank)
        user = torch.cat([alpha * rank, torch.full((n, 1), alpha), torch.ones(n, 1)], 1)
        item = torch.cat([self.rank_items, self.rank_bias[:, None], self.log_pop[:, None]], 1)
        return Factors(user, item)

    def rating_factors(self, ctx: FitContext, users: np.ndarray) -> Factors | None:
        if not ctx.data.explicit:
            return None
        c = self.rating_choice
        lam, gam, kappa = c["bias_blend"], c["interaction"], c.get("item_offset", 0.0)
        if lam == 0 and gam == 0:  # generated vectors unused: skip the sampling
            vec = torch.zeros(len(users), self.x_dim)
        else:
            vec = self.generate(self.net_rating, users, c["guidance"])
        return self._rating_factors(vec, users, lam, gam, kappa)

    def ranking_factors(self, ctx: FitContext, users: np.ndarray) -> Factors:
        c = self.ranking_choice
        vec = self.generate(self.net_ranking, users, c["guidance"])
        return self._ranking_factors(vec, c["ranking"])

    # ------------------------------------------------------------------ training
    def fit(self, ctx: FitContext) -> None:
        cfg = self.config
        gen = seed_everything(ctx.seed + 31)
        self.build(ctx)
        data = ctx.data
        overlap = data.users("train_overlap")
        if cfg.habits and data.explicit:
            self._fit_readout(ctx, overlap)
        side = data.users("side") if cfg.side_users else np.zeros(0, np.int64)
        users = np.concatenate([overlap, side])
        is_overlap = torch.as_tensor(np.isin(users, overlap))
        mean = self.x_raw[torch.as_tensor(overlap)].mean(0)
        std = self.x_raw[torch.as_tensor(overlap)].std(0).clamp_min(1e-6)
        # One scale per part keeps each part's internal geometry (dot products) intact.
        for sl in self.slices.values():
            std[sl] = std[sl].pow(2).mean().sqrt()
        self.scales = {"mean": mean, "std": std}
        x0_all = (self.x_raw - mean) / std
        targets = _TaskTargets(ctx, users, self) if cfg.task_loss else None

        net = self.net_rating  # one network trained; snapshots feed both heads' selection
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        snapshots: list[tuple[int, dict]] = []
        for epoch in range(1, cfg.epochs + 1):
            net.train()
            for batch in minibatches(len(users), cfg.batch_size, gen):
                u = torch.as_tensor(users[batch.numpy()])
                x0 = x0_all[u]
                t = self.diffusion.sample_timesteps(len(u), gen)
                x_t, _ = self.diffusion.add_noise(x0, t, gen)
                keep = is_overlap[batch] & (torch.rand(len(u), generator=gen) >= cfg.cond_drop)
                x0_hat = net(x_t, t, self._inputs(u.numpy()), keep.float())
                loss = F.mse_loss(x0_hat, x0)
                if targets is not None:
                    vec = x0_hat * std + mean
                    loss = loss + cfg.task_weight * targets.loss(batch, vec)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                snapshots.append((epoch, copy.deepcopy(net.state_dict())))
        self._select(ctx, snapshots)

    def _fit_readout(self, ctx: FitContext, overlap: np.ndarray) -> None:
        """The habit readout, fitted on the training overlap users (thousands of ratings). The
        floor's bias replaces it only if validation users say so beyond noise."""
        self.readout = habits.fit_readout(self.habit_x, ctx.data.tgt_train, overlap)
        held = ctx.data.heldout("valid")
        if len(held):

            def errors(weights: list[float]) -> torch.Tensor:
                prior = habits.apply_readout(self.habit_x[held.user], weights)
                pred = np.clip(ctx.item_mean[held.item] + prior, 1.0, 5.0)
                return torch.as_tensor(pred - held.rating, dtype=torch.float64)

            floor, fitted = errors(habits.floor_weights()), errors(self.readout)
            rows = torch.as_tensor(held.user)
            if significant_gain(floor, fitted, rows, self.config.gate_se) < 0:
                self.readout = habits.floor_weights()
        self._set_prior()

    def _select(self, ctx: FitContext, snapshots: list[tuple[int, dict]]) -> None:
        """Checkpoint, guidance and blend weights on validation cold users only.

        The rating blend is fitted on the validation ratings, so the candidates (checkpoint x
        guidance) are compared by *cross-fitted* error: weights fitted on four fifths of the
        validation users, errors taken on the other fifth. A blend fitted in-sample always
        looks better than it is; the cross-fitted error does not, so a candidate only wins
        when its generated vectors help users the blend was not fitted on, by more than noise
        (``significant_gain``, RMSE and MAE counted alike). If none does, the habit readout
        alone is kept.
        """
        cfg = self.config
        valid = ctx.data.cold_users("valid")
        best_ranking = (-np.inf, None, None)
        net = self.net_rating
        blend = RatingBlend(self, ctx, valid) if ctx.data.explicit else None
        best_rating = (0.0, None, None) if blend else None  # the readout alone: no change
        for epoch, state in snapshots:
            net.load_state_dict(state)
            for w in cfg.guidance_grid:
                vec = self.generate(net, valid, w)
                if blend is not None:
                    design = blend.design(vec)
                    score = blend.score(design)
                    if score < best_rating[0] - 1e-9:
                        best_rating = (score, epoch, (w, design))
                for alpha in cfg.ranking_grid:
                    f = self._ranking_factors(vec, alpha)
                    ndcg = ctx.ranking_metrics(f, "valid", ks=(10,))["ndcg@10"]
                    if ndcg > best_ranking[0] + 1e-9:
                        best_ranking = (ndcg, epoch, {"guidance": w, "ranking": alpha})
        states = dict(snapshots)
        self.ranking_choice = {**best_ranking[2], "epoch": best_ranking[1]}
        self.net_ranking.load_state_dict(states[best_ranking[1]])
        self.info = {"ranking": self.ranking_choice, "valid_ndcg@10": best_ranking[0]}
        if blend is not None:
            score, epoch, picked = best_rating
            if picked is None:  # the readout alone: any checkpoint, no generated terms
                epoch, guidance, coef = snapshots[-1][0], 0.0, (0.0, 0.0, 0.0)
            else:
                guidance, coef = picked[0], blend.fit(picked[1])
            lam, gam, kappa = coef
            self.rating_choice = {
                "guidance": guidance,
                "bias_blend": lam,
                "interaction": gam,
                "item_offset": kappa,
                "epoch": epoch,
            }
            net.load_state_dict(states[epoch])
            design = None if picked is None else picked[1]
            err = blend.predict(design) - blend.rating
            self.info.update(
                rating=self.rating_choice,
                valid_rmse=float(err.pow(2).mean().sqrt()),  # cross-fitted
                valid_loss_vs_readout=score,
                habit_readout=dict(zip((*habits.HABITS, "intercept"), self.readout, strict=True)),
            )
        self.net_rating.eval()
        self.net_ranking.eval()


class _TaskTargets:
    """Per training user: their visible target ratings and positives, for the task losses."""

    def __init__(self, ctx: FitContext, users: np.ndarray, model: Ours):
        data = ctx.data
        tr = data.tgt_train
        pos = np.full(data.n_users, -1)
        pos[users] = np.arange(len(users))
        keep = pos[tr.user] >= 0
        row, item, rating = pos[tr.user[keep]], tr.item[keep], tr.rating[keep]
        order = np.argsort(row, kind="stable")
        self.row = torch.as_tensor(row[order])
        self.item = torch.as_tensor(item[order])
        self.rating = torch.as_tensor(rating[order], dtype=torch.float32)
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=len(users)))])
        positive = (
            rating[order] >= metrics.POSITIVE_RATING if data.explicit else np.ones(len(row), bool)
        )
        self.positive = torch.as_tensor(positive)
        self.explicit = data.explicit
        self.model = model

    def loss(self, batch: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        m = self.model
        b = batch.numpy()
        idx = np.concatenate([np.arange(self.indptr[r], self.indptr[r + 1]) for r in b])
        local = np.repeat(np.arange(len(b)), self.indptr[b + 1] - self.indptr[b])
        idx_t, local_t = torch.as_tensor(idx), torch.as_tensor(local)
        items = self.item[idx_t]
        total = vec.new_zeros(())
        if self.explicit:
            bias = vec[:, m.slices["bias"]][:, 0]
            taste = vec[:, m.slices["taste"]]
            pred = (
                m.item_mean[items] + bias[local_t] + (taste[local_t] * m.taste_items[items]).sum(-1)
            )
            total = total + F.mse_loss(pred, self.rating[idx_t])
        # Ranking: multinomial likelihood of the user's positives over all target items.
        positive = self.positive[idx_t]
        if positive.any():
            rank = vec[:, m.slices["rank"]]
            logits = rank @ m.rank_items.T + m.rank_bias + m.log_pop
            logp = torch.log_softmax(logits, dim=1)
            total = total - logp[local_t[positive], items[positive]].mean()
        return total


def _pool(
    feats: np.ndarray, indptr: np.ndarray, items: np.ndarray, liked: np.ndarray | None
) -> np.ndarray:
    """Mean feature vector of each user's (liked) source items; zeros without any."""
    n_users = len(indptr) - 1
    user = np.repeat(np.arange(n_users), np.diff(indptr))
    keep = np.ones(len(items), bool) if liked is None else liked
    out = np.zeros((n_users, feats.shape[1]))
    np.add.at(out, user[keep], feats[items[keep]])
    count = np.bincount(user[keep], minlength=n_users)
    return out / np.maximum(count, 1)[:, None]


def _ablation(name: str, doc: str, drops: tuple[str, ...] = (), **overrides) -> type[Ours]:
    return type(
        _class_name(name),
        (Ours,),
        {"name": name, "__doc__": doc, "drops_inputs": drops, "overrides": overrides},
    )


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


OursNoSideUsers = _ablation("ours_no_side_users", "ours without side users.", side_users=False)
OursNoTaskLoss = _ablation(
    "ours_no_task_loss", "ours trained on the vector loss only.", task_loss=False
)
OursLinear = _ablation("ours_linear", "ours with a linear denoiser and encoder.", nonlinear=False)
OursNoProfile = _ablation("ours_no_profile", "ours without the LLM profile input.", ("profile",))
OursNoItemFeatures = _ablation(
    "ours_no_item_features", "ours without the liked-item features input.", ("liked_items",)
)

OursNoHabits = _ablation(
    "ours_no_habits",
    "ours reading the user bias from the source mean alone (the floor's), not the habits.",
    habits=False,
)

ABLATIONS: tuple[type[Ours], ...] = (
    OursNoHabits,
    OursNoSideUsers,
    OursNoTaskLoss,
    OursLinear,
    OursNoProfile,
    OursNoItemFeatures,
)
