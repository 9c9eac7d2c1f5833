"""k-diffusion interop (sde_gen.interop.k_diffusion): the conversions against closed forms, and
k-diffusion's own samplers against ours on the same grids.

The conversions need no k-diffusion; the peer comparisons skip without it. All in float64 on
the exact mixture of tests/helpers.py, tolerances stated at each assertion.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import pytest
import torch
from torch import nn

from helpers import DIFFUSION_SDES, F64, FLOW_SDES, SDES, mixture, seeded, user_error
from sde_gen.errors import UserInputError
from sde_gen.interop.k_diffusion import DenoiserEpsModel, KarrasDenoiser, from_denoiser
from sde_gen.sampling import sample
from sde_gen.sampling.grids import make_grid
from sde_gen.sde import VESDE

torch.set_num_threads(1)
S_DATA = 0.7  # std of the isotropic Gaussian data of the shape tests


def gaussian_eps(sde):
    """Exact eps-model of data N(0, S_DATA^2 I), any shape:
    ``sigma_t x / (alpha^2 s^2 + sigma^2)``."""

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = (c.to(x.dtype) for c in sde.marginal_coeffs(t))
        shape = (-1,) + (1,) * (x.ndim - 1)
        return (sigma / (alpha**2 * S_DATA**2 + sigma**2)).reshape(shape) * x

    return model


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """EDM's ideal denoiser of N(0, S_DATA^2 I) in sigma form: ``s^2 / (s^2 + sigma^2) x``."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (S_DATA**2 / (S_DATA**2 + sigma.to(x.dtype) ** 2)).reshape(shape) * x


class _SigmaIsTime:
    """A duck-typed SDE whose time is the VE noise level: ``(alpha, sigma) = (1, t)``, so that
    ``GaussianMixture.denoise(x, sigma, _SigmaIsTime())`` is the mixture's exact EDM denoiser."""

    @staticmethod
    def marginal_coeffs(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones_like(t), t


def mixture_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """k-diffusion-style exact denoiser ``D(x, sigma)`` of the helpers' mixture."""
    return mixture().denoise(x, sigma, _SigmaIsTime()).to(x.dtype)


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, msg
    return msg


def prior(sde, n: int = 64, seed: int = 0) -> tuple[torch.Tensor, float]:
    """``(x_T, alpha_T)``: n prior draws in 2-D and the SDE's ``alpha_T``."""
    x_T = sde.prior_sampling((n, 2), generator=seeded(seed), dtype=F64)
    alpha_T = float(sde.marginal_coeffs(torch.tensor([sde.T], dtype=F64))[0])
    return x_T, alpha_T


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# -- conversions (no k-diffusion) -----------------------------------------------------------------
@pytest.mark.parametrize("name", list(DIFFUSION_SDES))
def test_denoiser_is_the_exact_mixture_denoiser(name):
    sde, gm = SDES[name](), mixture()
    model = gm.eps_model(sde)
    kd = KarrasDenoiser(model, sde)
    t = torch.linspace(sde.T, sde.default_t_min, 16, dtype=F64)
    x_t = torch.randn(16, 2, generator=seeded(1), dtype=F64) * 3
    alpha_t = sde.marginal_coeffs(t)[0][:, None]
    want = gm.denoise(x_t, t, sde)
    got = kd(x_t / alpha_t, kd.t_to_sigma(t))
    # sub-VP's inverse log-SNR is exact to ~1e-12 in t; VP and VE to ~1e-15.
    assert rel_err(got, want) < 1e-9
    # sigma given as a scalar: one noise level for the batch
    got1 = kd(x_t[:4] / alpha_t[4], float(kd.t_to_sigma(t[4])))
    assert rel_err(got1, gm.denoise(x_t[:4], t[4].expand(4), sde)) < 1e-9


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4, 4)])
@pytest.mark.parametrize("name", list(DIFFUSION_SDES))
def test_denoiser_shapes_and_closed_form(name, shape):
    sde = SDES[name]()
    kd = KarrasDenoiser(gaussian_eps(sde), sde)
    x = torch.randn(shape, generator=seeded(2), dtype=F64) * 5
    sigma = torch.tensor([kd.sigma_max, 3.0, 0.5, 0.1, kd.sigma_min][: shape[0]], dtype=F64)
    assert rel_err(kd(x, sigma), gaussian_denoiser(x, sigma)) < 1e-12
    out32 = kd(x.float(), sigma.float())
    assert out32.dtype == torch.float32 and out32.shape == x.shape
    assert rel_err(out32.double(), gaussian_denoiser(x, sigma)) < 1e-5  # float32 rounding


