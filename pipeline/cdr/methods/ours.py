"""'ours': conditional latent diffusion over target items, paired with a closed-form item map.

One model, four parts, each fitted once (no validation-fitted blend):

1. **Target autoencoder.** A linear autoencoder over the target interaction vectors of the
   overlap users (L-DiffRec's compressed item space): the top ``latent_dim`` right singular
   vectors ``V`` of their row-normalised interaction matrix. Side users are left out of the
   basis: it should span what the generator is asked to produce, the targets of users known
   in both catalogues, and a few hundred of those next to thousands of side users would
   otherwise get a basis shaped by the side users' rows. A
   user's latent is ``z = x_t V / scale``; a latent decodes to scores over every target item by
   a matrix product (:class:`~models.generator.LatentDecoder`), so it keeps item-level
   co-occurrence that a 10-64-d MF vector throws away.
2. **Generator.** Conditional diffusion over ``z`` (MuSiC / DiffCDR): the denoiser predicts the
   clean latent from the noisy one, conditioned on an encoder of the user's source history (which
   source items, plus pooled text/image features of the liked ones, the embedded LLM profile,
   rating habits and the item map's scores seen through the autoencoder). Overlap users train
   the conditional branch (condition dropped 10 % of the time), target-only *side* users the
   unconditional one; an epoch takes at most as many side users as overlap users (a fresh
   draw each epoch), so that thousands of side users do not drown a few hundred overlap ones.
   The task loss (multinomial likelihood of the user's target items) is taken on what the
   sampler returns, with gradients through the solver's steps, so it trains the whole
   sampling chain. Generation: DPM-Solver++ (diffusers) from per-user seeded noise
   (antithetic pairs) with classifier-free guidance, the mean of ``DRAWS`` samples.
   ``diffusion: false`` is the same network as a plain regressor of the latent, trained on the
   overlap users with the same losses (the deterministic twin, for ablations).
3. **Item map.** The closed-form cross-domain ridge map from source to target items
   (:mod:`pipeline.cdr.item_space`, the same algebra as ``cd_ease``), fitted on the overlap
   users. Ranking is a product of the two experts: each expert's scores standardised per user
   (exactly, from its item vectors' covariance, without scoring every item) and summed with
   equal weights, so neither is tuned against the other.
4. **Rating head** (explicit data): ``shrunk item mean + habit-read user bias + a * m_ui +
   b * t_ui + <z_hat, q_i>``: the bias is :class:`~pipeline.cdr.methods.baselines.HabitBias`'s
   readout; ``m_ui`` is the item map's score of item ``i`` for the user, centred and
   standardised over the items (users rate higher what the map expects them to pick);
   ``t_ui`` is the same map applied to the user's source ratings centred on their own mean
   (their taste: the target items that go with the source items they rated above their
   average come out high, those that go with the ones they rated below it low), centred over
   the items. The weights ``a`` and ``b`` (and an intercept, added to the readout's) are fitted
   by least squares on the overlap users' ratings from *cross-fitted* maps (each user's
   scores from a map fitted without them, so the weights are what the scores are worth for a
   new user); the item vectors ``q`` are learned on what is left, from the *generated*
   latents.

Model selection uses the validation cold users only: the item map's penalty, the generator's
checkpoint and guidance scale by the product's NDCG@10, the rating head's epoch by RMSE.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from torch.nn import functional as F

from models.diffusion import VectorDiffusion
from models.generator import LatentDecoder, LatentDenoiser, SourceEncoder
from pipeline.cdr import item_space
from pipeline.cdr.configs import OursConfig
from pipeline.cdr.methods import habits
from pipeline.cdr.methods.base import Factors, FitContext, Method, StepsSwitch
from pipeline.cdr.methods.baselines import source_habits
from pipeline.cdr.methods.item_models import select_penalty
from pipeline.cdr.training import EarlyStopping, minibatches, seed_everything
from pipeline.errors import PipelineError
from pipeline.recs.metrics import POSITIVE_RATING

SAMPLE_SEED = 1234  # generation noise: the same users get the same vectors on every run
TIMESTEPS = 1000  # DDPM training schedule, linear betas 1e-4..0.02 (DiffCDR's)
COND_DROP = 0.1  # overlap users trained unconditionally this often (classifier-free guidance)
ITEM_DROPOUT = 0.5  # source items dropped from the condition while training (Mult-DAE's rate)
DRAWS = 16  # samples averaged per user: their mean estimates E[z | condition]
GUIDANCE = (1.0, 2.0)  # classifier-free guidance scales tried on validation
CHECK_EVERY = 5  # epochs between validation checks
PATIENCE = 10  # checks without improvement before training stops
RATING_EPOCHS = 100  # most epochs of the rating head's item vectors
RATING_WEIGHT_DECAY = 1e-3
FOLDS = 5  # cross-fitting folds of the rating head's map weight
PAIR_CHUNK = 65_536  # (user, item) pairs scored at a time


def _user_noise(users: np.ndarray, draws: int, dim: int) -> torch.Tensor:
    """(draws * n, dim) starting noise, each user's own from its index: a user's vector does
    not depend on which other users are generated with it (chunking, fold-in). Draws come in
    antithetic pairs (e, -e): the mean of the samples then varies less around E[z | c]."""
    half = (draws + 1) // 2
    out = np.empty((2 * half, len(users), dim), np.float32)
    for j, u in enumerate(users.tolist()):
        e = np.random.default_rng([SAMPLE_SEED, u]).standard_normal((half, dim))
        out[:half, j], out[half:, j] = e, -e
    return torch.from_numpy(out[:draws].reshape(draws * len(users), dim))


def _pool(feats: np.ndarray, x: sp.csr_matrix) -> np.ndarray:
    """Mean feature vector of each row's items (zeros without any)."""
    counts = np.asarray(x.sum(1)).ravel()
    return np.asarray(x @ feats) / np.maximum(counts, 1)[:, None]


