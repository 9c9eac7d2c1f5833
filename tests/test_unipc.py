"""UniPC (``sde_gen.sampling.unipc``) against exact math.

(a) Order 1 without UniC is DDIM(eta=0) = DPM-Solver-1, to float64 round-off (VP, sub-VP, VE).
(b) With UniC, UniPC-p converges at order p + 1 ([Zhao23] Thm. 3.2): ratios ~4 / ~8 / ~16 per
    doubling of the steps for p = 1 / 2 / 3; the bare predictor UniP-p at order p.
(c) UniC beats the bare predictor at equal NFE.
(d) An independent reference: UniPC-2 with B(h) = e^h - 1, the paper's data-prediction updates
    written out here with scalars, step by step; UniP-2 bh2 = DPM-Solver++(2M).
(e) diffusers' ``UniPCMultistepScheduler`` (predict_x0=True) on the discrete VP chain, when
    diffusers is importable.
(f) Robustness: a large final log-SNR step stays finite, NFE = intervals + 1, input checks.

All numerics in float64; tolerances and measured values are stated at each assertion. Model: the
exact eps of a 2-D, 3-component Gaussian mixture with unequal weights (the mixture of
tests/test_sampler_equivalence.py), endpoint errors as there: mean Euclidean distance to the exact
probability-flow ODE endpoint at eps (dopri5, tol 1e-10) over 256 prior samples, no denoising.
"""

from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch

from helpers import DIFFUSION_SDES, SDES, mixture, ode_reference, seeded
from sde_gen.errors import UserInputError
from sde_gen.sampling import make_grid, sample
from sde_gen.sampling.unipc import FEW_STEPS, _step_orders, _unipc_coeffs, sample_unipc
from sde_gen.sde import SDE, VESDE, VPSDE

F64 = torch.float64


GM = mixture()


# -------------------------------------------------------------------------------------------------
# (a) order 1 without UniC = DDIM
@pytest.mark.parametrize("spacing,steps", [("logsnr", 10), ("uniform", 25)])
@pytest.mark.parametrize("sde_name", list(DIFFUSION_SDES))
def test_order_1_without_unic_is_ddim(sde_name: str, spacing: str, steps: int) -> None:
    sde = SDES[sde_name]()
    model = GM.eps_model(sde)
    x_T = sde.prior_sampling((64, 2), generator=seeded(1), dtype=F64)
    ts = make_grid(sde, steps, t_min=sde.default_t_min, spacing=spacing)
    ddim = sample(model, sde, None, "ddim", x_T=x_T, ts=ts, denoise=False)
    for variant in ("bh1", "bh2"):  # B(h) only weighs differences; order 1 has none
        uni = sample(model, sde, None, "unipc", x_T=x_T, ts=ts, denoise=False, order=1,
                     variant=variant, unic=False)
        assert uni.nfe == ddim.nfe == steps
        # measured max |diff| 6.9e-15 over the 6 cases and both variants; tolerance 1e-12
        torch.testing.assert_close(uni.x, ddim.x, rtol=0, atol=1e-12)


# -------------------------------------------------------------------------------------------------
# (b), (c) convergence to the exact probability-flow ODE endpoint


@lru_cache(maxsize=None)
def endpoint_errors(sde_name: str, steps_list: tuple[int, ...], **options) -> tuple[float, ...]:
    """Mean distance to the exact ODE endpoint at eps; default log-SNR grid, no denoising."""
    sde, x_T, ref = ode_reference(sde_name)
    model = GM.eps_model(sde)
    errs = []
    for steps in steps_list:
        res = sample(model, sde, None, "unipc", x_T=x_T, steps=steps, denoise=False,
                     **{"spacing": "logsnr", **options})
        assert res.nfe == steps
        errs.append(float((res.x - ref).norm(dim=1).mean()))
    return tuple(errs)


def ratios(errs) -> list[float]:
    return [a / b for a, b in zip(errs, errs[1:])]


def fmt(errs) -> str:
    return (f"errors {' '.join('%.2e' % e for e in errs)} "
            f"ratios {' '.join('%.2f' % r for r in ratios(errs))}")


