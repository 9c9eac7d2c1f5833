"""Unit tests for the forward SDEs in ``sde_gen.sde`` and their reversals.

Closed forms are written out here independently of the package (see ``closed_form``); the
Monte-Carlo checks simulate the forward SDE with ``sde.sde`` only.
"""

from __future__ import annotations

import math

import pytest
import torch

from helpers import F64, SDE_NAMES, SDES, make_sde, seeded, user_error
from sde_gen.sde import VESDE, VPSDE, ReverseSDE, SubVPSDE

# Defaults of the package, restated here so that the closed forms below are independent of it.
BETA_MIN, BETA_MAX = 0.1, 20.0
COSINE_S = 0.008
SIGMA_MIN, SIGMA_MAX = 0.01, 50.0


def closed_form(name: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha_t, sigma_t)`` written from the papers, not from the package."""
    big_b = BETA_MIN * t + (BETA_MAX - BETA_MIN) * t**2 / 2  # int_0^t beta, [Song21] Eq. (29)
    if name == "vp":
        return torch.exp(-big_b / 2), torch.sqrt(1 - torch.exp(-big_b))
    if name == "subvp":
        return torch.exp(-big_b / 2), 1 - torch.exp(-big_b)
    if name == "vp_cosine":  # [Nichol21] Eq. (17): abar(t) = f(t) / f(0)

        def f(u: torch.Tensor) -> torch.Tensor:
            return torch.cos((u + COSINE_S) / (1 + COSINE_S) * math.pi / 2) ** 2

        abar = f(t) / f(torch.zeros_like(t))
        return torch.sqrt(abar), torch.sqrt(1 - abar)
    if name == "ve":
        return torch.ones_like(t), SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t
    if name == "flow":  # rectified flow's linear interpolant, [Liu23]
        return 1 - t, t
    if name == "trig":  # [Albergo23] Sec. 4
        return torch.cos(math.pi * t / 2), torch.sin(math.pi * t / 2)
    raise KeyError(name)


def bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) against x, written without the package's helper."""
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def toy_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """An arbitrary smooth deterministic 'score' depending on both x and t."""
    return torch.sin(x) + bcast(t, x) * x