def test_sigma_grid_and_time_maps():
    for name in FLOW_SDES:  # sigma_max = inf: refused in one line
        msg = user_error(lambda name=name: KarrasDenoiser(gaussian_eps(SDES[name]()),
                                                          SDES[name]()))
        assert "sigma_max" in msg and "inf at T" in msg
    for name in DIFFUSION_SDES:
        sde = SDES[name]()
        kd = KarrasDenoiser(gaussian_eps(sde), sde)
        s = kd.sigmas(10)
        assert s.shape == (11,) and s[-1] == 0 and (s[1:] < s[:-1]).all()
        assert s[0] == kd.sigma_max and s[-2] == kd.sigma_min
        t = kd.sigma_to_t(s[:-1])
        assert abs(float(t[0]) - sde.T) < 1e-12 and abs(float(t[-1]) - sde.default_t_min) < 1e-9
        assert rel_err(kd.t_to_sigma(t), s[:-1]) < 1e-11
    ve = VESDE(0.002, 80.0)
    kd = KarrasDenoiser(gaussian_eps(ve), ve)
    assert kd.sigma_max == 80.0
    assert kd.sigma_to_t(torch.tensor([0.002, 80.0], dtype=F64)).tolist() == [0, 1]
    ramp = torch.linspace(0, 1, 6, dtype=F64)  # k-diffusion's get_sigmas_karras, Eq. (5)
    lo, hi = kd.sigma_min ** (1 / 7), 80.0 ** (1 / 7)
    assert rel_err(kd.sigmas(6)[:-1], (hi + ramp * (lo - hi)) ** 7) < 1e-14


def test_from_denoiser_round_trip_is_identity():
    model, ve = from_denoiser(gaussian_denoiser, 0.002, 80.0)
    assert isinstance(model, DenoiserEpsModel) and isinstance(ve, VESDE)
    assert (ve.sigma_min, ve.sigma_max) == (0.002, 80.0)
    kd = KarrasDenoiser(model, ve)
    x = torch.randn(6, 2, 3, 3, generator=seeded(3), dtype=F64) * 10
    sigma = torch.tensor([80.0, 20.0, 1.0, 0.1, 0.01, 0.002], dtype=F64)
    assert rel_err(kd(x, sigma), gaussian_denoiser(x, sigma)) < 1e-13
    # the eps-model is Tweedie's inverse on VE: eps = (x - D) / sigma_t
    t = kd.sigma_to_t(sigma)
    eps = (x - gaussian_denoiser(x, sigma)) / sigma[:, None, None, None]
    assert rel_err(model(x, t), eps) < 1e-13


@pytest.mark.parametrize("solver", ["heun", "ddim"])
@pytest.mark.parametrize("name", ["vp", "subvp"])
def test_vp_through_a_denoiser_is_the_same_ode(name, solver):
    """``from_denoiser(KarrasDenoiser(model, vp))`` is the VP PF-ODE in ``(x/alpha, sigma/alpha)``
    ([Karras22] Sec. 2): heun and ddim on matched grids give the same samples."""
    sde = SDES[name]()
    model = mixture().eps_model(sde)
    kd = KarrasDenoiser(model, sde)
    ve_model, ve = from_denoiser(kd, kd.sigma_min / 2, kd.sigma_max)
    ts = make_grid(sde, 12, t_min=sde.default_t_min, spacing="karras")
    ts_ve = KarrasDenoiser(ve_model, ve).sigma_to_t(kd.t_to_sigma(ts))
    x_T, alpha_T = prior(sde)
    ours = sample(model, sde, None, solver, x_T=x_T, ts=ts).x
    via = sample(ve_model, ve, None, solver, x_T=x_T / alpha_T, ts=ts_ve).x
    assert rel_err(via, ours) < 1e-10  # rounding of the t <-> sigma maps