STEPS = {1: (20, 40, 80), 2: (20, 40, 80, 160), 3: (20, 40, 80, 160)}
CONV_P = pytest.mark.parametrize("sde_name", list(DIFFUSION_SDES))
ORDER_P = pytest.mark.parametrize("order", [1, 2, 3])
VARIANT_P = pytest.mark.parametrize("variant", ["bh1", "bh2"])


@VARIANT_P
@ORDER_P
@CONV_P
def test_unic_raises_the_order_by_one(sde_name: str, order: int, variant: str) -> None:
    """UniPC-p (UniP-p + UniC-p) is of order p + 1 ([Zhao23] Thm. 3.2), at no extra model call.

    Measured ratios (20 -> 40 -> 80 [-> 160] steps):
      p = 1: vp 3.94 3.67 3.82 (bh2), 3.43 3.57 3.78 (bh1); subvp 3.69 3.58 3.74, 3.97 3.44 3.67;
             ve 3.54 3.70 3.84, 3.40 3.60 3.80.  Second order: 4.
      p = 2: vp 4.37 6.54 7.84 (bh2), 5.51 7.08 8.17 (bh1); subvp 4.25 5.25 7.28, 7.60 5.99 7.73;
             ve 4.72 6.84 7.90, 5.72 7.34 8.19.  Third order: 8, reached from 80 steps.
      p = 3: vp 11.39 18.09 15.49; subvp 8.98 14.55 17.45; ve 12.50 17.61 14.77 (bh1 = bh2 to
             3 digits: with the order conditions solved exactly B(h) cancels, see
             test_b_of_h_cancels_where_the_order_conditions_are_solved).  Fourth order: 16.
    A missing correction (order p) gives 2^p; the bounds sit between the two."""
    errs = endpoint_errors(sde_name, STEPS[order], order=order, variant=variant)
    r = ratios(errs)
    print(f"\nunipc-{order} {variant} {sde_name} with UniC: {fmt(errs)}")
    assert all(a > b for a, b in zip(errs, errs[1:]))
    if order == 1:
        assert all(3.0 <= v <= 5.0 for v in r), r
    elif order == 2:  # pre-asymptotic at 20 -> 40 (4.25); third order from 80 -> 160
        assert all(v >= 4.0 for v in r) and 6.5 <= r[-1] <= 10.0, r
    else:
        assert all(v >= 8.0 for v in r) and 12.0 <= r[-1] <= 22.0, r
    # last errors (80 steps for p = 1, 160 otherwise) measured max 5.7e-3, 1.4e-4, 1.4e-5
    assert errs[-1] < {1: 8e-3, 2: 2e-4, 3: 2e-5}[order]


@VARIANT_P
@ORDER_P
@CONV_P
def test_unic_beats_the_bare_predictor_at_equal_nfe(sde_name: str, order: int,
                                                    variant: str) -> None:
    """Same grid, same NFE: UniC lowers the error at every step count. Bare UniP-p converges
    at order p: measured ratios from 40 steps on p = 1: 2.03-2.25; p = 2: 3.67-4.46; p = 3:
    7.04-8.93 (20 -> 40: 1.95-2.16, 3.71-5.98, 5.30-6.63). Measured bare / UniC error at 80
    steps: p = 1: 6.1-16.9; p = 2: 2.9-8.0; p = 3: 3.7-6.4 (at 20 steps 1.07-6.07, the least
    for sub-VP p = 3)."""
    unic = endpoint_errors(sde_name, STEPS[order], order=order, variant=variant)
    bare = endpoint_errors(sde_name, STEPS[order], order=order, variant=variant, unic=False)
    print(f"\nunipc-{order} {variant} {sde_name} bare UniP: {fmt(bare)}; bare / UniC "
          f"{' '.join('%.2f' % (b / u) for b, u in zip(bare, unic))}")
    assert all(u < b for u, b in zip(unic, bare))
    assert bare[2] / unic[2] >= 2.0
    assert all(0.7 * 2**order <= v <= 1.6 * 2**order for v in ratios(bare)[1:]), ratios(bare)