def _standardiser(item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (d,), covariance (d, d)) of the item rows: a user's scores ``item @ u`` have
    per-user standard deviation ``sqrt(u' C u)`` over the items."""
    mean = item.double().mean(0)
    centred = item.double() - mean
    return mean, centred.T @ centred / max(len(item), 1)


def _per_user_scale(user: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    var = ((user.double() @ cov) * user.double()).sum(1)
    return var.clamp_min(1e-18).rsqrt().float()[:, None]


def _map_vectors(history: sp.csr_matrix, src_map: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """An item map's user vectors for these source rows, scaled so that their scores over the
    map's items (covariance ``cov``) have unit spread."""
    user = torch.as_tensor(history @ src_map.numpy()).float()
    return user * _per_user_scale(user, cov)


class Ours(StepsSwitch, Method):
    name = "ours"
    config_name = "ours"  # ablations read the same params section
    saved_attributes = (
        "vocab",
        "inputs",
        "src_map",
        "map_items",
        "map_latent",
        "penalty",
        "guidance",
        "readout",
        "item_offset",
        "affinity",
        "taste",
    )
    shape_attributes = ("vocab", "inputs", "src_map", "map_items", "map_latent")
    drops_inputs: ClassVar[tuple[str, ...]] = ()  # ablations: condition inputs left out
    overrides: ClassVar[dict[str, Any]] = {}  # ablations: config fields changed

    def __init__(self, config: OursConfig | None = None):
        config = (config or OursConfig()).model_copy(update=self.overrides)
        if self.drops_inputs:
            kept = [c for c in config.condition if c not in self.drops_inputs]
            config = config.model_copy(update={"condition": kept})
        super().__init__(config)
        self.sample_steps = config.sample_steps
        self.guidance = 1.0
        self.readout: list[float] = []
        self.inputs: dict[str, int] | None = None  # condition input widths, by name
        self.affinity = 0.0  # the rating head's weight of the item map's score
        self.taste = 0.0  # its weight of the map's score of the user's centred ratings
        self.src_map = self.map_items = self.map_latent = self.item_offset = None
        self.penalty = self.unit = None  # the map's penalty and its unit (fit only)

    # ------------------------------------------------------------------ inputs
    def _dense_inputs(self, ctx: FitContext) -> dict[str, np.ndarray]:
        """Every user's dense condition inputs, by name (those configured and available)."""
        data, out = ctx.data, {}
        for name in (*self.config.condition, "item_map"):
            if name == "habits":
                if data.explicit:
                    out[name] = source_habits(ctx)
            elif name == "profile":
                out[name] = self._extra(ctx, "profile", "user_profiles")
            elif name == "item_map":
                if self.src_map is not None:
                    out[name] = (self.history @ self.src_map.numpy()) @ self.map_latent.numpy()
            else:  # liked_items
                feats = self._extra(ctx, "source_item_features", "item_features")
                liked = POSITIVE_RATING if data.explicit else None
                x = item_space.source_rows(
                    ctx.src, np.arange(data.n_users), data.n_src_items, liked=liked
                )
                out[name] = _pool(feats, x)
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}

    @staticmethod
    def _extra(ctx: FitContext, key: str, stage: str) -> np.ndarray:
        if key not in ctx.extra:
            raise PipelineError(
                f"train.ours.condition uses '{key}' but no {stage} store was given "
                f"(enable the {stage} stage or drop it from train.ours.condition)"
            )
        return np.asarray(ctx.extra[key])

    def _history(self, ctx: FitContext, users: np.ndarray) -> sp.csr_matrix:
        """Source rows of ``users`` over the vocabulary (the items overlap users had), scaled to
        unit length as the item map takes them (the encoder reads only which items)."""
        xs = item_space.source_rows(ctx.src, users, ctx.data.n_src_items)
        return item_space.map_rows(xs, self.vocab)

    def _taste(self, ctx: FitContext, users: np.ndarray, history: sp.csr_matrix) -> sp.csr_matrix:
        """The rating head's taste rows of ``users``: their source ratings minus their own
        mean rating, over the vocabulary, weighted as their map rows ``history`` (the
        ``_history`` of the same users: 1/sqrt(n) on the same items)."""
        centred = item_space.source_rows(ctx.src, users, ctx.data.n_src_items, centred=True)
        return history.multiply(item_space.restrict(centred, self.vocab)).tocsr()

    def _condition(self, users: np.ndarray, generator=None) -> torch.Tensor:
        """Encoder output (n, width) for ``users`` (rows of the context)."""
        x = self.history[users]
        n = np.diff(x.indptr)
        # 1/sqrt(n) in float64, not the history's float32 values: one ulp apart, and the
        # trained model (so every published figure) would move in its last digits.
        weights = np.repeat(1.0 / np.sqrt(np.maximum(n, 1)), n)
        idx = torch.as_tensor(users)
        return self.encoder(
            torch.as_tensor(x.indices, dtype=torch.long),
            torch.as_tensor(x.indptr[:-1], dtype=torch.long),
            torch.as_tensor(weights, dtype=torch.float32),
            {k: v[idx] for k, v in self.dense.items()},
            generator,
        )

    # ------------------------------------------------------------------ networks
    def build(self, ctx: FitContext) -> None:
        cfg = self.config
        self.history = self._history(ctx, np.arange(ctx.data.n_users))
        self.habit_x = source_habits(ctx) if ctx.data.explicit else None
        dense = self._dense_inputs(ctx)
        widths = {k: int(v.shape[1]) for k, v in dense.items()}
        if self.inputs is not None and widths != self.inputs:  # loading: the stores changed
            raise PipelineError(
                f"{self.name} was trained on the condition inputs {self.inputs} (name: width) "
                f"but this data gives {widths}: retrain it (dvc repro train) or score with "
                "the feature and profile stores it was trained on"
            )
        self.inputs = widths
        self.dense = {k: torch.as_tensor(v) for k, v in dense.items()}
        self.encoder = SourceEncoder(
            len(self.vocab),
            cfg.width,
            self.inputs,
            item_dropout=ITEM_DROPOUT,
        )
        self.denoiser = LatentDenoiser(cfg.latent_dim, cfg.width, deterministic=not cfg.diffusion)
        self.decoder = LatentDecoder(torch.zeros(ctx.data.n_tgt_items, cfg.latent_dim))
        self.rating_items = torch.nn.Embedding(ctx.data.n_tgt_items, cfg.latent_dim)
        torch.nn.init.zeros_(self.rating_items.weight)
        self.diffusion = VectorDiffusion(num_train_timesteps=TIMESTEPS, prediction_type="sample")

    def load_state_dict(self, ctx: FitContext, state: dict) -> None:
        super().load_state_dict(ctx, state)
        self._set_experts()

    # ------------------------------------------------------------------ generation
    def generate(self, users: np.ndarray, guidance: float | None = None) -> torch.Tensor:
        """Latents of ``users`` (rows of the context): the mean of ``DRAWS`` samples, or the
        regression for the deterministic twin."""
        users = np.asarray(users)
        n, dim = len(users), self.config.latent_dim
        with torch.no_grad():
            self.encoder.eval()
            self.denoiser.eval()
            cond = self._condition(users)
            if not self.config.diffusion:
                return self.denoiser(None, None, cond, torch.ones(n))
            noise = _user_noise(users, DRAWS, dim)
            z = self.diffusion.sample(
                self.denoiser,
                cond.repeat(DRAWS, 1),
                noise,
                guidance=self.guidance if guidance is None else guidance,
                steps=self.sample_steps,
            )
        return z.reshape(DRAWS, n, dim).mean(0)

    def _set_experts(self) -> None:
        """The item-side standardisers of the two ranking experts (after fit or load)."""
        self.gen_items = self.decoder.item_vectors().detach()
        self.gen_std = _standardiser(self.gen_items)[1]
        if self.src_map is not None:
            self.map_mean, self.map_std = _standardiser(self.map_items)

    def _map_user(self, ctx: FitContext, users: np.ndarray) -> torch.Tensor:
        """The item map's user vectors, scaled so that their scores have unit spread."""
        return _map_vectors(self._history(ctx, users), self.src_map, self.map_std)

    def ranking_factors(self, ctx: FitContext, users: np.ndarray, guidance=None) -> Factors:
        z = self.generate(users, guidance)
        user = torch.cat([z, torch.ones(len(z), 1)], 1)
        user = user * _per_user_scale(user, self.gen_std)
        item = self.gen_items
        if self.src_map is not None:
            user = torch.cat([user, self._map_user(ctx, users)], 1)
            item = torch.cat([item, self.map_items], 1)
        return Factors(user, item)

    def rating_factors(self, ctx: FitContext, users: np.ndarray) -> Factors | None:
        if not ctx.data.explicit:
            return None
        bias = habits.apply_readout(self.habit_x[users], self.readout)
        n, m = len(users), ctx.data.n_tgt_items
        weights = self.rating_items.weight.detach()
        # Validation kept the interaction at zero (its epoch 0): no need to generate.
        z = self.generate(users) if weights.any() else torch.zeros(n, weights.shape[1])
        user = torch.cat(
            [z, torch.as_tensor(bias, dtype=torch.float32)[:, None], torch.ones(n, 1)], 1
        )
        item = torch.cat([weights, torch.ones(m, 1), self.item_offset[:, None]], 1)
        if self.src_map is not None:
            # a * m_ui + b * t_ui: the map's score (standardised) and its taste score, both
            # centred over the items
            history = self._history(ctx, users)  # built once for both scores
            taste = torch.as_tensor(self._taste(ctx, users, history) @ self.src_map.numpy())
            scaled = _map_vectors(history, self.src_map, self.map_std)  # as _map_user
            centred = self.map_items - self.map_mean.float()
            user = torch.cat([user, self.affinity * scaled, self.taste * taste.float()], 1)
            item = torch.cat([item, centred, centred], 1)
        return Factors(user, item)

    # ------------------------------------------------------------------ training
    def fit(self, ctx: FitContext) -> None:
        cfg, data = self.config, ctx.data
        seed_everything(ctx.seed + 31)
        self.info = {}
        overlap = data.users("train_overlap")
        side = data.users("side")
        self.vocab = item_space.vocabulary(
            item_space.source_rows(ctx.src, overlap, data.n_src_items)
        )
        basis, latents = self._fit_autoencoder(ctx, overlap, ctx.seed)
        if cfg.item_map:
            self._fit_item_map(ctx, overlap)
            # The map's scores seen through the autoencoder: a latent the generator starts from.
            self.map_latent = self.map_items.T @ basis / basis.pow(2).sum(0).clamp_min(1e-12)
        self.inputs = None  # sized by build from this data's condition inputs
        self.build(ctx)
        with torch.no_grad():
            self.decoder.basis.copy_(basis)
            # Softmax over the catalogue: scores of a normalised row are ~1/sqrt(n) apart;
            # a temperature of 10 starts the task loss in a useful range (then learned).
            self.decoder.log_temperature.fill_(float(np.log(10.0)))
        self._fit_generator(ctx, overlap, side if cfg.side_users else overlap[:0], latents)
        if data.explicit:
            self._fit_rating_head(ctx, overlap)

    def _fit_autoencoder(
        self, ctx: FitContext, overlap: np.ndarray, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(decoder basis (n_items, dim), every user's target latent (n_users, dim)) from the
        overlap users' target rows."""
        dim = self.config.latent_dim
        xt = item_space.normalise_rows(
            item_space.target_rows(ctx.data, np.arange(ctx.data.n_users))
        )
        _, _, v = item_space.truncated_svd(xt[overlap], dim, seed)
        basis = np.zeros((ctx.data.n_tgt_items, dim))
        basis[:, : v.shape[1]] = v  # fewer overlap users than dimensions: zero columns
        z = np.asarray(xt @ basis)
        scale = float(z[overlap].std()) or 1.0
        latents = torch.as_tensor(z / scale, dtype=torch.float32)
        return torch.as_tensor(basis * scale, dtype=torch.float32), latents

    def _fit_item_map(self, ctx: FitContext, overlap: np.ndarray) -> None:
        xs = self._history(ctx, overlap)
        xt = item_space.target_rows(ctx.data, overlap)
        basis = item_space.RidgeBasis.fit(xs, xt, self.config.rank, ctx.seed)
        valid = self._history(ctx, ctx.data.cold_users("valid"))
        self.penalty, tried = select_penalty(ctx, basis, valid)
        self.unit = basis.mean_diagonal
        self.src_map, self.map_items = basis.factors(self.penalty)
        self.map_mean, self.map_std = _standardiser(self.map_items)
        self.info["item_map"] = {
            "rank": int(basis.singular.size),
            "valid_ndcg@10": tried[self.penalty],
        }

    def _fit_generator(
        self, ctx: FitContext, overlap: np.ndarray, side: np.ndarray, latents: torch.Tensor
    ) -> None:
        cfg = self.config
        gen = torch.Generator().manual_seed(ctx.seed + 37)
        # The twin is a plain regressor: it learns from the overlap users alone.
        # Overlap users first: a row is an overlap user's when its index is below len(overlap).
        users = np.concatenate([overlap, side]) if cfg.diffusion else overlap
        rows = item_space.target_rows(ctx.data, users)  # the task loss's targets, sparse
        params = [
            *self.encoder.parameters(),
            *self.denoiser.parameters(),
            *self.decoder.parameters(),
        ]
        opt = torch.optim.Adam(params, lr=cfg.lr)
        valid = ctx.data.cold_users("valid")
        stop = EarlyStopping(PATIENCE, "max")
        guidances = GUIDANCE if cfg.diffusion else (1.0,)
        self._set_experts()
        draw = np.random.default_rng(ctx.seed + 47)
        for epoch in range(1, cfg.epochs + 1):
            self.encoder.train()
            self.denoiser.train()
            take = _epoch_rows(len(overlap), len(users) - len(overlap), draw)
            for batch in minibatches(len(take), cfg.batch_size, gen):
                b = take[batch.numpy()]
                is_overlap = torch.as_tensor(b < len(overlap))
                loss = self._generator_loss(users[b], is_overlap, latents, rows[b], gen)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if epoch % CHECK_EVERY and epoch != cfg.epochs:
                continue
            self._set_experts()
            scores = {w: ctx.ndcg(self.ranking_factors(ctx, valid, w)) for w in guidances}
            w = max(scores, key=scores.get)
            state = {
                "encoder": self.encoder.state_dict(),
                "denoiser": self.denoiser.state_dict(),
                "decoder": self.decoder.state_dict(),
                "guidance": w,
            }
            if stop.step(scores[w], epoch, state):
                break
        best = stop.best_state
        self.encoder.load_state_dict(best["encoder"])
        self.denoiser.load_state_dict(best["denoiser"])
        self.decoder.load_state_dict(best["decoder"])
        self.guidance = best["guidance"]
        self._set_experts()
        self.info.update(
            epoch=stop.best_epoch, guidance=self.guidance, **{"valid_ndcg@10": stop.best}
        )

    def _generator_loss(
        self,
        users: np.ndarray,
        overlap: torch.Tensor,
        latents: torch.Tensor,
        targets: sp.csr_matrix,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """One batch: the denoising loss on every row (overlap users conditional, side users
        and ``COND_DROP`` of the overlap users unconditional), plus the task loss on what
        generation returns for the conditional rows: the solver runs from noise *with*
        gradients, so the whole sampling chain learns the ranking, not one output layer.
        The twin regresses the overlap users' latents, with the same task loss."""
        z0 = latents[torch.as_tensor(users)]
        cond = self._condition(users, gen)
        if self.config.diffusion:
            keep = overlap & (torch.rand(len(users), generator=gen) >= COND_DROP)
            t = self.diffusion.sample_timesteps(len(users), gen)
            z_t, _ = self.diffusion.add_noise(z0, t, gen)
            loss = F.mse_loss(self.denoiser(z_t, t, cond, keep.float()), z0)
            noise = torch.randn(int(keep.sum()), z0.shape[1], generator=gen)
            z_hat = self.diffusion.sample(
                self.denoiser, cond[keep], noise, guidance=1.0, steps=self.sample_steps
            )
        else:  # every row is an overlap user (see _fit_generator)
            keep = overlap
            z_hat = self.denoiser(None, None, cond, torch.ones(len(users)))
            loss = F.mse_loss(z_hat, z0)
        if keep.any():
            y = torch.as_tensor(targets[keep.numpy()].toarray())
            loss = loss - (torch.log_softmax(self.decoder(z_hat), 1) * y).sum(1).mean()
        return loss

    def _fit_rating_head(self, ctx: FitContext, overlap: np.ndarray) -> None:
        """Habit readout (closed form), shrunk item means, the weights of the map's two scores
        (closed form, cross-fitted), then the item vectors ``q`` on the overlap users' residual
        ratings from their generated latents; epoch by valid RMSE."""
        data = ctx.data
        tr = data.tgt_train
        offset, strength = shrunk_item_means(ctx)
        self.item_offset = torch.as_tensor(offset, dtype=torch.float32)
        self.readout = habits.fit_readout(self.habit_x, tr, overlap, prior_strength=strength)
        keep = np.isin(tr.user, overlap)
        pos = np.searchsorted(overlap, tr.user[keep])
        z = self.generate(overlap)
        bias = habits.apply_readout(self.habit_x[overlap], self.readout)
        item = torch.as_tensor(tr.item[keep])
        resid = tr.rating[keep] - self.item_offset.numpy()[tr.item[keep]] - bias[pos]
        if self.src_map is not None:
            score, taste = self._cross_fitted_scores(ctx, overlap, pos, tr.item[keep])
            # Against the leave-one-out offsets, as the readout: a rating never explains itself.
            loo = tr.rating[keep] - habits.others_mean(tr, keep, strength) - bias[pos]
            # With an intercept: the rated items are the map's likely picks, so their mean
            # score is above 0 and a weight alone would also shift every prediction up.
            design = np.stack([score, taste, np.ones_like(score)], 1)
            weight, taste_weight, shift = np.linalg.lstsq(design, loo, rcond=None)[0]
            self.affinity, self.taste = float(weight), float(taste_weight)
            self.readout = [*self.readout[:-1], round(self.readout[-1] + float(shift), 6)]
            resid = resid - self.affinity * score - self.taste * taste - shift
        resid = torch.as_tensor(resid, dtype=torch.float32)
        row = torch.as_tensor(pos)
        gen = torch.Generator().manual_seed(ctx.seed + 41)
        opt = torch.optim.Adam(
            self.rating_items.parameters(), lr=self.config.lr, weight_decay=RATING_WEIGHT_DECAY
        )
        valid = data.cold_users("valid")

        def valid_rmse() -> float:
            return ctx.rating_metrics(self.rating_factors(ctx, valid), "valid")["rmse"]

        stop = EarlyStopping(PATIENCE, "min")
        stop.step(valid_rmse(), 0, self.rating_items.state_dict())  # q = 0: no interaction
        for epoch in range(1, RATING_EPOCHS + 1):
            for batch in minibatches(len(resid), 1024, gen):
                pred = (z[row[batch]] * self.rating_items(item[batch])).sum(1)
                loss = F.mse_loss(pred, resid[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if stop.step(valid_rmse(), epoch, self.rating_items.state_dict()):
                break
        self.rating_items.load_state_dict(stop.best_state)
        self.info["rating"] = {
            "map_weight": self.affinity,
            "taste_weight": self.taste,
            "epoch": stop.best_epoch,
            "valid_rmse": stop.best,
        }

    def _cross_fitted_scores(
        self, ctx: FitContext, overlap: np.ndarray, pos: np.ndarray, items: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(the centred, standardised map score, the centred taste score) of each (overlap user
        ``pos``, target item) pair, from the map fitted on the other ``FOLDS - 1`` folds of
        users (same relative penalty)."""
        xs = self._history(ctx, overlap)
        taste = self._taste(ctx, overlap, xs)
        xt = item_space.target_rows(ctx.data, overlap)
        fold = np.random.default_rng(ctx.seed + 43).permutation(len(overlap)) % FOLDS
        out = np.zeros((2, len(pos)))
        for f in range(FOLDS):
            held = fold == f
            if not held.any() or held.all():
                continue
            basis = item_space.RidgeBasis.fit(xs[~held], xt[~held], self.config.rank, ctx.seed)
            # The same penalty relative to the Gram's mean diagonal, which shrinks with the fold.
            src_map, map_items = basis.factors(self.penalty * basis.mean_diagonal / self.unit)
            mean, cov = _standardiser(map_items)
            centred = map_items - mean.float()
            users = (
                _map_vectors(xs[held], src_map, cov),
                torch.as_tensor(taste[held] @ src_map.numpy()).float(),
            )
            row = (np.cumsum(held) - 1)[pos]  # position among the fold's users
            todo = np.flatnonzero(held[pos])
            for k, user in enumerate(users):
                factors = Factors(user, centred)
                for lo in range(0, len(todo), PAIR_CHUNK):  # (chunk, rank) at a time
                    part = todo[lo : lo + PAIR_CHUNK]
                    out[k, part] = factors.pairs(row[part], items[part])
        return out[0], out[1]


def _epoch_rows(n_overlap: int, n_side: int, draw: np.random.Generator) -> np.ndarray:
    """One epoch's training rows: every overlap user (rows ``0..n_overlap-1``) and at most as
    many side users (the rows after them), a fresh draw each epoch, so that the unconditional
    branch never outweighs the conditional one. With 17,504 side users against 154 overlap
    users it would otherwise take 99 % of every epoch; all of them still take turns."""
    rows = np.arange(n_overlap + n_side)
    if n_side <= n_overlap:
        return rows
    side = n_overlap + np.sort(draw.choice(n_side, n_overlap, replace=False))
    return np.concatenate([rows[:n_overlap], side])


def shrunk_item_means(ctx: FitContext) -> tuple[np.ndarray, float]:
    """(item means, k): target item means shrunk towards the global mean by empirical Bayes: an item with ``n``
    ratings keeps ``n / (n + k)`` of its deviation, ``k`` = within-item variance / variance of
    the true item means (method of moments over the visible ratings), so the strength of the
    shrinkage is read from the data, not chosen."""
    tr = ctx.data.tgt_train
    n = ctx.item_count
    resid = tr.rating - ctx.item_mean[tr.item]
    dof = float((n[n > 0] - 1).sum())
    within = float((resid**2).sum()) / max(dof, 1.0)
    rated = n > 0
    spread = float(((ctx.item_mean[rated] - ctx.global_mean) ** 2).mean())
    between = max(spread - within * float((1.0 / n[rated]).mean()), 1e-6)
    k = within / between
    return ctx.global_mean + (ctx.item_mean - ctx.global_mean) * n / (n + k), k


def _ablation(name: str, doc: str, drops: tuple[str, ...] = (), **overrides) -> type[Ours]:
    cls_name = "".join(part.capitalize() for part in name.split("_"))
    return type(
        cls_name,
        (Ours,),
        {"name": name, "__doc__": doc, "drops_inputs": drops, "overrides": overrides},
    )


ABLATIONS: tuple[type[Ours], ...] = (
    _ablation(
        "ours_deterministic",
        "ours with the generator trained as a plain regressor of the latent (no diffusion).",
        diffusion=False,
    ),
    _ablation("ours_no_item_map", "ours ranking with the generator alone.", item_map=False),
    _ablation("ours_no_side_users", "ours without target-only users.", side_users=False),
    _ablation("ours_no_profile", "ours without the LLM profile input.", ("profile",)),
    _ablation(
        "ours_no_item_features", "ours without the liked-item features input.", ("liked_items",)
    ),
)