def test_module_registration_and_extra_args():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(0.5, dtype=F64))

        def forward(self, x, t, *, shift=0.0):
            return self.scale * x + shift

    sde, net = SDES["vp"](), Net()
    kd = KarrasDenoiser(net, sde)
    assert list(kd.parameters()) == [net.scale]
    x, s = torch.ones(3, 2, dtype=F64), torch.full((3,), 2.0, dtype=F64)
    assert torch.allclose(kd(x, s, shift=1.0) - kd(x, s), -2.0 * torch.ones_like(x))
    assert list(KarrasDenoiser(gaussian_eps(sde), sde).parameters()) == []
    model, _ = from_denoiser(lambda x, sigma, *, y: x * 0 + y, 0.1, 10.0)
    assert torch.equal(model(x, torch.full((3,), 0.5, dtype=F64), y=x), torch.zeros_like(x))


def test_bad_input_one_line_errors():
    ve = SDES["ve"]()
    kd = KarrasDenoiser(gaussian_eps(ve), ve)
    vp_kd = KarrasDenoiser(gaussian_eps(SDES["vp"]()), SDES["vp"]())
    x = torch.zeros(3, 2, dtype=F64)
    cases = [
        (lambda: KarrasDenoiser(42, ve), "model must be callable"),
        (lambda: KarrasDenoiser(gaussian_eps(ve), "ve"), "sde must be an sde_gen SDE"),
        (lambda: kd(x, 0.005), "sigma must lie in [0.01, 50]"),
        (lambda: kd(x, 51.0), "sigma must lie in"),
        (lambda: kd(x, float("nan")), "got NaN"),
        (lambda: vp_kd(x, 0.0), "sigma must lie in [0 (exclusive)"),
        (lambda: kd(x, torch.ones(2)), "sigma must be a scalar or of shape (3,)"),
        (lambda: kd(x, "big"), "sigma must be a number"),
        (lambda: kd.sigmas(0), "n must be a positive integer"),
        (lambda: kd.sigmas(5, rho=-1.0), "rho must be positive"),
        (lambda: from_denoiser(gaussian_denoiser, 0.0, 80.0), "need 0 < sigma_min < sigma_max"),
        (lambda: from_denoiser(gaussian_denoiser, 80.0, 0.002), "need 0 < sigma_min < sigma_max"),
        (lambda: from_denoiser(gaussian_denoiser, 0.002, float("inf")),
         "sigma_max must be a finite number"),
        (lambda: from_denoiser(gaussian_denoiser, float("nan"), 1.0),
         "sigma_min must be a finite number"),
        (lambda: from_denoiser(gaussian_denoiser, "a", 1.0), "sigma_min must be a finite number"),
        (lambda: from_denoiser(None, 0.002, 80.0), "denoiser must be callable"),
        (lambda: from_denoiser(gaussian_denoiser, 0.002, 80.0)[0](x, 0.5), "t must be a float"),
    ]
    for fn, text in cases:
        with pytest.raises(UserInputError) as exc:
            fn()
        assert text in one_line(exc)


# -- against k-diffusion's own samplers -----------------------------------------------------------
@pytest.fixture(scope="module")
def kds():
    pytest.importorskip("k_diffusion")
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        import k_diffusion.sampling as kds
    return kds