def test_b_of_h_cancels_where_the_order_conditions_are_solved() -> None:
    """``R a = g / B(h)`` makes ``B(h) a = R^{-1} g``: bh1 and bh2 differ only where a_1 = 1/2 is
    taken (UniP-2, UniC-1), i.e. for order 3 only on the warm-up steps."""
    sde = VPSDE()
    ts = make_grid(sde, 12, t_min=1e-3, spacing="quadratic")  # unequal log-SNR steps
    alpha, sigma = sde.marginal_coeffs(ts)
    lam = sde.log_snr(ts)
    orders = _step_orders(12, 3, lower_order_final=False)
    assert orders == [1, 2] + [3] * 10
    bh1, bh2 = (_unipc_coeffs(lam, alpha, sigma, orders, variant=v) for v in ("bh1", "bh2"))
    for k, (s1, s2) in enumerate(zip(bh1, bh2)):
        same_pred, same_corr = orders[k] == 3, orders[k] >= 2
        assert math.isclose(s1.c_x, s2.c_x) and math.isclose(s1.c_0, s2.c_0)
        for c1, c2, same in ((s1.c_pred, s2.c_pred, same_pred), (s1.c_corr, s2.c_corr, same_corr)):
            if same:  # measured rel. diff <= 6.8e-16; tolerance 1e-12
                assert all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(c1, c2)), (k, c1, c2)
            elif c1:  # measured rel. diff >= 0.66 (h = 0.44-1.47 on this grid)
                assert not all(math.isclose(a, b, rel_tol=1e-3) for a, b in zip(c1, c2))


# -------------------------------------------------------------------------------------------------
# (d) UniPC-2 bh2 written out
def phi_1(z: float) -> float:
    return (math.exp(z) - 1) / z


def phi_2(z: float) -> float:
    return (math.exp(z) - 1 - z) / z**2


def phi_3(z: float) -> float:
    return (math.exp(z) - 1 - z - z**2 / 2) / z**3


class Unipc2Bh2:
    """[Zhao23] App. (data prediction), B(h) = e^h - 1, with ``hh = -h`` the data-prediction
    step (paper symbols; float64 Python scalars for every coefficient):

        UniP-2:  x~_i = s_i/s_{i-1} x - a_i (e^hh - 1) m0 - a_i B(hh) (1/2) D1_1
        UniC-1:  x_i  = s_i/s_{i-1} x - a_i (e^hh - 1) m0 - a_i B(hh) (1/2) D1_t
        UniC-2:  x_i  = s_i/s_{i-1} x - a_i (e^hh - 1) m0 - a_i B(hh) (rho_1 D1_1 + rho_2 D1_t)

    with ``m0 = D(t_{i-1})``, ``D1_1 = (D(t_{i-2}) - m0) / r_1``, ``r_1 = (lambda_{i-2} -
    lambda_{i-1}) / h``, ``D1_t = D(x~_i, t_i) - m0`` and ``(rho_1, rho_2)`` solving
    ``[[1, 1], [r_1, 1]] rho = [hh phi_2(hh) / B, 2 hh phi_3(hh) / B]`` (1/2 for UniP-2 and
    UniC-1 as in the official code and diffusers)."""

    def __init__(self, sde: SDE, ts: torch.Tensor) -> None:
        alpha, sigma = sde.marginal_coeffs(ts)
        self.a, self.s = alpha.tolist(), sigma.tolist()
        self.lam = [math.log(a / s) for a, s in zip(self.a, self.s)]

    def _parts(self, i: int) -> tuple[float, float, float, float]:
        hh = -(self.lam[i] - self.lam[i - 1])
        big_b = math.expm1(hh)
        return hh, big_b, self.s[i] / self.s[i - 1], self.a[i]

    def unip(self, i, x, m0, m1=None):
        hh, big_b, ratio, a_i = self._parts(i)
        x_new = ratio * x - a_i * math.expm1(hh) * m0
        if m1 is None:  # UniP-1 = DDIM
            return x_new
        r1 = (self.lam[i - 2] - self.lam[i - 1]) / -hh
        return x_new - a_i * big_b * 0.5 * (m1 - m0) / r1

    def unic(self, i, x, m0, m_t, m1=None):
        hh, big_b, ratio, a_i = self._parts(i)
        x_new = ratio * x - a_i * math.expm1(hh) * m0
        if m1 is None:  # UniC-1
            return x_new - a_i * big_b * 0.5 * (m_t - m0)
        r1 = (self.lam[i - 2] - self.lam[i - 1]) / -hh
        b1, b2 = hh * phi_2(hh) / big_b, 2 * hh * phi_3(hh) / big_b
        rho_1 = (b1 - b2) / (1 - r1)  # Cramer on [[1, 1], [r1, 1]]
        rho_2 = b1 - rho_1
        return x_new - a_i * big_b * (rho_1 * (m1 - m0) / r1 + rho_2 * (m_t - m0))


