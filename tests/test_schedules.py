"""Unit tests for the beta schedules, the discrete chains of VP/VE, time <-> index maps, log-SNR
inverses and ``time_grid``."""

from __future__ import annotations

import pytest
import torch

from helpers import SDE_NAMES, make_sde, seeded
from sde_gen.schedules import (
    CosineBeta,
    LinearBeta,
    TableBeta,
    cosine_betas,
    scaled_linear_betas,
    time_grid,
)
from sde_gen.sde import VESDE, VPSDE

F64 = torch.float64
SIGMA_MIN, SIGMA_MAX, N = 0.01, 50.0, 1000


# -------------------------------------------------------------------------------------------------
# continuous schedules
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", [LinearBeta(), LinearBeta(0.5, 3.0), CosineBeta(),
                                      TableBeta(scaled_linear_betas(1e-3, 0.2, 100)),
                                      TableBeta(cosine_betas(37)), TableBeta(torch.tensor([0.3]))],
                         ids=["linear", "linear_custom", "cosine", "table", "table_cosine",
                              "table_one_step"])
def test_schedule_integral_derivative_and_inverse(schedule) -> None:
    t = torch.linspace(0.0, 0.99, 50, dtype=F64, requires_grad=True)
    big_b = schedule.integral(t)
    (d_b,) = torch.autograd.grad(big_b.sum(), t)
    # d/dt int_0^t beta = beta(t); float64 rounding only: rtol 1e-10.
    torch.testing.assert_close(d_b, schedule.beta(t.detach()), rtol=1e-10, atol=1e-12)
    big_b = big_b.detach()
    assert abs(big_b[0].item()) < 1e-15  # B(0) = 0 up to rounding
    assert (big_b.diff() > 0).all()  # beta > 0, so B is strictly increasing
    # inverse_integral(B(t)) = t; conditioning of arccos near t=0 for cosine costs ~1e-13:
    # atol 1e-10.
    torch.testing.assert_close(schedule.inverse_integral(big_b), t.detach(), rtol=0,
                               atol=1e-10)


@pytest.mark.parametrize("betas", [scaled_linear_betas(1e-4, 0.02, 1000), cosine_betas(50),
                                   torch.linspace(1e-4, 0.02, 1000, dtype=F64)])
def test_table_schedule_is_the_chain_at_every_step(betas) -> None:
    """``VPSDE(schedule="table")``: the chain is the table, the continuous marginal passes through
    every step exactly, beta(t) is continuous and positive, and past T B is extended linearly."""
    sde = VPSDE(schedule="table", betas=betas)
    assert sde.N == len(betas) and torch.equal(sde._betas64, betas.double())
    i = torch.arange(sde.N)
    abar = torch.cumprod(1 - betas.double(), 0)
    alpha, sigma = sde.marginal_coeffs(sde.index_to_time(i).double())
    torch.testing.assert_close(alpha**2, abar, rtol=1e-13, atol=0)
    torch.testing.assert_close(sigma**2, 1 - abar, rtol=1e-11, atol=1e-300)
    sched = sde.schedule
    t = torch.linspace(0, sde.T, 20001, dtype=F64)
    beta = sched.beta(t)
    assert (beta > 0).all()
    # continuous: no jump between neighbours beyond what the slope explains (a piecewise-
    # constant beta jumps by ~beta_i at every knot)
    jumps = beta.diff().abs().max() / beta.max()
    assert jumps < 0.05, jumps
    past = torch.tensor([sde.T, sde.T + 0.1], dtype=F64)
    b = sched.integral(past)
    torch.testing.assert_close(b[1] - b[0], 0.1 * sched.beta(past[:1])[0], rtol=1e-12, atol=0)
    # the linear DDPM table is close to the linear VP SDE (not equal: -log(1 - beta_i) > beta_i
    # and the steps sit at (i + 1) / N; measured max |d alpha| 9.9e-4)
    if len(betas) == 1000 and torch.allclose(betas, torch.linspace(1e-4, 0.02, 1000, dtype=F64)):
        linear = VPSDE()
        tt = torch.linspace(0.01, 1, 97, dtype=F64)
        torch.testing.assert_close(sde.marginal_coeffs(tt)[0], linear.marginal_coeffs(tt)[0],
                                   rtol=0, atol=2e-3)


def test_table_schedule_bad_input() -> None:
    for bad in ([], [0.5, 1.0], [0.0, 0.1], [float("nan")]):
        with pytest.raises(ValueError, match="beta table"):
            TableBeta(torch.tensor(bad, dtype=F64))
    with pytest.raises(ValueError, match="betas exactly when"):
        VPSDE(schedule="linear", betas=torch.tensor([0.1]))
    with pytest.raises(ValueError, match="betas exactly when"):
        VPSDE(schedule="table")