def _matched(name: str, n: int = 10):
    """``(sde, model, kd, sigmas, ts, x_T, alpha_T)``: k-diffusion's Karras grid with its final
    0 and our times of its positive sigmas."""
    sde = SDES[name]()
    model = mixture().eps_model(sde)
    kd = KarrasDenoiser(model, sde)
    sigmas = kd.sigmas(n)
    x_T, alpha_T = prior(sde)
    return sde, model, kd, sigmas, kd.sigma_to_t(sigmas[:-1]), x_T, alpha_T


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_kdiffusion_euler_is_our_ddim(kds, name):
    """sample_euler (to sigma = 0) == ddim (eta = 0) then our final Tweedie step."""
    sde, model, kd, sigmas, ts, x_T, alpha_T = _matched(name)
    with torch.no_grad():
        theirs = kds.sample_euler(kd, x_T / alpha_T, sigmas, disable=True)
    ours = sample(model, sde, None, "ddim", x_T=x_T, ts=ts, denoise=True).x
    assert rel_err(theirs, ours) < 1e-12


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_kdiffusion_dpmpp_2m_is_our_dpm2(kds, name):
    """sample_dpmpp_2m == dpm(order=2, lower_order_final=False): both open with a first-order
    step; k-diffusion's step to sigma = 0 is first order (D itself), our final Tweedie step."""
    sde, model, kd, sigmas, ts, x_T, alpha_T = _matched(name)
    opts = {"order": 2, "lower_order_final": False}
    with torch.no_grad():
        theirs = kds.sample_dpmpp_2m(kd, x_T / alpha_T, sigmas, disable=True)
        theirs_pos = kds.sample_dpmpp_2m(kd, x_T / alpha_T, sigmas[:-1], disable=True)
    ours = sample(model, sde, None, "dpm", x_T=x_T, ts=ts, denoise=True, **opts)
    assert rel_err(theirs, ours.x) < 1e-12
    # a grid ending above 0: every step after the first is 2M on both sides
    alpha_end = sde.marginal_coeffs(ts[-1:])[0]
    assert rel_err(theirs_pos, ours.x_mean / alpha_end) < 1e-12


def test_from_denoiser_heun_is_kdiffusion_heun(kds):
    """EDM Alg. 1: k-diffusion's sample_heun on an exact EDM denoiser == our heun on its VE."""
    model, ve = from_denoiser(mixture_denoiser, 0.001, 80.0)
    sigmas = kds.get_sigmas_karras(12, 0.002, 80.0).to(F64)
    ts = KarrasDenoiser(model, ve).sigma_to_t(sigmas[:-1])
    x_T = 80.0 * torch.randn(64, 2, generator=seeded(4), dtype=F64)
    with torch.no_grad():
        theirs = kds.sample_heun(mixture_denoiser, x_T, sigmas, disable=True)
    ours = sample(model, ve, None, "heun", x_T=x_T, ts=ts, denoise=True)
    assert ours.nfe == 2 * 11 + 1 and rel_err(theirs, ours.x) < 1e-12
    # and k-diffusion's heun on our model through KarrasDenoiser is the same run
    with torch.no_grad():
        back = kds.sample_heun(KarrasDenoiser(model, ve), x_T, sigmas, disable=True)
    assert rel_err(back, theirs) < 1e-12


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_kdiffusion_heun_on_our_model_is_our_heun(kds, name):
    """sample_heun on KarrasDenoiser == our heun ([Karras22] Alg. 1 in (x/alpha, sigma/alpha));
    k-diffusion's Euler step to sigma = 0 is our final Tweedie step."""
    sde, model, kd, sigmas, ts, x_T, alpha_T = _matched(name)
    with torch.no_grad():
        theirs = kds.sample_heun(kd, x_T / alpha_T, sigmas, disable=True)
    ours = sample(model, sde, None, "heun", x_T=x_T, ts=ts, denoise=True).x
    assert rel_err(theirs, ours) < 1e-12


def test_kdiffusion_float32_grid_is_accepted(kds):
    """k-diffusion's own float32 Karras grid misses sigma_min/sigma_max by rounding: accepted."""
    sde, model, kd, _sigmas, ts, x_T, alpha_T = _matched("vp")
    grid32 = kds.get_sigmas_karras(10, kd.sigma_min, kd.sigma_max)
    assert grid32.dtype == torch.float32
    with torch.no_grad():
        theirs = kds.sample_dpmpp_2m(kd, (x_T / alpha_T).float(), grid32, disable=True)
    ours = sample(model, sde, None, "dpm", x_T=x_T, ts=ts, order=2, lower_order_final=False).x
    assert theirs.dtype == torch.float32 and rel_err(theirs.double(), ours) < 1e-5  # float32