@pytest.mark.parametrize("sde_name", list(DIFFUSION_SDES))
def test_unipc_2_bh2_steps_are_the_published_updates(sde_name: str) -> None:
    """Three intervals on an unequal grid (r_1 != -1): UniP-1, UniC-1, UniP-2, UniC-2, UniP-2;
    the callback's states (the corrected ones, then the last prediction) against the reference,
    model calls at the predicted points."""
    sde = SDES[sde_name]()
    model = GM.eps_model(sde)
    ts = torch.tensor([1.0, 0.55, 0.3, 0.12], dtype=F64)
    x_T = sde.prior_sampling((64, 2), generator=seeded(2), dtype=F64)
    states: list[torch.Tensor] = []
    x, _ = sample_unipc(model, sde, x_T, ts, order=2, variant="bh2", lower_order_final=False,
                        callback=lambda k, x, x_mean: states.append(x))

    ref = Unipc2Bh2(sde, ts)

    def denoised(x: torch.Tensor, i: int) -> torch.Tensor:
        return (x - ref.s[i] * model(x, ts[i].expand(x.shape[0]))) / ref.a[i]

    d0 = denoised(x_T, 0)
    x1_pred = ref.unip(1, x_T, d0)
    d1 = denoised(x1_pred, 1)
    x1 = ref.unic(1, x_T, d0, d1)
    x2_pred = ref.unip(2, x1, d1, d0)
    d2 = denoised(x2_pred, 2)
    x2 = ref.unic(2, x1, d1, d2, d0)
    x3_pred = ref.unip(3, x2, d2, d1)
    assert len(states) == 3
    # measured max |diff| 4.4e-16 over VP / sub-VP / VE (r_1 = -2.7, -2.3, -1.8 at the first
    # UniP-2 step); tolerance 1e-12
    for got, want in zip(states + [x], [x1, x2, x3_pred, x3_pred]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # the correction matters: max |x1 - x~1| measured 0.058-0.76 (a missing UniC would show)
    assert (x1 - x1_pred).abs().max() > 1e-3


@pytest.mark.parametrize("sde_name", list(DIFFUSION_SDES))
def test_unip_2_bh2_is_dpm_solver_pp_2m(sde_name: str) -> None:
    """With a_1 = 1/2 and B(h) = 1 - e^{-h}: alpha_s (1 - e^{-h}) (D_0 + (D_0 - D_1) / (2 r))."""
    sde = SDES[sde_name]()
    model = GM.eps_model(sde)
    x_T = sde.prior_sampling((64, 2), generator=seeded(4), dtype=F64)
    ts = make_grid(sde, 12, t_min=sde.default_t_min, spacing="quadratic")
    dpm = sample(model, sde, None, "dpm", x_T=x_T, ts=ts, denoise=False, order=2,
                 lower_order_final=False)
    uni = sample(model, sde, None, "unipc", x_T=x_T, ts=ts, denoise=False, order=2,
                 variant="bh2", unic=False, lower_order_final=False)
    # measured max |diff| 1.3e-15; tolerance 1e-12
    torch.testing.assert_close(uni.x, dpm.x, rtol=0, atol=1e-12)


# -------------------------------------------------------------------------------------------------
# (e) diffusers' UniPCMultistepScheduler
class DiscreteVPSDE(VPSDE):
    """VP whose ``marginal_coeffs`` are DDPM's discrete ``sqrt(abar_i)``, ``sqrt(1 - abar_i)`` at
    the nearest chain step: the table diffusers' schedulers walk (beta linspace(1e-4, 0.02, 1000)).
    ``sample_unipc`` reads its coefficients from ``grid_coeffs(sde, ts)``, so on this SDE it
    walks the discrete chain, as ddim's ``discrete=True``; the model stays the continuous one."""

    def marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.discrete_coeffs(self.time_to_index(t))


def diffusers_unipc(model, sde: SDE, x_T: torch.Tensor, steps: int, **config):
    """The diffusers loop: ``step(eps, t, x)`` per timestep; diffusers' integer timestep ``t``
    is continuous time ``sde.index_to_time(t)`` for the model. Returns (x, timesteps)."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
        prediction_type="epsilon", predict_x0=True, **config)
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    for t in scheduler.timesteps:
        eps = model(x, sde.index_to_time(t).expand(x.shape[0]))
        x = scheduler.step(eps, t, x).prev_sample
    return x, scheduler.timesteps


def rel_diff(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm(dim=1).max() / ref.norm(dim=1).max())


DIFFUSERS_P = pytest.mark.parametrize("order,variant", [(2, "bh1"), (2, "bh2"), (3, "bh1"),
                                                        (3, "bh2")])


@pytest.fixture(scope="module")
def discrete_problem():
    pytest.importorskip("diffusers")
    sde = DiscreteVPSDE()
    return sde, GM.eps_model(VPSDE()), torch.randn(256, 2, generator=seeded(6), dtype=F64)


@DIFFUSERS_P
@pytest.mark.parametrize("steps", [5, 9, 10, 20, 50])
def test_matches_diffusers_with_its_lower_order_final(discrete_problem, monkeypatch, steps,
                                                      order, variant) -> None:
    """diffusers' default ``lower_order_final=True`` lowers the last steps at any step count
    (``min(order, steps - k)``); ours only below :data:`FEW_STEPS` (6 for order 3, 10 for order
    2), so the threshold is lifted here to compare the rest. Grid: diffusers' "linspace"
    timesteps down to index 0 (``final_sigmas_type="sigma_min"``): ``steps`` intervals.
    Measured relative difference 3.1e-7 - 1.8e-6 over the 20 cases: diffusers' float32 sigmas
    (its abar is float32, rel. 3.6e-7 off ours), float32 R and b, against our float64."""
    sde, model, x_T = discrete_problem
    ref, timesteps = diffusers_unipc(model, sde, x_T, steps, solver_order=order,
                                     solver_type=variant, lower_order_final=True,
                                     final_sigmas_type="sigma_min")
    monkeypatch.setitem(FEW_STEPS, order, 10**6)
    ts = sde.index_to_time(torch.cat([timesteps, torch.zeros(1, dtype=timesteps.dtype)]))
    x, _ = sample_unipc(model, sde, x_T, ts, order=order, variant=variant)
    rel = rel_diff(x, ref)
    print(f"\ndiffusers unipc-{order} {variant} {steps} steps: rel. diff {rel:.2e}")
    assert rel <= 1e-5


@DIFFUSERS_P
@pytest.mark.parametrize("steps", [10, 20])
def test_matches_diffusers_without_lower_order_final(discrete_problem, steps, order,
                                                     variant) -> None:
    """``lower_order_final=False`` on both sides. Measured relative difference 4.7e-6 - 6.8e-5:
    larger than above because diffusers' linspace grid ends with one long log-SNR step (index
    100 -> 0 at 10 steps: h = 3.5, 4.7x the previous; 50 -> 0 at 20 steps: 4.3x), over which the
    order-2/3 extrapolation amplifies the float32 rounding. The results are poor there: endpoint
    error at 10 steps 0.41 (order 2) and 3.6 (order 3) against 0.11 with diffusers'
    lower_order_final (our FEW_STEPS rule keeps order 3 on such a last step from 6 intervals
    on; it was measured on log-SNR grids, whose steps are equal)."""
    sde, model, x_T = discrete_problem
    ref, timesteps = diffusers_unipc(model, sde, x_T, steps, solver_order=order,
                                     solver_type=variant, lower_order_final=False,
                                     final_sigmas_type="sigma_min")
    ts = sde.index_to_time(torch.cat([timesteps, torch.zeros(1, dtype=timesteps.dtype)]))
    x, _ = sample_unipc(model, sde, x_T, ts, order=order, variant=variant,
                        lower_order_final=False)
    rel = rel_diff(x, ref)
    print(f"\ndiffusers unipc-{order} {variant} {steps} steps, no lower_order_final: "
          f"rel. diff {rel:.2e}")
    assert rel <= 2e-4


@pytest.mark.parametrize("steps", [10, 20])
def test_diffusers_final_step_to_sigma_zero_is_our_final_denoise(discrete_problem,
                                                                 steps) -> None:
    """diffusers' default ``final_sigmas_type="zero"``: its last step (order 1 by its
    lower_order_final) goes to sigma = 0, which is Tweedie's x0 at the predicted point, i.e. our
    ``sample(..., denoise=True)`` on the grid of its timesteps (``steps - 1`` intervals, then the
    denoise: the same ``steps`` model calls). Order 2 bh2, measured rel. diff 8.8e-7 (10), 3.8e-7
    (20). Known differences, not asserted: with bh1 diffusers 0.42.1 returns NaN there (B(h) =
    hh = -inf times a zero predictor term); with order 3 it also drops the second-to-last step to
    order 2 (rel. diff 0.06-0.09 to ours, where that step stays order 3)."""
    sde, model, x_T = discrete_problem
    ref, timesteps = diffusers_unipc(model, sde, x_T, steps, solver_order=2, solver_type="bh2")
    res = sample(model, sde, None, "unipc", x_T=x_T, ts=sde.index_to_time(timesteps), order=2,
                 variant="bh2", lower_order_final=False)
    assert res.nfe == steps
    rel = rel_diff(res.x, ref)
    print(f"\ndiffusers zero-final 2 bh2 {steps} steps: rel. diff {rel:.2e}")
    assert rel <= 1e-5
    bh1, _ = diffusers_unipc(model, sde, x_T, steps, solver_order=2, solver_type="bh1")
    ours = sample(model, sde, None, "unipc", x_T=x_T, ts=sde.index_to_time(timesteps), order=2,
                  variant="bh1", lower_order_final=False)
    print(f"diffusers bh1 zero-final finite: {bool(torch.isfinite(bh1).all())}; "
          f"ours: {bool(torch.isfinite(ours.x).all())}")
    assert torch.isfinite(ours.x).all()


# -------------------------------------------------------------------------------------------------
# (f) robustness, NFE, input checks
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_large_final_log_snr_step_stays_finite(order: int, variant: str) -> None:
    """Final log-SNR steps h = 12 (VP to t = 1e-9) and 11 (VE with sigma_min = 1e-8, to t = 0):
    e^{-h} underflows harmlessly and no coefficient is inf * 0 (diffusers' bh1 NaN)."""
    cases = [(VPSDE(), torch.tensor([1.0, 0.6, 0.4, 1e-9], dtype=F64)),
             (VESDE(sigma_min=1e-8, sigma_max=50.0), torch.tensor([1.0, 0.7, 0.5, 0.0], dtype=F64))]
    for sde, ts in cases:
        h = sde.log_snr(ts).diff()
        assert h[-1] > 10  # measured 12.2 (VP), 11.2 (VE)
        model = GM.eps_model(sde)
        x_T = sde.prior_sampling((32, 2), generator=seeded(7), dtype=F64)
        for unic in (True, False):
            for lower_order_final in (True, False):
                x, _ = sample_unipc(model, sde, x_T, ts, order=order, variant=variant, unic=unic,
                                    lower_order_final=lower_order_final)
                assert torch.isfinite(x).all(), (type(sde).__name__, unic, lower_order_final)


def test_an_infinite_log_snr_is_refused() -> None:
    """VP at t = 0 has sigma = 0: h = inf is no step for a multistep method; sample() refuses
    such a grid before the first model call (the solver function trusts its inputs)."""
    sde = VPSDE()
    x_T = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(UserInputError, match="must be > 0"):
        sample(GM.eps_model(sde), sde, None, "unipc", x_T=x_T,
               ts=torch.tensor([1.0, 0.5, 0.0], dtype=F64))


@pytest.mark.parametrize("unic", [True, False])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_nfe_is_intervals_plus_the_final_denoise(order: int, unic: bool) -> None:
    sde = VPSDE()
    for steps in (1, 2, 5, 19):
        res = sample(GM.eps_model(sde), sde, (8, 2), "unipc", steps=steps, dtype=F64, order=order,
                     unic=unic, generator=seeded(0), return_trajectory=True)
        assert res.nfe == steps + 1
        assert res.trajectory.shape == (steps + 1, 8, 2)
        assert torch.isfinite(res.x).all()


def test_lower_order_final_rule() -> None:
    """Warm-up 1, 2, .., order; below FEW_STEPS intervals at most ``steps - k`` at interval k.
    Threshold evidence (order 3 bh2, endpoint error without / with it over 2d/8d x VP/sub-VP/VE,
    tests/test_sampler_convergence.py's problems; geometric mean, min-max): 4 intervals 1.81
    (1.01-3.02), 5: 1.40 (0.82-3.24), 6: 0.77 (0.42-1.20), 7: 0.68, 8: 0.69, 9: 0.79; order 2
    bh2: 4: 1.06, 5: 1.16, 6: 1.11, 7: 1.05, 8: 1.02, 9: 1.01, 10-12: 1.01 (bh1: 2.47 at 4 down
    to 1.04 at 9, 1.01 at 10)."""
    assert FEW_STEPS == {2: 10, 3: 6}
    assert _step_orders(8, 3) == [1, 2, 3, 3, 3, 3, 3, 3]
    assert _step_orders(5, 3) == [1, 2, 3, 2, 1]
    assert _step_orders(5, 3, lower_order_final=False) == [1, 2, 3, 3, 3]
    assert _step_orders(9, 2) == [1, 2, 2, 2, 2, 2, 2, 2, 1]
    assert _step_orders(10, 2) == [1] + [2] * 9
    assert _step_orders(2, 3) == [1, 1]
    assert _step_orders(4, 1) == [1] * 4


@pytest.mark.parametrize("options,match", [
    (dict(order=4), "order must be 1 or 2 or 3"),
    (dict(order=0), "order must be 1 or 2 or 3"),
    (dict(variant="bh3"), "unknown UniPC variant 'bh3'"),
    (dict(unic="yes"), "unic must be of type bool"),
    (dict(corrector="langevin"), "takes no option 'corrector'"),
])
def test_sample_rejects_bad_options(options: dict, match: str) -> None:
    sde = VPSDE()
    with pytest.raises(UserInputError, match=match):
        sample(GM.eps_model(sde), sde, (4, 2), "unipc", steps=3, **options)


@pytest.mark.parametrize("options,match", [
    (dict(order=4), "order must be 1 or 2 or 3, got 4"),
    (dict(variant="bh3"), "unknown UniPC variant 'bh3'"),
])
def test_bad_options_are_refused_before_dispatch(options: dict, match: str) -> None:
    sde = VPSDE()
    ts = make_grid(sde, 3, t_min=1e-3, spacing="logsnr")
    calls = []
    with pytest.raises(UserInputError, match=match):
        sample(lambda x, t: calls.append(1) or x, sde, (4, 2), "unipc", ts=ts, **options)
    assert not calls  # checked once, before the first model call


def test_a_grid_of_one_time_is_refused() -> None:
    sde = VPSDE()
    with pytest.raises(UserInputError, match="at least 2 times"):
        sample(GM.eps_model(sde), sde, (4, 2), "unipc", ts=torch.tensor([1.0], dtype=F64))
