"""The peers of the benchmarks (``benchmarks/peers.py``).

The k-diffusion adapter and the shared helpers need neither peer; the diffusers peer (trains,
samples, has our size) is tested where diffusers is installed.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys

import pytest
import torch

from benchmarks import peers
from helpers import SDES
from sde_gen import VESDE, VPSDE, GaussianMixture
from sde_gen.data.toy2d import Toy2D

F64 = torch.float64
needs_diffusers = pytest.mark.skipif(importlib.util.find_spec("diffusers") is None,
                                     reason="diffusers (the bench extra) is not installed")


@pytest.mark.parametrize("name", list(SDES))
def test_kdiffusion_denoiser_is_the_oracle_x0(name):
    # k-diffusion's state x_ve = x_t / alpha_t at noise level sigma_t / alpha_t must give the
    # exact x0 of the mixture, from the eps oracle (Tweedie) and from the x0 oracle alike.
    sde = {**SDES, "ve": lambda: VESDE(sigma_max=15.0)}[name]()
    gm = GaussianMixture(torch.tensor([[1.0, -0.5], [-1.0, 0.8]], dtype=F64),
                         torch.tensor([[0.2, 0.3], [0.4, 0.1]], dtype=F64),
                         torch.tensor([0.4, 0.6], dtype=F64))
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0.05, 0.95, 6, dtype=F64)
    x_t = 2 * torch.randn(6, 2, generator=g, dtype=F64)
    alpha_t, sigma_t = sde.marginal_coeffs(t)
    x_ve, sigma = x_t / alpha_t[:, None], sigma_t / alpha_t
    want = gm.denoise(x_t, t, sde)
    from_eps = peers.kdiffusion_denoiser(sde, gm.eps_model(sde))(x_ve, sigma)
    from_x0 = peers.kdiffusion_denoiser(sde, lambda x, tt: gm.denoise(x, tt, sde),
                                        prediction="x0")(x_ve, sigma)
    # float64 round trip sigma -> t -> (alpha_t, sigma_t): agreement to 1e-8
    torch.testing.assert_close(from_eps, want, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(from_x0, want, rtol=1e-8, atol=1e-8)
    for i in (0, 5):  # ve_sigma is the same noise level
        assert peers.ve_sigma(sde, float(t[i])) == pytest.approx(float(sigma[i]), rel=1e-12)


def test_kdiffusion_denoiser_rejects_unknown_prediction():
    with pytest.raises(ValueError, match="prediction"):
        peers.kdiffusion_denoiser(VPSDE(), lambda x, t: x, prediction="v")


def test_missing_peer_is_none_with_a_one_line_note(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "k_diffusion", None)  # makes the import fail, also where
    monkeypatch.setitem(sys.modules, "k_diffusion.sampling", None)  # another test imported it
    assert peers.import_kdiffusion() is None
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "k-diffusion" in out and "[bench]" in out


def test_device_and_timing_helpers():
    assert peers.resolve_device("cpu") == torch.device("cpu")
    assert peers.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="CUDA"):
            peers.resolve_device("cuda")
    out, seconds = peers.timed(lambda: 3)
    assert out == 3 and seconds >= 0


def _data():
    d = Toy2D("8gaussians")
    return lambda n, g: d.sample(n, generator=g)


@needs_diffusers
def test_toy_peer_trains_and_samples():
    peer = peers.train_toy_peer(_data(), width=32, depth=2, batch_size=64, steps=20)
    assert peer["steps"] == 20 and peer["schedule_steps"] == 20
    assert torch.isfinite(torch.tensor(peer["loss"]))
    net = peer["model"]
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x = peers.sample_toy_peer(peer, 50, steps=20)
    assert x.shape == (50, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()


@needs_diffusers
def test_toy_peer_seconds_budget_sizes_the_schedule(monkeypatch):
    # A fake clock (1 ms per reading) makes the budget independent of the machine's load.
    ticks = iter(range(10**9))
    monkeypatch.setattr(peers.time, "perf_counter", lambda: next(ticks) * 1e-3)
    peer = peers.train_toy_peer(_data(), width=16, depth=1, batch_size=32, seconds=0.5)
    assert peer["steps"] > peers.CALIBRATION_STEPS  # the budget outlasts the calibration
    assert peer["steps"] <= peer["schedule_steps"]
    assert 0.45 <= peer["seconds"] < 0.51  # the schedule fills the budget, within a few ticks


@needs_diffusers
def test_peer_mlp_size():
    net = peers.PeerMLP(2, width=256, depth=3, emb_dim=128)
    count = sum(p.numel() for p in net.parameters())
    # 2(e^2+e) + (2w+w) + 3 (2w + 2(w^2+w) + (ew+w)) + (2w + 2w + 2) at w=256, e=128
    assert count == peers.PeerMLP.n_params_formula(2, 256, 3, 128) == 530_178


@needs_diffusers
def test_peer_mlp_is_our_mlp_size():
    from sde_gen.nets.mlp import MLP

    # PeerMLP mirrors our MLP with an additive time embedding; the FiLM variant (when the
    # constructor has it) projects the embedding to 2x the width and has more parameters.
    kw = {"film": False} if "film" in inspect.signature(MLP).parameters else {}
    ours = sum(p.numel() for p in MLP(2, width=256, depth=3, emb_dim=128, **kw).parameters())
    peer = sum(p.numel() for p in peers.PeerMLP(2, width=256, depth=3, emb_dim=128).parameters())
    assert abs(peer - ours) <= 0.1 * ours


@needs_diffusers
def test_peer_mlp_takes_integer_timesteps():
    net = peers.PeerMLP(2, width=32, depth=1, emb_dim=16)
    x = torch.randn(5, 2)
    out = net(x, torch.randint(0, 1000, (5,)))
    assert out.shape == (5, 2)
    assert torch.allclose(net(x, torch.tensor(7)), net(x, torch.full((5,), 7)))


@needs_diffusers
def test_image_peer_trains_and_samples():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    peer = peers.train_image_peer(images, model="tiny", batch_size=4, steps=2, random_flip=True)
    assert peer["steps"] == 2
    x = peers.sample_image_peer(peer, 3, steps=3, batch_size=2)
    assert x.shape == (3, 3, 8, 8)
    assert torch.isfinite(x).all() and x.abs().max() <= 1
