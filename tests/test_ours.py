"""'ours': trains on the tiny project, generates per user (independent of the batch), saves
and reloads to the same scores, uses the feature-store inputs, and its parts do what the
model's description says (task loss through the sampler, per-user standardised experts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.cdr import harness, store
from pipeline.cdr.configs import MFConfig, OursConfig, TrainParams
from pipeline.cdr.methods import METHODS
from pipeline.cdr.methods.ours import Ours, _epoch_rows, _per_user_scale, _standardiser
from pipeline.errors import PipelineError
from tests.conftest import TINY_MF

FAST = OursConfig(epochs=10, width=32, latent_dim=16, rank=32, sample_steps=4, condition=["habits"])
FEATURES = FAST.model_copy(update={"condition": ["liked_items", "profile", "habits"]})


@pytest.fixture(scope="module")
def extra(tiny_data):
    rng = np.random.default_rng(0)
    return {
        "profile": rng.normal(size=(tiny_data.n_users, 12)).astype(np.float32),
        "source_item_features": rng.normal(size=(tiny_data.n_src_items, 10)).astype(np.float32),
    }


def fit(data, base, names, config=FAST, extra=None, seed=0):
    return harness.fit(
        data, names, {"ours": config}, MFConfig(**TINY_MF), seed, extra=extra, base=base
    )


@pytest.fixture(scope="module")
def fitted(tiny_data, tiny_base, extra):
    return fit(tiny_data, tiny_base, ["popularity", "habit_bias", "ours"], FEATURES, extra)


def test_trains_generates_and_scores_every_cold_user(fitted, tiny_data):
    ours: Ours = fitted.methods["ours"]
    valid = tiny_data.cold_users("valid")
    z = ours.generate(valid)
    assert z.shape == (len(valid), FAST.latent_dim) and torch.isfinite(z).all()
    results = harness.evaluate(fitted, "test")
    assert results["ours"]["ranked_users"] == results["popularity"]["ranked_users"] > 0
    assert results["ours"]["rmse"] is not None and results["ours"]["mae"] <= results["ours"]["rmse"]
    assert {"item_map", "epoch", "guidance", "valid_ndcg@10", "rating"} <= set(ours.info)
    # The ranking uses the target items: shuffling them costs validation NDCG.
    ctx = fitted.ctx
    f = ours.ranking_factors(ctx, valid)
    shuffle = torch.as_tensor(np.random.default_rng(0).permutation(tiny_data.n_tgt_items))
    assert ctx.ndcg(f) > ctx.ndcg(type(f)(f.user, f.item[shuffle])) + 0.05
    # Predictions stay on the data's rating scale after clipping; the head is finite.
    ratings = ours.rating_factors(ctx, valid).scores()
    assert torch.isfinite(ratings).all()


def test_a_users_vector_does_not_depend_on_the_batch(fitted, tiny_data):
    ours = fitted.methods["ours"]
    users = tiny_data.cold_users("test")[:8]
    together = ours.ranking_factors(fitted.ctx, users).user
    alone = torch.cat([ours.ranking_factors(fitted.ctx, users[i : i + 1]).user for i in range(8)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def save_and_load(fitted, data, extra, path):
    store.save(fitted, path, {"seed": 0})
    train = TrainParams(
        methods=["popularity", "habit_bias", "ours"], base=MFConfig(**TINY_MF), ours=FEATURES
    )
    return store.load(path, data, train, extra)


def test_save_and_load_give_the_same_lists_and_ratings(fitted, tiny_data, extra, tmp_path):
    loaded = save_and_load(fitted, tiny_data, extra, tmp_path / "models")
    users = tiny_data.cold_users("test")
    a, b = fitted.methods["ours"], loaded.methods["ours"]
    torch.testing.assert_close(
        a.ranking_factors(fitted.ctx, users).scores(), b.ranking_factors(loaded.ctx, users).scores()
    )
    torch.testing.assert_close(
        a.rating_factors(fitted.ctx, users).scores(), b.rating_factors(loaded.ctx, users).scores()
    )


def test_loading_with_a_store_of_another_width_names_the_input(fitted, tiny_data, extra, tmp_path):
    wider = {**extra, "profile": np.zeros((tiny_data.n_users, 16), dtype=np.float32)}
    with pytest.raises(PipelineError, match=r"'profile': 12.*'profile': 16.*retrain"):
        save_and_load(fitted, tiny_data, wider, tmp_path / "models")


def test_same_seed_same_model(tiny_data, tiny_base):
    a = harness.evaluate(fit(tiny_data, tiny_base, ["ours"]), "valid")["ours"]
    b = harness.evaluate(fit(tiny_data, tiny_base, ["ours"]), "valid")["ours"]
    for key in ("mae", "rmse", "ndcg@10", "hit@20"):
        assert a[key] == b[key], key


def test_feature_inputs_reach_the_generator(fitted, tiny_data, extra):
    ours = fitted.methods["ours"]
    assert set(ours.inputs) == {"liked_items", "profile", "habits", "item_map"}
    users = tiny_data.cold_users("valid")[:4]
    before = ours.generate(users)
    saved = ours.dense["profile"]
    ours.dense["profile"] = saved[
        torch.randperm(len(saved), generator=torch.Generator().manual_seed(0))
    ]
    try:
        assert not torch.allclose(before, ours.generate(users))
    finally:
        ours.dense["profile"] = saved


def test_a_condition_without_its_store_fails_with_the_stage_named(tiny_data, tiny_base):
    with pytest.raises(PipelineError, match="user_profiles"):
        fit(tiny_data, tiny_base, ["ours"], FAST.model_copy(update={"condition": ["profile"]}))


def test_the_task_loss_reaches_the_denoiser_through_the_sampler(fitted, tiny_data):
    ours = fitted.methods["ours"]
    users = tiny_data.users("train_overlap")[:16]
    latents = torch.zeros(tiny_data.n_users, FAST.latent_dim)  # denoising target: zeros
    from pipeline.cdr import item_space

    targets = item_space.target_rows(tiny_data, users)
    ours.denoiser.zero_grad()
    gen = torch.Generator().manual_seed(0)
    # With COND_DROP the rows kept conditional are random: every row is overlap here.
    loss = ours._generator_loss(users, torch.ones(16, dtype=torch.bool), latents, targets, gen)
    loss.backward()
    assert ours.denoiser.out.weight.grad.abs().sum() > 0
    # The task part alone (denoising target = the denoiser's own prediction would zero the
    # MSE) still moves the time embedding, which only the sampler path feeds at every step.
    assert ours.denoiser.time.weight.grad.abs().sum() > 0


def test_experts_are_standardised_per_user():
    rng = np.random.default_rng(0)
    item = torch.as_tensor(rng.normal(size=(50, 6)), dtype=torch.float32)
    user = torch.as_tensor(rng.normal(size=(7, 6)), dtype=torch.float32)
    scaled = user * _per_user_scale(user, _standardiser(item)[1])
    scores = (scaled @ item.T).double()
    torch.testing.assert_close(scores.std(1, unbiased=False), torch.ones(7, dtype=torch.double))


@pytest.mark.parametrize("name", ["ours_deterministic", "ours_no_item_map", "ours_no_side_users"])
def test_ablations_train_and_differ_where_they_should(fitted, tiny_data, tiny_base, name):
    ablation = fit(tiny_data, tiny_base, [name])
    method = ablation.methods[name]
    assert isinstance(method, METHODS["ours"])
    users = tiny_data.cold_users("valid")[:5]
    width = method.ranking_factors(ablation.ctx, users).user.shape[1]
    if name == "ours_no_item_map":
        assert method.src_map is None and width == FAST.latent_dim + 1
    else:
        assert width == FAST.latent_dim + 1 + int(method.src_map.shape[1])
    if name == "ours_deterministic":
        assert not method.config.diffusion and method.guidance == 1.0
    # The latent space is the overlap users' alone: side users train only the generator.
    torch.testing.assert_close(method.decoder.basis, fitted.methods["ours"].decoder.basis)


def test_a_batch_of_side_users_alone_still_trains_the_unconditional_branch(fitted, tiny_data):
    """Side users far outnumber overlap users on real data (CDRIB: 11 to 1), so whole batches
    hold no overlap user: the denoising loss alone must still be a loss with gradients."""
    ours = fitted.methods["ours"]
    side = tiny_data.users("side")[:8]
    assert len(side) == 8
    from pipeline.cdr import item_space

    targets = item_space.target_rows(tiny_data, side)
    latents = torch.zeros(tiny_data.n_users, FAST.latent_dim)
    gen = torch.Generator().manual_seed(0)
    loss = ours._generator_loss(side, torch.zeros(8, dtype=torch.bool), latents, targets, gen)
    loss.backward()
    assert ours.denoiser.null.grad is not None and ours.denoiser.null.grad.abs().sum() > 0


def test_an_epoch_takes_at_most_as_many_side_users_as_overlap_users():
    """Side users train the unconditional branch; with thousands of them against a few hundred
    overlap users an epoch holds every overlap user and an equal draw of side users, a fresh
    one each epoch, so every side user still takes turns."""
    draw = np.random.default_rng(0)
    epochs = [_epoch_rows(10, 200, draw) for _ in range(300)]
    for rows in epochs:
        assert rows[:10].tolist() == list(range(10)) and len(rows) == 20
        assert len(set(rows[10:].tolist())) == 10 and rows[10:].min() >= 10
    assert len({tuple(r) for r in epochs}) > 1
    assert set(np.concatenate(epochs).tolist()) == set(range(210))
    # as many side users as overlap users or fewer (the dense data, the embedded sample): all
    assert _epoch_rows(10, 10, draw).tolist() == list(range(20))
    assert _epoch_rows(10, 0, draw).tolist() == list(range(10))


def _rating_head_alone(rows: list[tuple], roles: dict[str, str]):
    """(data, fitted ours, the test users' predicted ratings over every target item) from
    (user, item, domain, rating) rows, with the generated latent's term zeroed: what the
    head's closed-form terms predict."""
    import polars as pl

    from pipeline.cdr import data as cdr_data
    from pipeline.cdr.base import fit_base_models

    inter = pl.DataFrame(rows, schema=["user_id", "item_id", "domain", "rating"], orient="row")
    table = pl.DataFrame({"user_id": list(roles), "role": list(roles.values())})
    data = cdr_data.build(inter, table, "src", "tgt")
    base = fit_base_models(data, MFConfig(**TINY_MF), 0)
    fitted = fit(data, base, ["ours"])
    ours = fitted.methods["ours"]
    with torch.no_grad():
        ours.rating_items.weight.zero_()
    scores = ours.rating_factors(fitted.ctx, data.cold_users("test")).scores().numpy()
    return data, ours, scores


def test_the_rating_head_carries_taste_not_only_generosity():
    """Two taste groups that rate alike on average: group A likes the A movies (5) and dislikes
    the few B movies it watches (2), group B the reverse. Item means and rating habits are the
    same for everyone, so only the item map's score can tell a cold user's A movies from their
    B movies; the head must learn a positive weight for it from the training users."""
    rows, roles = [], {}
    for u in range(160):
        group, other = ("a", "b") if u % 2 else ("b", "a")
        user = f"u{u:03d}"
        roles[user] = "train_overlap" if u < 120 else ("valid_cold" if u < 140 else "test_cold")
        rows += [(user, f"s{group}{i}", "src", 4.0) for i in range(5) if (u + i) % 5]
        rows += [(user, f"t{group}{i}", "tgt", 5.0) for i in range(6) if (u + i) % 6]
        rows += [(user, f"t{other}{i}", "tgt", 2.0) for i in range(6) if (u + i) % 3 == 0]
    data, ours, scores = _rating_head_alone(rows, roles)
    assert ours.info["rating"]["map_weight"] > 0
    test = data.cold_users("test")
    own = np.array(
        [
            [i.startswith("ta") == (int(u[1:]) % 2 == 1) for i in data.tgt_item_ids]
            for u in data.user_ids[test]
        ]
    )
    # Every cold user's own-taste movies are predicted above their other-taste movies.
    assert (
        scores[own].reshape(len(test), -1).min(1) > scores[~own].reshape(len(test), -1).max(1)
    ).all()


def test_the_rating_head_reads_taste_from_how_source_items_were_rated():
    """Two taste groups that watch the same kinds of items: each user watches 6 of 10 paired
    titles (a source item and its target counterpart, which go together), half of them A
    titles, half B. Group A rates A titles 5 and B titles 2, group B the reverse. Which items a
    user had says nothing of the group, and item means and rating habits are the same for
    both, so only *how* the user rated their source items tells which of their target
    counterparts they will like: the head must learn a positive weight for that score."""
    rng = np.random.default_rng(0)
    rows, roles, watched = [], {}, {}
    for u in range(200):
        user, likes_a = f"u{u:03d}", bool(u % 2)
        roles[user] = "train_overlap" if u < 150 else ("valid_cold" if u < 170 else "test_cold")
        titles = [f"a{i}" for i in rng.choice(5, 3, replace=False)]
        titles += [f"b{i}" for i in rng.choice(5, 3, replace=False)]
        watched[user] = titles
        for title in titles:
            rating = 5.0 if title.startswith("a") == likes_a else 2.0
            rows += [(user, f"s{title}", "src", rating), (user, f"t{title}", "tgt", rating)]
    data, ours, scores = _rating_head_alone(rows, roles)
    assert ours.info["rating"]["taste_weight"] > 0
    test = data.cold_users("test")
    column = {item: j for j, item in enumerate(data.tgt_item_ids)}
    for row, user in enumerate(data.user_ids[test]):
        likes_a = bool(int(user[1:]) % 2)
        own = [column[f"t{t}"] for t in watched[user] if t.startswith("a") == likes_a]
        other = [column[f"t{t}"] for t in watched[user] if t.startswith("a") != likes_a]
        # The counterparts of the titles they rated 5 are predicted above those they rated 2.
        assert scores[row, own].min() > scores[row, other].max(), user
