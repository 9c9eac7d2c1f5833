"""Inverse problems on every registered solver: the guided model ``eps(x_t | y)``
(:class:`sde_gen.inverse.PosteriorModel`) against the exact posterior of a Gaussian, where MMPS's
posterior score is exact, and the refusals."""

from __future__ import annotations

import pytest
import torch

from helpers import EPS_SOLVERS
from sde_gen.analytic import GaussianMixture
from sde_gen.errors import UserInputError
from sde_gen.inverse import Mask, PosteriorModel, Projection, restore
from sde_gen.sde import SDES

torch.set_num_threads(1)

G64 = torch.float64
MU = torch.tensor([0.5, -0.3], dtype=G64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=G64)
A = torch.tensor([[1.0, 0.5]], dtype=G64)
Y = torch.tensor([[0.9]], dtype=G64)
S = 0.2

#: Steps per solver: enough for its discretization error to sit below the Monte-Carlo error of
#: 2000 samples (the stochastic ones are first order).
STEPS = {"ancestral": 300, "ddim": 60, "sde": 300, "pc": 150, "ode": None, "dpm": 20,
         "heun": 20, "unipc": 20, "ipndm": 20, "deis": 20}
N = 2000


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _exact_moments() -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of ``x0 | y`` for ``x0 ~ N(MU, COV)``, ``y = A x0 + S z`` (the
    Gaussian conditional, written here: [Bishop06] Eq. (2.113)-(2.117))."""
    gain = COV @ A.T @ torch.linalg.inv(A @ COV @ A.T + S**2 * torch.eye(1, dtype=G64))
    return MU + (Y[0] - A @ MU) @ gain.T, COV - gain @ A @ COV


def test_every_solver_is_registered_here():
    assert set(STEPS) == set(EPS_SOLVERS)


@pytest.mark.parametrize("solver", list(STEPS))
@pytest.mark.parametrize("sde_name", ["vp", "flow"])
def test_mmps_on_every_solver_samples_the_exact_gaussian_posterior(sde_name, solver):
    # the flow path has no discrete chain: ancestral takes its continuous posterior steps
    opts = {"discrete": False} if sde_name == "flow" and solver == "ancestral" else {}
    gauss = GaussianMixture.gaussian(MU, COV)
    sde = SDES[sde_name]()
    res = restore(gauss.eps_model(sde), sde, Y, Projection(A), noise_std=S, method="mmps",
                  shape=(N, 2), generator=_gen(3), dtype=G64, steps=STEPS[solver], solver=solver,
                  solver_options=opts)
    mean, cov = _exact_moments()
    x = res.x
    # the mean within 4.5 standard errors; the covariance within 12 % (sampling error ~5 %)
    se = (cov.diagonal() / N).sqrt()
    assert ((x.mean(0) - mean).abs() / se).max() < 4.5, (x.mean(0), mean)
    torch.testing.assert_close(torch.cov(x.T), cov, rtol=0.12, atol=0.012)


def test_the_guided_eps_is_the_posterior_score():
    """``eps(x_t | y) = -sigma grad log p(x_t | y)``; for a Gaussian ``p(x_t | y)`` is Gaussian
    in closed form: ``N(alpha m, alpha^2 C + sigma^2 I)`` with ``(m, C)`` the posterior's."""
    gauss = GaussianMixture.gaussian(MU, COV)
    sde = SDES["vp"]()
    t = torch.full((5,), 0.3, dtype=G64)
    alpha, sigma = (float(c[0]) for c in sde.marginal_coeffs(t))
    x = torch.randn(5, 2, generator=_gen(4), dtype=G64)
    guided = PosteriorModel(gauss.eps_model(sde), sde, Y.expand(5, 1), Projection(A),
                            noise_std=S, method="mmps", options={"cg_steps": 5})
    with torch.no_grad():  # the solvers call it without a graph
        eps = guided(x, t)
    mean, cov = _exact_moments()
    marg = alpha**2 * cov + sigma**2 * torch.eye(2, dtype=G64)
    score = -(x - alpha * mean) @ torch.linalg.inv(marg)
    torch.testing.assert_close(eps, -sigma * score, rtol=1e-9, atol=1e-9)


def test_solver_refusals():
    gauss = GaussianMixture.gaussian(MU, COV)
    sde = SDES["vp"]()
    model = gauss.eps_model(sde)
    kw = dict(noise_std=S, shape=(3, 2), solver="dpm")
    with pytest.raises(UserInputError, match="no score form"):
        restore(model, sde, Y, Projection(A), method="dps", **kw)
    with pytest.raises(UserInputError, match="its own sampler"):
        restore(model, sde, Y, Projection(A), method="smc", particles=4, **kw)
    with pytest.raises(UserInputError, match="stochastic solvers"):
        restore(model, sde, Y, Mask(torch.tensor([1, 0])), method="replacement",
                **{**kw, "noise_std": 0.0})
    with pytest.raises(UserInputError, match="kernel"):
        restore(model, sde, Y, Projection(A), method="mmps", variance="beta", **kw)
    with pytest.raises(UserInputError, match="unknown solver"):
        restore(model, sde, Y, Projection(A), method="mmps", **{**kw, "solver": "rk45"})
    with pytest.raises(UserInputError, match="order"):
        restore(model, sde, Y, Projection(A), method="mmps", solver_options={"order": 9},
                **kw)


@pytest.mark.parametrize("solver", [None, "dpm"])
def test_clip_sample_bounds_the_guided_x0(solver):
    """``clip_sample=c`` clips the guided x0 before each step and at the end: every sample in
    ``[-c, c]`` (the Gaussian's posterior reaches past 0.6 at both ends)."""
    gauss = GaussianMixture.gaussian(MU, COV)
    sde = SDES["vp"]()
    kw = dict(noise_std=S, method="mmps", shape=(500, 2), generator=_gen(5), dtype=G64,
              steps=20, solver=solver)
    free = restore(gauss.eps_model(sde), sde, Y, Projection(A), **kw).x
    clipped = restore(gauss.eps_model(sde), sde, Y, Projection(A), clip_sample=0.6, **kw).x
    assert float(free.abs().max()) > 1.0 and float(clipped.abs().max()) <= 0.6


@pytest.mark.parametrize("kw, message", [
    (dict(clip_sample=-1.0), "clip_sample must be a finite number >= 0"),
    (dict(clip_sample=float("nan")), "clip_sample must be a finite number >= 0"),
    (dict(clip_sample=1.0, method="smc", particles=2), "method 'smc' has none"),
    (dict(clip_sample=1.0, solver="sde"), "clip_sample"),
])
def test_clip_sample_refusals(kw, message):
    gauss = GaussianMixture.gaussian(MU, COV)
    sde = SDES["vp"]()
    with pytest.raises(UserInputError, match=message):
        restore(gauss.eps_model(sde), sde, Y, Projection(A), **{
            "noise_std": S, "method": "mmps", "shape": (3, 2), "dtype": G64, **kw})
