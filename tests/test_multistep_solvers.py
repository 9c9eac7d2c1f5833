"""iPNDM and tAB-DEIS (``sde_gen.sampling.ipndm`` / ``.deis``) against exact math and their peers.

Both step the probability-flow ODE ``dy/drho = eps`` in ``y = x/alpha_t``, ``rho = sigma_t/alpha_t``
with weights ``y_{k+1} = y_k + sum_j C[k, j] eps_{k-j}``.

(a) Order 1 of each is DDIM (eta = 0) on the same grid, VP and VE, to float64 round-off.
(b) Measured convergence orders at 20, 40, 80, 160 log-SNR steps on VP, sub-VP and VE, every
    order; fixed against variable-step iPNDM.
(c) Independent references: one iPNDM-4 step by the published equal-step AB4 formula; one
    DEIS-tAB2 step with its weights integrated here by ``scipy.integrate.quad`` in t, with
    ``drho/dt`` by central differences; the package's quadrature against three times the nodes
    and against the partition of unity; variable-step iPNDM = fixed on an equal-step rho grid.
(d) DEIS keeps converging from 200 to 500 steps, float64 and float32 state.
(e) diffusers (if installed): ``DEISMultistepScheduler`` interpolates eps in log rho, not in t:
    on VE (t affine in log rho) it is our tAB-DEIS, on VP / sub-VP it is the log-rho rule (same
    code path, ``tau = log rho``) and differs from tAB by about the discretization error.
    ``IPNDMScheduler`` is our fixed iPNDM once fed our grid and a v-prediction.

Numerics in float64 unless stated; tolerances and measured values at each assertion.
Model: the exact eps of a 2-D, 3-component Gaussian mixture (``GaussianMixture.eps_model``).
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import pytest
import torch

from helpers import DIFFUSION_SDES, SDES, mixture, ode_reference, seeded
from sde_gen.chain import grid_coeffs
from sde_gen.sampling import sample
from sde_gen.sampling.deis import (
    eps_multistep,
    lagrange_coefficients,
    sample_deis,
    tab_coefficients,
    time_from_log_snr,
)
from sde_gen.sampling.grids import make_grid
from sde_gen.sampling.ipndm import ipndm_coefficients, sample_ipndm
from sde_gen.sde import SDE, SubVPSDE

F64, F32 = torch.float64, torch.float32


GM = mixture()


@lru_cache(maxsize=None)
def endpoint_error(sde_name: str, solver: str, steps: int, options: tuple = (),
                   dtype: torch.dtype = F64) -> float:
    """Mean distance to the exact ODE endpoint at eps, ``steps`` log-SNR intervals, no denoise."""
    sde, x_T, ref = ode_reference(sde_name)
    res = sample(GM.eps_model(sde), sde, None, solver, x_T=x_T.to(dtype), steps=steps,
                 spacing="logsnr", denoise=False, **dict(options))
    return float((res.x.to(F64) - ref).norm(dim=1).mean())


def errors(sde_name: str, solver: str, steps_list, **options) -> list[float]:
    return [endpoint_error(sde_name, solver, s, tuple(sorted(options.items()))) for s in steps_list]


def ratios(errs: list[float]) -> list[float]:
    return [a / b for a, b in zip(errs, errs[1:])]


def fmt(errs: list[float]) -> str:
    return (f"errors {' '.join('%.2e' % e for e in errs)} "
            f"ratios {' '.join('%.2f' % r for r in ratios(errs))}")


def trajectory(fn, sde: SDE, ts: torch.Tensor, n: int = 16, **options) -> list[torch.Tensor]:
    """The solver's state at every grid time (x_T first), from its callback."""
    x_T = sde.prior_sampling((n, 2), generator=seeded(11), dtype=F64)
    states = [x_T]
    fn(GM.eps_model(sde), sde, x_T, ts, callback=lambda k, x, _: states.append(x), **options)
    return states


def grid(sde: SDE, steps: int, spacing: str = "logsnr") -> torch.Tensor:
    return make_grid(sde, steps, t_min=sde.default_t_min, spacing=spacing)