def test_linear_beta_closed_form_and_bad_args() -> None:
    t = torch.linspace(0, 1, 11, dtype=F64)
    s = LinearBeta(0.1, 20.0)
    # Exact formulas: rtol 1e-14.
    torch.testing.assert_close(s.beta(t), 0.1 + 19.9 * t, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(s.integral(t), 0.1 * t + 9.95 * t**2, rtol=1e-14, atol=1e-14)
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        LinearBeta(1.0, 1.0)


# -------------------------------------------------------------------------------------------------
# 4. VP discrete schedule
# -------------------------------------------------------------------------------------------------
def test_vp_discrete_betas_are_ddpm() -> None:
    sde = VPSDE()
    ddpm_betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)  # [Ho20] Sec. 4
    assert sde.discrete_betas.shape == (1000,)
    # float32 storage of numbers <= 0.02: rounding <= 1e-9, bound 1e-7 as specified.
    torch.testing.assert_close(sde.discrete_betas.double(), ddpm_betas, rtol=0, atol=1e-7)
    # float32 storage of numbers <= 1: atol 1e-7.
    torch.testing.assert_close(sde.alphas.double(), 1 - ddpm_betas, rtol=0, atol=1e-7)
    torch.testing.assert_close(sde.alphas_cumprod.double(), torch.cumprod(1 - ddpm_betas, 0),
                               rtol=0, atol=1e-7)


