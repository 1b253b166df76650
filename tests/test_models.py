"""models/: golden numbers on tiny fixed inputs (as diffusers' tests pin sampler outputs), and
the small contracts each network states. A change here is a change of every trained model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.denoisers import LinearDenoiser, timestep_embedding
from models.diffusion import VectorDiffusion
from models.generator import LatentDecoder, LatentDenoiser, SourceEncoder
from models.mapping import MetaBridge
from models.mf import BiasedMF

NOISE = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
COND = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))


def test_latent_denoiser_dpmsolver_sample_is_pinned():
    torch.manual_seed(0)
    net = LatentDenoiser(4, 8)
    diffusion = VectorDiffusion(num_train_timesteps=1000, prediction_type="sample")
    with torch.no_grad():
        z = diffusion.sample(net, COND, NOISE, guidance=1.5, steps=10)
    expected = [
        [1.092065, 0.567195, 0.388265, 0.04153],
        [0.661163, 0.163542, 0.308442, -0.128078],
        [0.469722, -0.40964, 0.188941, 0.77217],
    ]
    np.testing.assert_allclose(z.numpy(), expected, atol=2e-5)


def test_diffcdr_linear_denoiser_third_order_sample_is_pinned():
    torch.manual_seed(0)
    net = LinearDenoiser(4, 4, hidden=8)
    diffusion = VectorDiffusion(num_train_timesteps=1000)  # epsilon prediction
    with torch.no_grad():
        z = diffusion.sample(net, COND[:, :4], NOISE, guidance=2.0, steps=10, order=3)
    expected = [
        [238.77298, -27.460535, -81.46994, 77.77439],
        [219.009613, -33.304111, -246.442826, 126.178246],
        [-48.357246, -117.007607, -102.343262, 100.287651],
    ]
    np.testing.assert_allclose(z.numpy(), expected, rtol=1e-5)


def test_forward_noising_follows_the_linear_schedule():
    diffusion = VectorDiffusion(num_train_timesteps=1000, prediction_type="sample")
    x0 = torch.ones(2, 4)
    xt, noise = diffusion.add_noise(x0, torch.tensor([0, 999]), torch.Generator().manual_seed(3))
    # alpha_bar_0 = 1 - 1e-4; alpha_bar_999 = prod(1 - linspace(1e-4, 0.02, 1000))
    betas = np.linspace(1e-4, 0.02, 1000)
    for row, a in ((0, 1 - betas[0]), (1, np.prod(1 - betas))):
        expected = math.sqrt(a) * x0[row] + math.sqrt(1 - a) * noise[row]
        torch.testing.assert_close(xt[row], expected.float(), rtol=1e-5, atol=1e-6)


def test_timestep_embedding_by_hand():
    emb = timestep_embedding(torch.tensor([0, 3]), 6)
    # frequencies exp(-ln(10000) * k / 2) for k = 0, 1, 2: 1, 0.01, 1e-4
    freqs = np.array([1.0, 0.01, 1e-4])
    expected = np.concatenate([np.sin(3 * freqs), np.cos(3 * freqs)])
    np.testing.assert_allclose(emb[0].numpy(), [0, 0, 0, 1, 1, 1], atol=1e-7)
    np.testing.assert_allclose(emb[1].numpy(), expected, rtol=1e-5, atol=1e-7)


def test_latent_denoiser_null_condition_and_deterministic_twin():
    torch.manual_seed(0)
    net = LatentDenoiser(4, 8)
    z, t = torch.randn(3, 4), torch.tensor([5, 500, 999])
    # keep = 0 ignores the condition entirely (the unconditional branch).
    torch.testing.assert_close(net(z, t, COND, torch.zeros(3)), net(z, t, None, torch.zeros(3)))
    twin = LatentDenoiser(4, 8, deterministic=True)
    out = twin(None, None, COND, torch.ones(3))
    torch.testing.assert_close(out, twin.out(torch.tanh(COND)))


def test_source_encoder_is_a_weighted_sum_of_item_vectors():
    torch.manual_seed(0)
    enc = SourceEncoder(10, 4, {"profile": 3}, item_dropout=0.5).eval()
    items, offsets = torch.tensor([1, 4, 4, 7]), torch.tensor([0, 2])
    weights = torch.tensor([0.5, 0.5, 1.0, 1.0])
    profile = torch.randn(2, 3)
    out = enc(items, offsets, weights, {"profile": profile})
    w = enc.items.weight
    rows = torch.stack([0.5 * w[1] + 0.5 * w[4], w[4] + w[7]])
    torch.testing.assert_close(out, rows + enc.bias + enc.dense["profile"](profile))
    # In training, items are dropped and the kept ones scaled up (inverted dropout).
    enc.train()
    gen = torch.Generator().manual_seed(0)
    dropped = enc(items, offsets, weights, {"profile": profile}, gen)
    assert not torch.allclose(dropped, out)


def test_latent_decoder_item_vectors_reproduce_its_scores():
    basis = torch.randn(7, 4)
    dec = LatentDecoder(basis)
    with torch.no_grad():
        dec.bias.copy_(torch.randn(7))
        dec.log_temperature.fill_(0.3)
    z = torch.randn(2, 4)
    user = torch.cat([z, torch.ones(2, 1)], 1)
    torch.testing.assert_close(user @ dec.item_vectors().T, dec(z))


def test_biased_mf_is_the_sum_it_says():
    mf = BiasedMF(3, 4, 2, global_mean=3.5)
    u, i = torch.tensor([0, 2]), torch.tensor([1, 3])
    expected = (
        3.5 + mf.user_bias(u)[:, 0] + mf.item_bias(i)[:, 0] + (mf.user(u) * mf.item(i)).sum(1)
    )
    torch.testing.assert_close(mf(u, i), expected)


def test_meta_bridge_ignores_padding():
    torch.manual_seed(0)
    bridge = MetaBridge(item_dim=5, src_dim=3, out_dim=3)
    items = torch.randn(1, 4, 5)
    mask = torch.tensor([[True, True, False, False]])
    src = torch.randn(1, 3)
    a = bridge(items, mask, src)
    items2 = items.clone()
    items2[0, 2:] = 99.0  # padded slots may hold anything
    torch.testing.assert_close(a, bridge(items2, mask, src))
    with pytest.raises(RuntimeError):
        bridge(items, mask[:, :3], src)  # a mask of the wrong length is an error, not a guess