# -------------------------------------------------------------------------------------------------
# (a) order 1 = DDIM
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("solver,options", [
    ("ipndm", {"order": 1}), ("ipndm", {"order": 1, "variable_step": True}), ("deis", {"order": 1}),
], ids=["ipndm", "ipndm-variable", "deis"])
def test_order_one_is_ddim(sde_name: str, solver: str, options: dict) -> None:
    sde, x_T, _ = ode_reference(sde_name)
    model = GM.eps_model(sde)
    for spacing in ("logsnr", "uniform"):
        ts = grid(sde, 25, spacing)
        ours = sample(model, sde, None, solver, x_T=x_T, ts=ts, denoise=False, **options)
        ddim = sample(model, sde, None, "ddim", x_T=x_T, ts=ts, denoise=False)
        assert ours.nfe == ddim.nfe == 25
        # x_s = (alpha_s/alpha_t) x + alpha_s (rho_s - rho_t) eps is DDIM's alpha_s x0 + sigma_s eps
        # rearranged: measured max |diff| 1.3e-14 - 5.4e-14 (vp), 6.9e-15 - 8.0e-15 (ve, |x_T| up
        # to 156) over both grids; tol 1e-12.
        torch.testing.assert_close(ours.x, ddim.x, rtol=0, atol=1e-12)


# -------------------------------------------------------------------------------------------------
# (b) convergence orders
STEPS = (20, 40, 80, 160)
# (solver, options, min ratio, max ratio, min last ratio): measured ratios per doubling in the
# comments (vp | subvp | ve), 20 -> 40 -> 80 -> 160 log-SNR steps.
ORDER_CASES = [
    # first order: 1.95 2.25 2.02 | 1.96 2.19 2.03 | 2.16 2.03 2.01 (both solvers: DDIM)
    ("ipndm", {"order": 1}, 1.7, 2.4, 1.7),
    ("deis", {"order": 1}, 1.7, 2.4, 1.7),
    # fixed-weight AB2: 3.12 3.43 3.69 | 3.46 3.25 3.56 | 3.17 3.47 3.71 (second order)
    ("ipndm", {"order": 2}, 2.8, 4.5, 3.3),
    # fixed AB3 / AB4 on a log-SNR grid are second order: the steps in rho shrink by a constant
    # ratio r = 1 - O(h), and equal-step weights then leave an O(h (1 - r)) = O(h^2) local term.
    # AB3: 3.91 5.03 4.82 | 3.09 4.44 5.13 | 4.13 5.09 4.66;
    # AB4: 4.71 4.24 3.73 | 3.78 4.80 3.81 | 4.87 4.05 3.82 (falling towards 4).
    ("ipndm", {"order": 3}, 2.8, 6.0, 3.3),
    ("ipndm", {"order": 4}, 3.3, 6.0, 3.3),
    # variable-step AB (exact weights for the unequal steps) keeps its order, pre-asymptotically:
    # AB2: 3.66 3.53 3.72 | 3.33 3.41 3.62 | 3.34 3.56 3.75
    # AB3: 4.69 5.71 6.72 | 4.49 5.09 6.19 | 4.82 5.89 6.84 (towards 8)
    # AB4: 6.05 8.98 12.38 | 5.48 7.11 10.59 | 6.41 9.53 12.68 (towards 16)
    ("ipndm", {"order": 2, "variable_step": True}, 2.8, 4.5, 3.3),
    ("ipndm", {"order": 3, "variable_step": True}, 4.0, 9.0, 5.5),
    ("ipndm", {"order": 4, "variable_step": True}, 5.0, 17.0, 9.0),
    # tAB-DEIS: 2: 3.32 3.54 3.73 | 3.46 3.41 3.63 | 3.30 3.54 3.74
    #           3: 4.34 5.59 6.79 | 3.92 4.87 6.33 | 4.52 6.27 7.39 (towards 8)
    ("deis", {"order": 2}, 2.8, 4.5, 3.3),
    ("deis", {"order": 3}, 3.5, 9.0, 5.5),
]