def test_vp_discrete_abar_close_to_continuous_alpha_squared() -> None:
    sde = VPSDE()
    i = torch.arange(sde.N)
    t = sde.index_to_time(i)
    # index_to_time is (i + 1) T / N for the VP family.
    torch.testing.assert_close(t, (i + 1).double() / 1000, rtol=0, atol=1e-15)
    alpha_t, _ = sde.marginal_coeffs(t)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=F64), 0)
    err = (abar - alpha_t**2).abs().max().item()
    # Measured max |abar_i - alpha_{t_i}^2| = 8.11e-4 (at i = 140); bound ~1.5x that.
    assert err < 1.2e-3, err
    # ... and discrete_coeffs returns the chain's own sqrt(abar), sqrt(1 - abar) (float64: 1e-12).
    a_d, s_d = sde.discrete_coeffs(i)
    torch.testing.assert_close(a_d, abar.sqrt(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s_d, (1 - abar).sqrt(), rtol=1e-12, atol=1e-12)


def test_vp_cosine_discrete_chain_matches_continuous() -> None:
    """Cosine betas are defined from abar(t_i), so the chain reproduces abar(t_i) exactly."""
    sde = VPSDE(schedule="cosine")
    i = torch.arange(sde.N)
    alpha_t, sigma_t = sde.marginal_coeffs(sde.index_to_time(i))
    a_d, s_d = sde.discrete_coeffs(i)
    assert (sde.discrete_betas < 0.999).all() and (sde.discrete_betas > 0).all()
    # Measured max |abar_i - alpha_{t_i}^2| = 5.6e-16 (no beta is clipped at these defaults): 1e-12.
    torch.testing.assert_close(a_d**2, alpha_t**2, rtol=0, atol=1e-12)
    torch.testing.assert_close(s_d, sigma_t, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", SDE_NAMES)
def test_time_index_round_trip(name: str) -> None:
    sde = make_sde(name)
    i = torch.arange(sde.N)
    t = sde.index_to_time(i)
    assert torch.equal(sde.time_to_index(t), i)  # exact for every i
    dt = t[1] - t[0]
    assert torch.equal(sde.time_to_index(t + 0.4 * dt), i)  # rounds to the nearest step
    assert torch.equal(sde.time_to_index(t - 0.4 * dt), i)
    ends = torch.tensor([0.0, sde.T], dtype=F64)
    assert sde.time_to_index(ends).tolist() == [0, sde.N - 1]  # clamped to [0, N)
    assert (t.diff() > 0).all() and t[-1].item() == pytest.approx(sde.T, abs=1e-12)


def test_ve_index_to_time_hits_the_smld_ladder() -> None:
    sde = VESDE()
    i = torch.arange(N)
    t = sde.index_to_time(i)
    torch.testing.assert_close(t, i.double() / (N - 1), rtol=0, atol=1e-15)  # i T / (N - 1)
    ladder = SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** (i.double() / (N - 1))
    # float32 storage of discrete_sigmas: rtol 1e-6.
    torch.testing.assert_close(sde.discrete_sigmas.double(), ladder, rtol=1e-6, atol=0)
    torch.testing.assert_close(sde.marginal_coeffs(t)[1], ladder, rtol=1e-12, atol=0)  # float64


@pytest.mark.parametrize("jitter", [0.0, 0.3, -0.3])
def test_vp_discretize_is_ddpm_step(jitter: float) -> None:
    sde = VPSDE()
    gen = seeded(41)
    i = torch.cat([torch.tensor([0, 999]), torch.randint(0, 1000, (14,), generator=gen)])
    t = sde.index_to_time(i) + jitter / 1000  # within half a step of t_i
    x = torch.randn(16, 3, generator=gen, dtype=F64)
    f, big_g = sde.discretize(x, t)
    beta = torch.linspace(1e-4, 0.02, 1000, dtype=F64)[i]
    # betas are stored in float32 (relative rounding 6e-8): rtol 1e-6 on G, atol 1e-8 on f.
    torch.testing.assert_close(big_g, beta.sqrt(), rtol=1e-6, atol=0)
    torch.testing.assert_close(f, (1 - beta).sqrt()[:, None] * x - x, rtol=0, atol=1e-8)


@pytest.mark.parametrize("jitter", [0.0, 0.3, -0.3])
def test_ve_discretize_is_smld_step(jitter: float) -> None:
    sde = VESDE()
    gen = seeded(43)
    i = torch.cat([torch.tensor([0, 1, 999]), torch.randint(2, 999, (13,), generator=gen)])
    t = (sde.index_to_time(i) + jitter / (N - 1)).clamp(0, 1)
    x = torch.randn(16, 2, 2, generator=gen, dtype=F64)
    f, big_g = sde.discretize(x, t)
    sig = SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** (i.double() / (N - 1))
    sig_prev = torch.where(i == 0, torch.zeros_like(sig),
                           SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** ((i - 1).double() / (N - 1)))
    assert torch.equal(f, torch.zeros_like(x))  # SMLD has no drift
    # float64 sigmas: only the difference of squares (~1.7% of sigma_i^2) loses digits; rtol 1e-10.
    torch.testing.assert_close(big_g, (sig**2 - sig_prev**2).sqrt(), rtol=1e-10, atol=0)
    assert big_g[0].item() == pytest.approx(SIGMA_MIN, rel=1e-12)  # i = 0: G = sigma_min


# -------------------------------------------------------------------------------------------------
# 5. log-SNR and its inverse
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SDE_NAMES)
def test_log_snr_round_trip(name: str) -> None:
    sde = make_sde(name)
    t = torch.linspace(1e-3, sde.T - 1e-3, 200, dtype=F64)
    lam = sde.log_snr(t)
    alpha, sigma = sde.marginal_coeffs(t)
    # Definition lambda = log(alpha / sigma), float64: rtol 1e-12.
    torch.testing.assert_close(lam, torch.log(alpha / sigma), rtol=1e-12, atol=1e-12)
    assert (lam.diff() < 0).all()  # SNR strictly decreases in t
    # t -> lambda -> t; cancellations at small t cost up to ~1e-12: atol 1e-9.
    torch.testing.assert_close(sde.t_from_log_snr(lam), t, rtol=0, atol=1e-9)
    # lambda -> t -> lambda on a grid inside the attained range (float64: atol 1e-9).
    lam_grid = torch.linspace(lam.min().item(), lam.max().item(), 101, dtype=F64)
    torch.testing.assert_close(sde.log_snr(sde.t_from_log_snr(lam_grid)), lam_grid, rtol=0,
                               atol=1e-9)


# -------------------------------------------------------------------------------------------------
# time grids
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_time_grid(spacing: str, dtype: torch.dtype) -> None:
    steps, big_t, eps = 10, 0.9946, 1e-3
    ts = time_grid(steps, T=big_t, t_min=eps, spacing=spacing, dtype=dtype)
    assert ts.shape == (steps + 1,) and ts.dtype == dtype
    assert (ts.diff() < 0).all()
    u = torch.linspace(1, 0, steps + 1, dtype=F64)
    ref = eps + (big_t - eps) * (u if spacing == "uniform" else u**2)
    tol = 1e-7 if dtype == torch.float32 else 1e-14  # storage precision of dtype
    torch.testing.assert_close(ts.double(), ref, rtol=0, atol=tol)
    assert ts[0].item() == pytest.approx(big_t, abs=tol)
    assert ts[-1].item() == pytest.approx(eps, abs=tol)


def test_time_grid_bad_args() -> None:
    with pytest.raises(ValueError, match="steps must be >= 1"):
        time_grid(0)
    with pytest.raises(ValueError, match="need 0 <= t_min < T"):
        time_grid(5, T=1.0, t_min=1.0)
    with pytest.raises(ValueError, match="unknown time spacing 'log'"):
        time_grid(5, spacing="log")
