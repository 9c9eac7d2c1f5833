"""The diffusers peer of the benchmarks (``benchmarks/peers.py``): trains, samples, has our size."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import peers  # noqa: E402

from sde_gen.data.toy2d import Toy2D  # noqa: E402


def _data():
    d = Toy2D("8gaussians")
    return lambda n, g: d.sample(n, generator=g)


def test_toy_peer_trains_and_samples():
    peer = peers.train_toy_peer(_data(), width=32, depth=2, batch_size=64, steps=20)
    assert peer["steps"] == 20 and peer["schedule_steps"] == 20
    assert torch.isfinite(torch.tensor(peer["loss"]))
    net = peer["model"]
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x = peers.sample_toy_peer(peer, 50, steps=20)
    assert x.shape == (50, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()


def test_toy_peer_seconds_budget_sizes_the_schedule(monkeypatch):
    # A fake clock (1 ms per reading) makes the budget independent of the machine's load.
    ticks = iter(range(10**9))
    monkeypatch.setattr(peers.time, "perf_counter", lambda: next(ticks) * 1e-3)
    peer = peers.train_toy_peer(_data(), width=16, depth=1, batch_size=32, seconds=0.5)
    assert peer["steps"] > peers.CALIBRATION_STEPS  # the budget outlasts the calibration
    assert peer["steps"] <= peer["schedule_steps"]
    assert 0.45 <= peer["seconds"] < 0.51  # the schedule fills the budget, within a few ticks


def test_peer_mlp_size():
    net = peers.PeerMLP(2, width=256, depth=3, emb_dim=128)
    count = sum(p.numel() for p in net.parameters())
    # 2(e^2+e) + (2w+w) + 3 (2w + 2(w^2+w) + (ew+w)) + (2w + 2w + 2) at w=256, e=128
    assert count == peers.PeerMLP.n_params_formula(2, 256, 3, 128) == 530_178


def test_peer_mlp_is_our_mlp_size():
    from sde_gen.nets.mlp import MLP

    # PeerMLP mirrors our MLP with an additive time embedding; the FiLM variant (when the
    # constructor has it) projects the embedding to 2x the width and has more parameters.
    kw = {"film": False} if "film" in inspect.signature(MLP).parameters else {}
    ours = sum(p.numel() for p in MLP(2, width=256, depth=3, emb_dim=128, **kw).parameters())
    peer = sum(p.numel() for p in peers.PeerMLP(2, width=256, depth=3, emb_dim=128).parameters())
    assert abs(peer - ours) <= 0.1 * ours


def test_peer_mlp_takes_integer_timesteps():
    net = peers.PeerMLP(2, width=32, depth=1, emb_dim=16)
    x = torch.randn(5, 2)
    out = net(x, torch.randint(0, 1000, (5,)))
    assert out.shape == (5, 2)
    assert torch.allclose(net(x, torch.tensor(7)), net(x, torch.full((5,), 7)))


def test_image_peer_trains_and_samples():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    peer = peers.train_image_peer(images, model="tiny", batch_size=4, steps=2, random_flip=True)
    assert peer["steps"] == 2
    x = peers.sample_image_peer(peer, 3, steps=3, batch_size=2)
    assert x.shape == (3, 3, 8, 8)
    assert torch.isfinite(x).all() and x.abs().max() <= 1