def _case_id(case) -> str:
    solver, options = case[0], case[1]
    return f"{solver}{options['order']}" + ("-variable" if options.get("variable_step") else "")


@pytest.mark.parametrize("sde_name", list(DIFFUSION_SDES))
@pytest.mark.parametrize("case", ORDER_CASES, ids=[_case_id(c) for c in ORDER_CASES])
def test_convergence_order(sde_name: str, case) -> None:
    solver, options, lo, hi, last_lo = case
    errs = errors(sde_name, solver, STEPS, **options)
    r = ratios(errs)
    print(f"\n{_case_id(case)} {sde_name}: {fmt(errs)}")
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert all(lo <= v <= hi for v in r), r
    assert r[-1] >= last_lo, r


@pytest.mark.parametrize("sde_name", list(DIFFUSION_SDES))
def test_higher_order_is_more_accurate(sde_name: str) -> None:
    """Each order beats the one below at every step count, except fixed AB4 against AB3: both
    are second order here, and AB4/AB3 measures 0.74-1.00 up to 80 steps (vp 0.90 0.74 0.88,
    subvp 1.00 0.82 0.76, ve 0.87 0.74 0.93) and 1.0-1.14 at 160."""
    for solver, orders, variable in (("ipndm", (1, 2, 3), False), ("ipndm", (2, 3, 4), True),
                                     ("deis", (1, 2, 3), False)):
        extra = {"variable_step": True} if variable else {}
        table = [errors(sde_name, solver, STEPS, order=o, **extra) for o in orders]
        for low, high in zip(table, table[1:]):
            assert all(h < lo for h, lo in zip(high, low)), (solver, variable, table)
    ab3, ab4 = (errors(sde_name, "ipndm", STEPS[:3], order=o) for o in (3, 4))
    assert all(b < 1.05 * a for a, b in zip(ab3, ab4)), (ab3, ab4)


@pytest.mark.parametrize("sde_name", list(DIFFUSION_SDES))
def test_fixed_against_variable_step_ipndm(sde_name: str) -> None:
    """Fixed equal-step weights (the default) win at few steps, variable-step ones at many.

    Measured AB4 errors fixed / variable: vp 8.3e-3 / 2.5e-2 at 20 steps, 1.1e-4 / 3.7e-5 at
    160; subvp 1.6e-2 / 6.3e-2, 2.4e-4 / 1.5e-4; ve 6.7e-3 / 1.8e-2, 8.9e-5 / 2.4e-5. The
    crossover is near 80 steps (vp 4.2e-4 / 4.5e-4).
    """
    fixed = errors(sde_name, "ipndm", STEPS, order=4)
    variable = errors(sde_name, "ipndm", STEPS, order=4, variable_step=True)
    print(f"\nAB4 {sde_name}: fixed {fmt(fixed)}\n        variable {fmt(variable)}")
    assert variable[0] / fixed[0] >= 2.0  # measured 2.95 (vp), 3.89 (subvp), 2.75 (ve)
    assert fixed[-1] / variable[-1] >= 1.2  # measured 3.07 (vp), 1.53 (subvp), 3.74 (ve)


# -------------------------------------------------------------------------------------------------
# (c) independent references
AB4 = (55 / 24, -59 / 24, 37 / 24, -9 / 24)  # [Zhang & Chen 2023] App., iPNDM's 4th-order step


@pytest.mark.parametrize("sde_name", list(DIFFUSION_SDES))
def test_one_ipndm4_step_is_the_published_formula(sde_name: str) -> None:
    sde = SDES[sde_name]()
    model = GM.eps_model(sde)
    ts = grid(sde, 8)
    xs = trajectory(sample_ipndm, sde, ts, order=4)
    alpha, sigma = sde.marginal_coeffs(ts)
    rho = sigma / alpha
    for k in (3, 5):  # the first full AB4 step and a later one
        eps = [model(xs[k - j], ts[k - j].expand(16)) for j in range(4)]
        y = xs[k] / alpha[k] + (rho[k + 1] - rho[k]) * sum(b * e for b, e in zip(AB4, eps))
        # measured max |diff| 4.0e-15 (vp), 8.9e-16 (subvp), 8.9e-16 (ve); tol 1e-12
        torch.testing.assert_close(xs[k + 1], alpha[k + 1] * y, rtol=0, atol=1e-12)