# -------------------------------------------------------------------------------------------------
# 1. marginals: closed form, Monte-Carlo Euler-Maruyama, moment ODEs
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SDE_NAMES)
@pytest.mark.parametrize("shape", [(7, 2), (7, 3, 4, 4)])
def test_marginal_prob_matches_closed_form(name: str, shape: tuple[int, ...]) -> None:
    sde = make_sde(name)
    gen = seeded(0)
    x = torch.randn(shape, generator=gen, dtype=F64)
    t = torch.linspace(1e-3, sde.T, shape[0], dtype=F64)
    mean, std = sde.marginal_prob(x, t)
    alpha, sigma = closed_form(name, t)
    assert mean.shape == x.shape and std.shape == (shape[0],)
    # float64: the two formulas differ only by rounding (expm1 vs 1 - exp at t >= 1e-3): rtol 1e-10.
    torch.testing.assert_close(mean, bcast(alpha, x) * x, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(std, sigma, rtol=1e-10, atol=1e-14)
    a2, s2 = sde.marginal_coeffs(t)
    torch.testing.assert_close(a2, alpha, rtol=1e-10, atol=1e-14)  # same bound as above
    torch.testing.assert_close(s2, sigma, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", SDE_NAMES)
def test_marginal_matches_euler_maruyama_monte_carlo(name: str) -> None:
    """Simulate dx = f dt + g dw from t=0 with small steps and compare moments at 3 times."""
    sde = make_sde(name)
    gen = seeded(1234)
    n_paths, dt = 10_000, 1e-3
    # The cosine VP schedule has beta -> inf at t -> 1 (its T is 0.9946); its last check is 0.9.
    # The cosine VP schedule has beta -> inf at t -> 1 (its T is 0.9946), the flow paths' f and g
    # diverge at T = 1: their last check is 0.9.
    checks = ({100: 0.1, 500: 0.5, 1000: 1.0} if name not in ("vp_cosine", "flow", "trig")
              else {100: 0.1, 500: 0.5, 900: 0.9})
    x0 = torch.tensor([1.5, -0.5], dtype=F64).expand(n_paths, 2)
    x = x0.clone()
    if name == "ve":  # VE convention: q_0 = p_data * N(0, sigma_min^2) (see VESDE docstring).
        x = x + SIGMA_MIN * torch.randn(x.shape, generator=gen, dtype=F64)
    for k in range(max(checks)):
        # Euler-Maruyama step; coefficients are evaluated at the interval midpoint so that the
        # time-quadrature bias (VE's g^2 grows like e^{17 t}) stays well below the MC error.
        t = torch.full((n_paths,), (k + 0.5) * dt, dtype=F64)
        drift, diffusion = sde.sde(x, t)
        x = x + drift * dt + diffusion[:, None] * math.sqrt(dt) * torch.randn(
            x.shape, generator=gen, dtype=F64)
        if k + 1 in checks:
            t_chk = torch.full((n_paths,), checks[k + 1], dtype=F64)
            mean_ref, std_ref = sde.marginal_prob(x0, t_chk)
            alpha, sigma = closed_form(name, t_chk[:1])
            # The package's marginal equals the closed form (rtol 1e-10, as above).
            torch.testing.assert_close(std_ref[:1], sigma, rtol=1e-10, atol=1e-14)
            var_ref = float(sigma) ** 2
            mean_hat, var_hat = x.mean(0), x.var(0)
            se_mean = math.sqrt(var_ref / n_paths)
            se_var = var_ref * math.sqrt(2.0 / (n_paths - 1))
            # Tolerance: 4 Monte-Carlo standard errors (EM bias at dt=1e-3 is < 0.5 SE; the
            # largest |z| measured with this seed is 2.6).
            z_mean = (mean_hat - mean_ref[0]).abs() / se_mean
            z_var = (var_hat - var_ref).abs() / se_var
            assert (z_mean < 4).all(), (name, checks[k + 1], z_mean)
            assert (z_var < 4).all(), (name, checks[k + 1], z_var)


@pytest.mark.parametrize("name", SDE_NAMES)
def test_moment_odes_hold(name: str) -> None:
    """d alpha/dt = f(t) alpha and d sigma^2/dt = 2 f(t) sigma^2 + g(t)^2 (autograd on t)."""
    sde = make_sde(name)
    t = torch.linspace(0.02, 0.98 * sde.T, 25, dtype=F64, requires_grad=True)
    alpha, sigma = sde.marginal_coeffs(t)
    if alpha.requires_grad:
        (d_alpha,) = torch.autograd.grad(alpha.sum(), t, retain_graph=True)
    else:  # VE: alpha_t is the constant 1, independent of t
        d_alpha = torch.zeros_like(t)
    (d_var,) = torch.autograd.grad((sigma**2).sum(), t)
    with torch.no_grad():
        tt = t.detach()
        f_coef, g = sde.sde(torch.ones(tt.shape[0], 1, dtype=F64), tt)
        f_coef = f_coef[:, 0]
        # The drift really is linear in x with that coefficient (float64 rounding: rtol 1e-12).
        x = torch.randn(tt.shape[0], 3, generator=seeded(3), dtype=F64)
        torch.testing.assert_close(sde.sde(x, tt)[0], f_coef[:, None] * x, rtol=1e-12, atol=0)
        alpha, sigma = alpha.detach(), sigma.detach()
    # Analytic identities in float64; only rounding separates the sides: rtol 1e-9.
    torch.testing.assert_close(d_alpha, f_coef * alpha, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(d_var, 2 * f_coef * sigma**2 + g**2, rtol=1e-9, atol=1e-12)


# -------------------------------------------------------------------------------------------------
# 2. prior
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SDE_NAMES)
@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 4, 4)])
def test_prior_logp_matches_torch_normal(name: str, shape: tuple[int, ...]) -> None:
    sde = make_sde(name)
    z = 1.3 * sde.prior_std * torch.randn(shape, generator=seeded(5),
                                          dtype=F64)
    scale = torch.tensor(sde.prior_std, dtype=F64)  # float64 parameters, not the float32 default
    normal = torch.distributions.Normal(torch.zeros((), dtype=F64), scale)
    expected = normal.log_prob(z).reshape(shape[0], -1)
    logp = sde.prior_logp(z)
    assert logp.shape == (shape[0],)
    # float64, sums of <= 48 terms of size ~10: rtol 1e-12.
    torch.testing.assert_close(logp, expected.sum(1), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("name", SDE_NAMES)
@pytest.mark.parametrize("shape", [(50_000, 2), (1_000, 3, 4, 4)])
def test_prior_sampling_shape_std_and_reproducible(name: str, shape: tuple[int, ...]) -> None:
    sde = make_sde(name)
    z = sde.prior_sampling(shape, generator=seeded(11), dtype=F64)
    assert z.shape == shape and z.dtype == F64
    n = z.numel()
    expected_std = 50.0 if name == "ve" else 1.0  # VE prior N(0, sigma_max^2), VP-family N(0, 1)
    # Tolerance: 4 standard errors of the sample mean (s/sqrt n) and std (s/sqrt(2n)).
    assert abs(z.mean().item()) < 4 * expected_std / math.sqrt(n)
    assert abs(z.std().item() - expected_std) < 4 * expected_std / math.sqrt(2 * n)
    again = sde.prior_sampling(shape, generator=seeded(11), dtype=F64)
    other = sde.prior_sampling(shape, generator=seeded(12), dtype=F64)
    assert torch.equal(z, again)  # exact: same seed, same draw
    assert not torch.equal(z, other)


# -------------------------------------------------------------------------------------------------
# 3. reverse SDE and probability-flow ODE
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SDE_NAMES)
@pytest.mark.parametrize("shape", [(6, 2), (6, 3, 4, 4)])
@pytest.mark.parametrize("method", ["sde", "discretize"])
def test_reverse_drift_and_diffusion(name: str, shape: tuple[int, ...], method: str) -> None:
    sde = make_sde(name)
    gen = seeded(21)
    x = torch.randn(shape, generator=gen, dtype=F64)
    t = torch.linspace(0.05, 0.95 * sde.T, shape[0], dtype=F64)
    if method == "discretize" and sde.chain == "none":  # the flow paths: no discrete chain
        assert "has no discrete chain" in user_error(lambda: sde.discretize(x, t))
        return
    f, g = getattr(sde, method)(x, t)
    score = toy_score(x, t)

    rev = sde.reverse(toy_score)
    assert isinstance(rev, ReverseSDE) and rev.T == sde.T and rev.N == sde.N
    drift, diffusion = getattr(rev, method)(x, t)
    # Exact algebra in float64: rtol 1e-12.
    torch.testing.assert_close(drift, f - bcast(g**2, x) * score, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(diffusion, g, rtol=0, atol=0)  # passed through unchanged

    flow = sde.reverse(toy_score, probability_flow=True)
    drift, diffusion = getattr(flow, method)(x, t)
    torch.testing.assert_close(drift, f - 0.5 * bcast(g**2, x) * score, rtol=1e-12, atol=1e-12)
    assert diffusion.shape == (shape[0],)
    assert torch.equal(diffusion, torch.zeros_like(g))  # exact zeros


# -------------------------------------------------------------------------------------------------
# 6. property test: every method on (B, 2) and (B, 3, 4, 4), float32 and float64
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SDE_NAMES)
@pytest.mark.parametrize("shape", [(5, 2), (5, 3, 4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_method_shapes_dtypes_finite(
    name: str, shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    sde = make_sde(name)
    b = shape[0]
    x = torch.randn(shape, generator=seeded(31), dtype=dtype)
    t = torch.linspace(1e-3, sde.T, b, dtype=dtype)  # includes both ends of the time range
    if sde.pure_noise_at_T:  # alpha_T = 0: the marginals are finite at T, f and g are not
        alpha, sigma = sde.marginal_coeffs(t)
        assert torch.isfinite(alpha).all() and alpha[-1] == 0 and (alpha[:-1] > 0).all()
        assert sigma[-1] == 1 and torch.isinf(sde.log_snr(t)[-1])
        t = t[:-1] * (1 - 1e-3)  # below T from here on
        b, x = b - 1, x[:-1]
        shape = (b, *shape[1:])

    def check(v: torch.Tensor, want_shape: tuple[int, ...]) -> None:
        assert v.shape == want_shape and v.dtype == dtype and torch.isfinite(v).all()

    drift, diffusion = sde.sde(x, t)
    check(drift, shape)
    check(diffusion, (b,))
    mean, std = sde.marginal_prob(x, t)
    check(mean, shape)
    check(std, (b,))
    alpha, sigma = sde.marginal_coeffs(t)
    check(alpha, (b,))
    check(sigma, (b,))
    assert (alpha > 0).all() and (sigma > 0).all()
    lam = sde.log_snr(t)
    check(lam, (b,))
    check(sde.t_from_log_snr(lam), (b,))
    has_chain = sde.chain != "none"
    if has_chain:
        f, big_g = sde.discretize(x, t)
        check(f, shape)
        check(big_g, (b,))
        assert (big_g > 0).all()
    for pf in (False, True):
        rev = sde.reverse(toy_score, probability_flow=pf)
        for out in (rev.sde(x, t), *((rev.discretize(x, t),) if has_chain else ())):
            check(out[0], shape)
            check(out[1], (b,))
    z = sde.prior_sampling(shape, generator=seeded(2), dtype=dtype)
    check(z, shape)
    assert torch.equal(z, sde.prior_sampling(shape, generator=seeded(2),
                                             dtype=dtype))  # deterministic under a fixed seed
    check(sde.prior_logp(z), (b,))
    i = sde.time_to_index(t)
    assert i.shape == (b,) and i.dtype == torch.long
    assert ((i >= 0) & (i < sde.N)).all()
    ti = sde.index_to_time(i)
    assert ti.shape == (b,) and ((ti >= 0) & (ti <= sde.T + 1e-12)).all()
    if not has_chain:
        assert "has no discrete chain" in user_error(lambda: sde.discrete_coeffs(i))
        return
    for c in sde.discrete_coeffs(i):
        assert c.shape == (b,) and torch.isfinite(c).all() and (c > 0).all()


# -------------------------------------------------------------------------------------------------
# 7. bad input
# -------------------------------------------------------------------------------------------------
BAD_TIMES = {
    "column": (lambda b: torch.full((b, 1), 0.5), r"\(4, 1\)"),
    "too_long": (lambda b: torch.full((b + 1,), 0.5), r"\(5,\)"),
    "scalar_tensor": (lambda b: torch.tensor(0.5), r"got \(\)"),
    "python_float": (lambda b: 0.5, "float"),
}


@pytest.mark.parametrize("name", SDE_NAMES)
@pytest.mark.parametrize("bad", list(BAD_TIMES))
def test_bad_time_shape_raises_clear_value_error(name: str, bad: str) -> None:
    sde = make_sde(name)
    x = torch.zeros(4, 2)
    make_t, got = BAD_TIMES[bad]
    t = make_t(4)
    methods = [sde.sde, sde.marginal_prob, sde.discretize, sde.reverse(toy_score).sde,
               sde.reverse(toy_score, probability_flow=True).discretize]
    for method in methods:
        with pytest.raises(ValueError, match=r"t must be a float tensor of shape \(4,\)") as info:
            method(x, t)
        assert info.match(got)  # the message names what it got


def test_bad_constructor_arguments_raise() -> None:
    with pytest.raises(ValueError, match=r"unknown VP schedule 'bogus'.*cosine.*linear"):
        VPSDE(schedule="bogus")
    with pytest.raises(ValueError, match="N must be a positive integer"):
        VPSDE(N=0)
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        VPSDE(beta_min=0.0)
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        SubVPSDE(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VESDE(sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="N >= 2"):
        VESDE(N=1)
    with pytest.raises(ValueError, match="T must be positive"):
        VPSDE(T=0.0)


@pytest.mark.parametrize("name", sorted(SDES))
def test_interface_declares_what_its_users_call(name):
    """diffusion(t), drift_coeff(t), t_from_log_snr, default_t_min and the chain kind, per SDE."""
    sde = SDES[name]()
    # up to T, or just below it where alpha_T = 0 (f and g diverge at a flow path's T)
    t = torch.linspace(1e-3, sde.T - (1e-3 if sde.pure_noise_at_T else 0.0), 9,
                       dtype=torch.float64)
    x = torch.randn(9, 3, dtype=torch.float64, generator=seeded(0))
    drift, g = sde.sde(x, t)
    assert torch.equal(g, sde.diffusion(t))
    assert torch.allclose(drift, sde.drift_coeff(t)[:, None] * x)
    # g^2 = d sigma^2/dt - 2 f sigma^2 for a linear SDE ([Song21] Eq. 5, moments of x_t)
    h = 1e-6  # central differences in float64
    (a_hi, s_hi), (a_lo, s_lo) = sde.marginal_coeffs(t + h), sde.marginal_coeffs(t - h)
    dlog_alpha = (a_hi.log() - a_lo.log()) / (2 * h)
    dvar = (s_hi**2 - s_lo**2) / (2 * h)
    sigma = sde.marginal_coeffs(t)[1]
    assert torch.allclose(dlog_alpha, sde.drift_coeff(t), rtol=1e-6, atol=1e-8)
    assert torch.allclose(g**2, dvar - 2 * sde.drift_coeff(t) * sigma**2, rtol=1e-6)
    assert torch.allclose(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=1e-8, atol=1e-10)
    assert sde.default_t_min == (1e-5 if name == "ve" else 1e-3)
    assert sde.has_ddpm_chain == (name in ("vp", "subvp"))
    assert sde.pure_noise_at_T == (name in ("flow", "trig"))
