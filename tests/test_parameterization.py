"""Unit tests for ``sde_gen.parameterization``: eps / score / x0 / v conversions and ScoreModel.

The reference for ScoreModel is isotropic Gaussian data ``N(mu, s^2 I)``, for which (with
``x_t = alpha x0 + sigma z`` and ``v_t = alpha^2 s^2 + sigma^2``)
``E[z | x_t] = sigma (x_t - alpha mu) / v_t`` and
``E[x0 | x_t] = mu + alpha s^2 (x_t - alpha mu) / v_t``,
written out here without the package.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import F64, SDES, seeded
from sde_gen.parameterization import (
    ScoreModel,
    denoise_fn,
    eps_to_score,
    eps_to_x0,
    score_fn,
    score_to_eps,
    v_to_eps,
    x0_to_eps,
)
from sde_gen.sde import SDE, VPSDE

MU, S = 0.7, 1.6  # data N(MU, S^2 I)


def bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def gaussian_posterior(sde: SDE, x: torch.Tensor, t: torch.Tensor):
    """Closed-form ``(E[z|x_t], E[x0|x_t], score)`` for data N(MU, S^2 I)."""
    alpha, sigma = (bcast(c, x) for c in sde.marginal_coeffs(t))
    var_t = alpha**2 * S**2 + sigma**2
    resid = x - alpha * MU
    return sigma * resid / var_t, MU + alpha * S**2 * resid / var_t, -resid / var_t


class OracleNet(nn.Module):
    """A network that outputs the exact eps, x0 or v for the Gaussian data from the scaled input."""

    def __init__(self, sde: SDE, prediction: str, sigma_data: float) -> None:
        super().__init__()
        self.sde, self.prediction, self.sigma_data = sde, prediction, sigma_data
        self.inputs: list[torch.Tensor] = []

    def forward(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x_in)
        alpha, sigma = self.sde.marginal_coeffs(t)
        x = x_in * bcast(torch.sqrt(alpha**2 * self.sigma_data**2 + sigma**2), x_in)  # undo c_in
        eps, x0, _ = gaussian_posterior(self.sde, x, t)
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        return bcast(alpha, x) * eps - bcast(sigma, x) * x0  # v = alpha eps - sigma x0


class ZeroNet(nn.Module):
    """Predicts 0 whatever it is asked: eps = 0, x0 = 0 or v = 0."""

    def forward(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x_in)


def coeffs(shape, seed=0):
    gen = seeded(seed)
    b = shape[0]
    alpha = torch.rand(b, generator=gen, dtype=F64) * 0.9 + 0.05
    sigma = torch.rand(b, generator=gen, dtype=F64) * 30 + 0.01  # VE-sized sigmas included
    x0 = torch.randn(shape, generator=gen, dtype=F64)
    eps = torch.randn(shape, generator=gen, dtype=F64)
    return alpha, sigma, x0, eps


# -------------------------------------------------------------------------------------------------
# conversions
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 2), (6, 3, 4, 4)])
def test_conversion_round_trips(shape) -> None:
    alpha, sigma, x0, eps = coeffs(shape)
    a, s = bcast(alpha, x0), bcast(sigma, x0)
    x = a * x0 + s * eps
    score = eps_to_score(eps, sigma)
    # Exact algebra in float64 (sigma up to 30): rtol 1e-12.
    torch.testing.assert_close(score, -eps / s, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(score_to_eps(score, sigma), eps, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eps_to_x0(x, eps, alpha, sigma), x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x0_to_eps(x, x0, alpha, sigma), eps, rtol=1e-10, atol=1e-10)
    # v = alpha eps - sigma x0 (alpha^2 + sigma^2 != 1 here, the general VE/sub-VP case).
    v = a * eps - s * x0
    torch.testing.assert_close(v_to_eps(x, v, alpha, sigma), eps, rtol=1e-10, atol=1e-10)
    # ... and the round trips through x0 compose (rtol 1e-10 after two divisions).
    back = x0_to_eps(x, eps_to_x0(x, eps, alpha, sigma), alpha, sigma)
    torch.testing.assert_close(back, eps, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(6, 2), (6, 3, 4, 4)])
def test_conversions_take_one_grid_time_as_a_scalar(shape) -> None:
    """The solvers pass one grid time's 0-d ``alpha``, ``sigma``: the same numbers, bit for bit,
    as the per-example ``(B,)`` form and as the formula written out."""
    _, _, x0, eps = coeffs(shape)
    a, s = torch.tensor(0.8, dtype=F64), torch.tensor(0.6, dtype=F64)
    x = a * x0 + s * eps
    batch_a, batch_s = a.expand(shape[0]), s.expand(shape[0])
    assert torch.equal(eps_to_x0(x, eps, a, s), (x - s * eps) / a)
    assert torch.equal(eps_to_x0(x, eps, a, s), eps_to_x0(x, eps, batch_a, batch_s))
    assert torch.equal(eps_to_score(eps, s), -eps / s)
    assert torch.equal(eps_to_score(eps, s), eps_to_score(eps, batch_s))
    assert torch.equal(x0_to_eps(x, x0, a, s), (x - a * x0) / s)


@pytest.mark.parametrize("name", list(SDES))
def test_score_fn_and_denoise_fn_wrap_an_eps_model(name: str) -> None:
    sde = SDES[name]()
    gen = seeded(1)
    x = 3 * torch.randn(8, 3, generator=gen, dtype=F64)
    t = torch.rand(8, generator=gen, dtype=F64) * 0.98 + 0.01

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return gaussian_posterior(sde, x, t)[0]

    eps, x0, score = gaussian_posterior(sde, x, t)
    # float64 closed forms: rtol 1e-10.
    torch.testing.assert_close(score_fn(model, sde)(x, t), score, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(denoise_fn(model, sde)(x, t), x0, rtol=1e-10, atol=1e-10)


# -------------------------------------------------------------------------------------------------
# ScoreModel
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("sigma_data", [1.0, S])
def test_score_model_returns_consistent_eps(name: str, prediction: str, sigma_data: float) -> None:
    sde = SDES[name]()
    gen = seeded(2)
    x = 2 * torch.randn(8, 3, generator=gen, dtype=F64)
    t = torch.rand(8, generator=gen, dtype=F64) * 0.97 + 0.02
    net = OracleNet(sde, prediction, sigma_data)
    model = ScoreModel(net, sde, prediction=prediction, sigma_data=sigma_data)
    eps, x0, score = gaussian_posterior(sde, x, t)
    # Every prediction type is the same exact posterior, converted back to eps; float64 with
    # divisions by alpha_t >= 7e-3: rtol 1e-8.
    torch.testing.assert_close(model(x, t), eps, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(model.score(x, t), score, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(model.denoise(x, t), x0, rtol=1e-8, atol=1e-8)
    # Input scaling c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2) ([Karras22] Table 1).
    alpha, sigma = sde.marginal_coeffs(t)
    c_in = 1 / torch.sqrt(alpha**2 * sigma_data**2 + sigma**2)
    torch.testing.assert_close(net.inputs[0], c_in[:, None] * x, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("shape", [(5, 2), (5, 2, 3, 3)])
def test_score_model_with_known_zero_output(name: str, shape) -> None:
    """A net that predicts 0: eps = 0, or x0 = 0 (eps = x / sigma), or v = 0."""
    sde = SDES[name]()
    gen = seeded(3)
    x = torch.randn(shape, generator=gen, dtype=F64)
    t = torch.rand(shape[0], generator=gen, dtype=F64) * 0.9 + 0.05
    alpha, sigma = (bcast(c, x) for c in sde.marginal_coeffs(t))
    expected = {
        "eps": torch.zeros_like(x),
        "x0": x / sigma,  # x = alpha * 0 + sigma eps
        # v = 0: alpha eps = sigma x0 and x = alpha x0 + sigma eps.
        "v": sigma * x / (alpha**2 + sigma**2),
    }
    for prediction, want in expected.items():
        out = ScoreModel(ZeroNet(), sde, prediction=prediction)(x, t)
        assert out.shape == x.shape
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)  # exact algebra, float64


def test_score_model_bad_arguments_raise() -> None:
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"unknown prediction 'score'"):
        ScoreModel(ZeroNet(), sde, prediction="score")
    with pytest.raises(ValueError, match="sigma_data must be positive"):
        ScoreModel(ZeroNet(), sde, sigma_data=0.0)
    model = ScoreModel(ZeroNet(), sde)
    with pytest.raises(ValueError, match=r"t must have shape \(4,\), got \(4, 1\)"):
        model(torch.zeros(4, 2), torch.zeros(4, 1))


def test_score_model_keeps_train_eval_mode() -> None:
    net = ZeroNet()
    model = ScoreModel(net, VPSDE()).eval()
    model(torch.zeros(2, 2), torch.full((2,), 0.5))
    assert not model.training and not net.training
    model.train()
    model(torch.zeros(2, 2), torch.full((2,), 0.5))
    assert model.training and net.training