def scipy_tab_weights(sde: SDE, ts: torch.Tensor, k: int, order: int) -> list[float]:
    """C[k, j] = int_{t_k}^{t_{k+1}} L_j(t) drho/dt dt by adaptive quadrature in t, with drho/dt
    by the 4th-order central difference of rho(t) = sigma_t / alpha_t (step 1e-4 t: truncation
    and rounding balance near 5e-13; 1e-3 t leaves 1.3e-10, 1e-2 t 1.3e-6)."""
    integrate = pytest.importorskip("scipy.integrate")

    def rho(t: float) -> float:
        alpha, sigma = sde.marginal_coeffs(torch.tensor([t], dtype=F64))
        return float(sigma / alpha)

    def drho(t: float) -> float:
        h = 1e-4 * t
        return (-rho(t + 2 * h) + 8 * rho(t + h) - 8 * rho(t - h) + rho(t - 2 * h)) / (12 * h)

    knots = [float(ts[k - m]) for m in range(order)]

    def basis(j: int, t: float) -> float:
        return math.prod((t - knots[m]) / (knots[j] - knots[m]) for m in range(order) if m != j)

    return [integrate.quad(lambda t, j=j: basis(j, t) * drho(t), float(ts[k]), float(ts[k + 1]),
                           epsabs=0, epsrel=1e-13, limit=200)[0] for j in range(order)]


@pytest.mark.parametrize("sde_name", list(DIFFUSION_SDES))
@pytest.mark.parametrize("spacing", ["logsnr", "uniform"])
def test_deis_tab2_weights_and_step_match_scipy_quadrature(sde_name: str, spacing: str) -> None:
    sde = SDES[sde_name]()
    ts = grid(sde, 6, spacing)
    weights = tab_coefficients(sde, ts, 2)
    worst = 0.0
    for k in range(1, 6):
        ref = torch.tensor(scipy_tab_weights(sde, ts, k, 2), dtype=F64)
        worst = max(worst, float(((weights[k] - ref).abs() / ref.abs()).max()))
    print(f"\ntAB2 weights vs scipy.quad {sde_name} {spacing}: max rel. diff {worst:.1e}")
    # measured max relative difference 1.1e-13 - 5.1e-13 (the finite differences'); tol 1e-10
    assert worst <= 1e-10
    # one tAB2 step, written out: y_{k+1} = y_k + C0 eps_k + C1 eps_{k-1}
    model = GM.eps_model(sde)
    xs = trajectory(sample_deis, sde, ts, order=2)
    alpha, _ = sde.marginal_coeffs(ts)
    k = 3
    c = scipy_tab_weights(sde, ts, k, 2)
    eps = [model(xs[k - j], ts[k - j].expand(16)) for j in range(2)]
    y = xs[k] / alpha[k] + c[0] * eps[0] + c[1] * eps[1]
    # the scipy weights' 5e-13 relative error times |eps| ~ 1; tol 1e-10
    torch.testing.assert_close(xs[k + 1], alpha[k + 1] * y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde_name", list(DIFFUSION_SDES))
def test_quadrature_is_converged_to_rounding(sde_name: str) -> None:
    """The package's 8-node pieces of <= 0.5 in log-SNR against 24 nodes on pieces <= 0.1, and
    the partition of unity: the weights of a row sum to ``rho_{k+1} - rho_k`` exactly."""
    sde = SDES[sde_name]()
    worst, worst_sum = 0.0, 0.0
    for steps in (2, 5, 19, 200):
        for spacing in ("uniform", "quadratic", "logsnr", "karras"):
            ts = grid(sde, steps, spacing)
            coeffs = grid_coeffs(sde, ts)
            lam, rho = coeffs.log_snr, coeffs.sigma_tilde
            weights = tab_coefficients(sde, ts, 3)
            fine = lagrange_coefficients(lam, ts, lambda u: time_from_log_snr(sde, u), 3,
                                         nodes=24, width=0.1)
            scale = weights.abs().max(dim=1).values
            worst = max(worst, float(((weights - fine).abs().max(dim=1).values / scale).max()))
            drift = (weights.sum(dim=1) - (rho[1:] - rho[:-1])).abs() / rho[:-1]
            worst_sum = max(worst_sum, float(drift.max()))
    print(f"\n{sde_name}: quadrature vs 3x nodes {worst:.1e}, partition of unity {worst_sum:.1e}")
    # measured: vp 4.0e-14 / 1.8e-15, subvp 4.2e-14 / 2.3e-15, ve 2.4e-13 / 8.5e-16 (the first
    # relative to the row's largest weight, which on VE's 200 quadratic steps is 2e-4 of rho:
    # rounding in rho at 1e-16 then reads as 2e-13); tol 1e-12 / 1e-14.
    assert worst <= 1e-12
    assert worst_sum <= 1e-14


def test_time_from_log_snr_is_accurate_where_the_closed_form_is_not() -> None:
    """Sub-VP's closed-form inverse loses digits near t = 0; the Newton-polished one does not."""
    sde = SubVPSDE()
    t = torch.tensor([1e-3, 3e-3, 0.1, 0.5, 1.0], dtype=F64)
    lam = sde.log_snr(t)
    raw = ((sde.t_from_log_snr(lam) - t).abs() / t).max()
    polished = ((time_from_log_snr(sde, lam) - t).abs() / t).max()
    print(f"\nsub-VP t(lambda) relative error: closed form {raw:.1e}, polished {polished:.1e}")
    assert polished <= 1e-14  # measured 1.3e-15 (closed form: 3.7e-12)


@pytest.mark.parametrize("sde_name", list(DIFFUSION_SDES))
def test_variable_step_ipndm_is_fixed_on_an_equal_step_rho_grid(sde_name: str) -> None:
    sde = SDES[sde_name]()
    ends = grid_coeffs(sde, grid(sde, 1)).sigma_tilde
    rho = torch.linspace(float(ends[0]), float(ends[1]), 13, dtype=F64)
    fixed = ipndm_coefficients(rho, 4)
    variable = ipndm_coefficients(rho, 4, variable_step=True)
    # measured max |diff| / max |weight| 5.0e-15 - 8.2e-15; tol 1e-12
    torch.testing.assert_close(variable, fixed, rtol=1e-12, atol=1e-12 * float(ends[0]))
    on_logsnr = grid_coeffs(sde, grid(sde, 12)).sigma_tilde  # steps shrinking by a constant ratio
    # there they differ: measured max |diff| 0.07-0.12 rho_0
    assert (ipndm_coefficients(on_logsnr, 4, variable_step=True)
            - ipndm_coefficients(on_logsnr, 4)).abs().max() > 1e-3 * float(on_logsnr[0])


# -------------------------------------------------------------------------------------------------
# (d) many steps
@pytest.mark.parametrize("sde_name", list(DIFFUSION_SDES))
def test_deis_keeps_converging_at_many_steps(sde_name: str) -> None:
    """No blow-up from 200 to 500 steps: the weights are exact float64 integrals (diffusers' float32
    closed form, on the same grids, measured below in (e), goes from 4.9e-4 at 100 steps to 3.7e-2
    at 500 on VP)."""
    steps = (200, 350, 500)
    e64 = [endpoint_error(sde_name, "deis", s) for s in steps]
    e32 = [endpoint_error(sde_name, "deis", s, dtype=F32) for s in steps]
    print(f"\ndeis3 {sde_name} float64 {fmt(e64)}\n      float32 {fmt(e32)}")
    # measured float64: vp 3.97e-5 7.78e-6 2.72e-6; subvp 1.15e-4 2.29e-5 8.05e-6;
    # ve 1.93e-5 3.68e-6 1.27e-6 (ratios 5.0-5.3 and 2.9, third order: (7/4)^3 = 5.4,
    # (10/7)^3 = 2.9); float32 within 1.43x of float64 (ratios 2.2-2.7 at the last step, where
    # its rounding, ~1e-6 here, starts to show).
    for errs in (e64, e32):
        assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert all(b <= 2.0 * a for a, b in zip(e64, e32)), (e64, e32)
    assert e64[-1] <= 1e-5


# -------------------------------------------------------------------------------------------------
# (e) diffusers
def _vp_scale(rho: torch.Tensor) -> torch.Tensor:
    """diffusers' schedulers are VP-only: their state is ``y / sqrt(1 + rho^2)``."""
    return 1 / torch.sqrt(1 + rho**2)


def diffusers_deis(sde: SDE, x_T: torch.Tensor, ts: torch.Tensor, order: int,
                   dtype: torch.dtype = F64) -> torch.Tensor:
    """diffusers' DEISMultistepScheduler (algorithm "deis", solver "logrho", eps prediction) on
    our grid: its ``sigmas`` are EDM's sigma = rho, replaced by ours (float64 unless ``dtype``)."""
    diffusers = pytest.importorskip("diffusers")
    coeffs = grid_coeffs(sde, ts)
    a_vp = _vp_scale(coeffs.sigma_tilde)
    scheduler = diffusers.DEISMultistepScheduler(solver_order=order, lower_order_final=False,
                                                 algorithm_type="deis", solver_type="logrho")
    scheduler.set_timesteps(len(ts) - 1)
    scheduler.sigmas = coeffs.sigma_tilde.to(dtype)
    model = GM.eps_model(sde)
    x = (x_T / coeffs.alpha[0] * a_vp[0]).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, timestep in enumerate(scheduler.timesteps):
            x_ours = (coeffs.alpha[k] / a_vp[k] * x.to(F64)).to(dtype)
            eps = model(x_ours, ts[k].to(dtype).expand(x.shape[0]))
            x = scheduler.step(eps, timestep, x).prev_sample
    return x.to(F64) / a_vp[-1] * coeffs.alpha[-1]


def logrho_deis(sde: SDE, x_T: torch.Tensor, ts: torch.Tensor, order: int) -> torch.Tensor:
    """Our multistep with the Lagrange basis in log rho = -lambda instead of t."""
    coeffs = grid_coeffs(sde, ts)
    weights = lagrange_coefficients(coeffs.log_snr, -coeffs.log_snr, lambda lam: -lam, order)
    return eps_multistep(GM.eps_model(sde), x_T, ts, coeffs.alpha, weights)[0]


@pytest.mark.parametrize("sde_name", list(DIFFUSION_SDES))
@pytest.mark.parametrize("order", [2, 3])
def test_deis_against_diffusers(sde_name: str, order: int) -> None:
    sde, x_T, ref = ode_reference(sde_name)
    ts = grid(sde, 20)
    theirs = diffusers_deis(sde, x_T, ts, order)
    ours = sample_deis(GM.eps_model(sde), sde, x_T, ts, order=order)[0]
    logrho = logrho_deis(sde, x_T, ts, order)
    err = {k: float((v - ref).norm(dim=1).mean()) for k, v in
           (("diffusers", theirs), ("tAB", ours), ("logrho", logrho))}
    print(f"\ndeis{order} {sde_name} 20 steps: |diffusers - logrho| "
          f"{(theirs - logrho).abs().max():.1e}, "
          f"|diffusers - tAB| {(theirs - ours).abs().max():.1e}; "
          f"errors {', '.join(f'{k} {v:.2e}' for k, v in err.items())}")
    # diffusers' closed-form ind_fn weights are the integrals of the Lagrange basis in log rho:
    # measured max |diff| 8.7e-15 - 4.4e-14 over the six cases; tol 1e-11.
    torch.testing.assert_close(theirs, logrho, rtol=0, atol=1e-11)
    if sde_name == "ve":  # t = (log rho - log sigma_min) / log(sigma_max/sigma_min): same rule
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-11)  # measured 4.9e-15, 3.4e-14
    else:
        # Different interpolation variable, different method: they part by about the error
        # itself (measured max |diff| 2.4e-2 - 8.6e-2). On these mixtures the log-rho rule is
        # the more accurate at 20 steps: vp 2.08e-2 vs 2.82e-2 (order 2), 9.6e-3 vs 1.24e-2 (3);
        # subvp 4.4e-2 vs 5.7e-2, 1.8e-2 vs 2.6e-2.
        assert (theirs - ours).abs().max() > 1e-3
        assert err["logrho"] < err["tAB"]


def test_diffusers_float32_deis_degrades_with_many_steps_and_ours_does_not() -> None:
    """Documented, not a property of ours: diffusers keeps its sigmas and ind_fn weights in
    float32, and its 3rd-order weights (differences of two O(rho) terms divided by log-rho
    gaps of O(1/N)) lose digits as N grows. Measured on VP, logsnr grids, float32 state:
    diffusers 4.9e-4 (100 steps), 8.1e-4 (160), 9.7e-4 (200), 3.3e-4 (300), 3.7e-2 (500);
    ours 2.8e-4 (100), 4.0e-5 (200), 3.4e-6 (500)."""
    sde, x_T, ref = ode_reference("vp")
    theirs = {s: float((diffusers_deis(sde, x_T.float(), grid(sde, s), 3, dtype=F32) - ref)
                       .norm(dim=1).mean()) for s in (100, 500)}
    ours = {s: endpoint_error("vp", "deis", s, dtype=F32) for s in (100, 500)}
    print(f"\nfloat32 deis3 vp: diffusers {theirs}, ours {ours}")
    assert ours[500] < ours[100] / 20  # measured 82x


@pytest.mark.parametrize("sde_name", list(DIFFUSION_SDES))
def test_ipndm_against_diffusers(sde_name: str) -> None:
    """diffusers' IPNDMScheduler is the same fixed-weight AB4 in rho, on other conventions: its
    model output is v (it forms eps = sigma x + alpha v), its state VP-scaled, its default grid
    sigma = sin^2(pi s / 2) for uniform s with model time (2/pi) atan(rho). Fed our grid through
    ``trained_betas`` (its betas are the VP sigma) and v from our eps, it is our iPNDM."""
    diffusers = pytest.importorskip("diffusers")
    sde, x_T, _ = ode_reference(sde_name)
    ts = grid(sde, 20)
    coeffs = grid_coeffs(sde, ts)
    a_vp = _vp_scale(coeffs.sigma_tilde)
    s_vp = coeffs.sigma_tilde * a_vp
    scheduler = diffusers.IPNDMScheduler(num_train_timesteps=20, trained_betas=s_vp.tolist())
    scheduler.set_timesteps(20)
    # its tables are float32 (max |diff| 7.7e-6 - 1.5e-5 with them); the float64 ones
    # isolate the algorithm
    scheduler.betas, scheduler.alphas = s_vp, a_vp
    model = GM.eps_model(sde)
    x = x_T / coeffs.alpha[0] * a_vp[0]
    for k, timestep in enumerate(scheduler.timesteps):
        eps = model(coeffs.alpha[k] / a_vp[k] * x, ts[k].expand(x.shape[0]))
        v = (eps - s_vp[k] * x) / a_vp[k]
        x = scheduler.step(v, timestep, x).prev_sample
    theirs = x / a_vp[-1] * coeffs.alpha[-1]
    ours = sample_ipndm(model, sde, x_T, ts, order=4)[0]
    # measured max |diff| 4.7e-15 (vp), 1.5e-14 (subvp), 1.8e-15 (ve); tol 1e-11
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-11)
