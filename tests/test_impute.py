"""Imputation, inpainting and colorization with an unconditional model: the replacement method
([Song21] App. I.2), RePaint ([Lugmayr22]) and the colour basis of [Song21] App. I.3, checked
against the exact conditionals of Gaussians."""

from __future__ import annotations

import math

import pytest
import torch

from sde_gen.analytic import GaussianMixture
from sde_gen.sampling import colorize, impute
from sde_gen.sampling.colorize import (
    COLOUR_BASIS,
    decorrelated_model,
    from_decorrelated,
    to_decorrelated,
)
from tests.helpers import F64, SDES, seeded, user_error

#: (solver, options) of every solver the replacement method runs.
STOCHASTIC = [("pc", {}), ("pc", {"predictor": "euler_maruyama", "n_corrector": 2}),
              ("sde", {}), ("ancestral", {}), ("ddim", {"eta": 0.5})]


def isotropic_eps(sde, s2: float = 0.3):
    """Exact eps of data ``N(0, s2 I)`` in any shape: ``q_t = N(0, (alpha^2 s2 + sigma^2) I)``."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = sde.marginal_coeffs(t)
        scale = sigma / (alpha**2 * s2 + sigma**2)
        return scale.reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype) * x

    return eps


def gaussian(rho: float = 0.8) -> GaussianMixture:
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=F64)
    return GaussianMixture.gaussian(torch.tensor([0.5, -0.5], dtype=F64), cov)


def three_d() -> GaussianMixture:
    a = torch.tensor([[[0.5, 0.1, 0.0], [0.2, 0.4, 0.1], [0.0, 0.3, 0.3]],
                      [[0.3, 0.0, 0.1], [0.1, 0.5, 0.0], [0.2, 0.1, 0.4]]], dtype=F64)
    covs = a @ a.transpose(1, 2) + 0.02 * torch.eye(3, dtype=F64)
    return GaussianMixture(torch.tensor([[0.4, -0.3, 0.2], [-0.5, 0.3, 0.1]], dtype=F64), covs)


@pytest.mark.parametrize("resample", [1, 3])
@pytest.mark.parametrize("solver,options", STOCHASTIC)
def test_known_coordinates_are_kept_exactly(solver, options, resample) -> None:
    """Vectors with a per-row mask (NaN where unknown) and images with a (1, H, W) mask."""
    sde = SDES["vp" if solver != "sde" else "ve"]()
    x = three_d().sample(5, generator=seeded(0), dtype=F64)
    mask = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0]], dtype=F64)
    x_known = torch.where(mask == 1, x, torch.full_like(x, float("nan")))
    res = impute(three_d().eps_model(sde), sde, x_known, mask, solver=solver, steps=5,
                 resample=resample, generator=seeded(1), **options)
    known = mask == 1
    assert torch.equal(res.x[known], x[known])
    assert torch.isfinite(res.x).all() and not torch.equal(res.x[~known], x[~known])
    image = torch.rand(2, 3, 4, 4, generator=seeded(2), dtype=F64) * 2 - 1
    pixels = torch.rand(1, 4, 4, generator=seeded(3)) < 0.5
    res = impute(isotropic_eps(sde), sde, image, pixels, solver=solver, steps=4,
                 resample=resample, generator=seeded(4), **options)
    known = pixels.expand_as(image)
    assert torch.equal(res.x[known], image[known]) and res.x.shape == image.shape
    assert torch.isfinite(res.x).all()


def test_known_coordinates_are_kept_exactly_by_smc() -> None:
    sde = SDES["vp"]()
    image = torch.rand(2, 3, 4, 4, generator=seeded(2)) * 2 - 1
    pixels = torch.rand(1, 4, 4, generator=seeded(3)) < 0.5
    holes = torch.where(pixels, image, torch.full_like(image, float("nan")))
    res = impute(isotropic_eps(sde), sde, holes, pixels, method="smc", particles=4, steps=5,
                 generator=seeded(4))
    known = pixels.expand_as(image)
    assert torch.equal(res.x[known], image[known]) and torch.isfinite(res.x).all()
    assert res.nfe == 6  # steps + the denoise, batched over rows and particles


def test_same_generator_same_draws() -> None:
    sde = SDES["vp"]()
    x_known, mask = torch.zeros(4, 2, dtype=F64), torch.tensor([1, 0])
    def run() -> torch.Tensor:
        return impute(gaussian().eps_model(sde), sde, x_known, mask, steps=5, resample=2,
                      generator=seeded(5)).x

    assert torch.equal(run(), run())


def _unknown_moments(solver: str, steps: int, resample: int) -> tuple[float, float]:
    """Mean and variance of the unknown coordinate of ``gaussian()`` given ``x0[0] = 1.5``."""
    sde = SDES["vp"]()
    x_known = torch.zeros(2000, 2, dtype=F64)
    x_known[:, 0] = 1.5
    res = impute(gaussian().eps_model(sde), sde, x_known, torch.tensor([True, False]),
                 solver=solver, steps=steps, resample=resample, generator=seeded(6))
    return float(res.x[:, 1].mean()), float(res.x[:, 1].var())


def test_replacement_is_close_to_the_exact_conditional() -> None:
    """A Gaussian with correlation 0.8, x0[0] = 1.5 known: x0[1] | x0[0] ~ N(0.3, 0.36) exactly
    (unconditionally N(-0.5, 1)). PC with its Langevin corrector at 1000 steps comes within
    3 standard errors of the mean (0.6 / sqrt(2000) = 0.013) and 10% of the variance."""
    exact = gaussian().conditional(torch.tensor([True, False]), torch.tensor([1.5], dtype=F64))
    mean, var = float(exact.mean()[0]), float(exact.covariance()[0, 0])
    assert abs(mean - 0.3) < 1e-12 and abs(var - 0.36) < 1e-12
    m, v = _unknown_moments("pc", 1000, 1)
    assert abs(m - mean) < 0.04 and abs(v / var - 1) < 0.1, (m, v)


def test_repaint_resampling_harmonizes() -> None:
    """Without a corrector, plain replacement stays far from the conditional mean (the unknown
    part only sees noisy copies of the known one); RePaint's 20 passes per interval on the same
    grid cut the mean's error at least threefold and land within 0.05 of it."""
    plain, _ = _unknown_moments("ancestral", 50, 1)
    repaint, v = _unknown_moments("ancestral", 50, 20)
    assert abs(repaint - 0.3) < 0.05 and abs(v / 0.36 - 1) < 0.15, (repaint, v)
    assert abs(repaint - 0.3) < abs(plain - 0.3) / 3, (plain, repaint)


class Counter:
    def __init__(self, model) -> None:
        self.model, self.calls = model, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)


@pytest.mark.parametrize("solver,options,per_step", [
    ("pc", {}, 2), ("pc", {"n_corrector": 3}, 4), ("ancestral", {}, 1), ("sde", {}, 1),
    ("ddim", {"eta": 1.0}, 1), ("sde", {"sde_method": "midpoint"}, 2),
])
@pytest.mark.parametrize("resample", [1, 3])
def test_nfe_is_resample_times_the_solver_calls(solver, options, per_step, resample) -> None:
    sde = SDES["vp"]()
    for denoise in (True, False):
        model = Counter(gaussian().eps_model(sde))
        res = impute(model, sde, torch.zeros(3, 2), torch.tensor([0, 1]), solver=solver,
                     steps=5, resample=resample, denoise=denoise, generator=seeded(7), **options)
        assert res.nfe == model.calls == per_step * 5 * resample + int(denoise)
        assert len(res.ts) == 6


def test_default_grid_is_sample_s() -> None:
    from sde_gen.sampling import sample

    sde = SDES["vp"](N=50)
    for solver in ("pc", "ancestral"):
        a = impute(gaussian().eps_model(sde), sde, torch.zeros(2, 2), torch.tensor([1, 0]),
                   solver=solver, generator=seeded(8))
        b = sample(gaussian().eps_model(sde), sde, (2, 2), solver, generator=seeded(8))
        assert torch.equal(a.ts, b.ts) and a.nfe == b.nfe


# -- colorization ----------------------------------------------------------------------------


def colour_gaussian() -> GaussianMixture:
    """One pixel's colour: a correlated Gaussian in RGB."""
    a = torch.tensor([[0.4, 0.0, 0.0], [0.3, 0.2, 0.0], [0.1, 0.2, 0.15]], dtype=F64)
    return GaussianMixture.gaussian(torch.tensor([0.2, -0.1, 0.0], dtype=F64), a @ a.T)


def pixelwise(gm: GaussianMixture, sde):
    """An exact eps-model of images whose pixels are independent draws of ``gm`` (in RGB)."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.permute(0, 2, 3, 1).reshape(-1, c)
        out = gm.eps(flat, t.repeat_interleave(h * w), sde).to(x.dtype)
        return out.reshape(b, h, w, c).permute(0, 3, 1, 2)

    return eps


def test_colour_basis_is_orthogonal_with_the_grey_axis_first() -> None:
    torch.testing.assert_close(COLOUR_BASIS @ COLOUR_BASIS.T, torch.eye(3, dtype=F64),
                               rtol=0, atol=1e-15)
    torch.testing.assert_close(COLOUR_BASIS[0], torch.full((3,), 1 / math.sqrt(3), dtype=F64))
    x = torch.randn(2, 3, 2, 2, generator=seeded(9), dtype=F64)
    torch.testing.assert_close(from_decorrelated(to_decorrelated(x)), x, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", list(SDES))
def test_decorrelated_model_is_the_exact_eps_of_the_rotated_data(name: str) -> None:
    """eps'(x', t) = Q eps(Q^T x', t) is the exact eps of x' = Q x, whose law is the mixture with
    means Q mu and covariances Q S Q^T."""
    sde = SDES[name]()
    gm = colour_gaussian()
    q = COLOUR_BASIS
    rotated = GaussianMixture(gm.means @ q.T, q @ gm.covs @ q.T)
    x = torch.randn(7, 3, 1, 1, generator=seeded(10), dtype=F64)
    t = torch.linspace(0.05, 0.9, 7, dtype=F64)
    got = decorrelated_model(pixelwise(gm, sde))(x, t)
    torch.testing.assert_close(got, pixelwise(rotated, sde)(x, t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("channels", [1, 3])
def test_colorize_keeps_the_grey_image(channels: int) -> None:
    sde = SDES["vp"]()
    grey = torch.rand(2, 1, 3, 3, generator=seeded(11), dtype=F64) * 1.6 - 0.8
    res = colorize(pixelwise(colour_gaussian(), sde), sde, grey.expand(2, channels, 3, 3),
                   steps=8, generator=seeded(12))
    assert res.x.shape == (2, 3, 3, 3) and torch.isfinite(res.x).all()
    torch.testing.assert_close(res.x.mean(1, keepdim=True), grey, rtol=0, atol=1e-14)
    assert float(res.x.std(1).mean()) > 1e-3  # the channels differ: it coloured something


def test_colorize_is_imputation_in_the_colour_basis() -> None:
    """The same draws as :func:`impute` on x' with the decorrelated model and channel 0 known,
    and, with RePaint, close to the exact law of the colour given the grey value (means within
    0.15 standard deviations, variances within 15%; measured 0.03 and 8%)."""
    sde = SDES["vp"]()
    gm = colour_gaussian()
    grey = torch.full((1500, 1, 1, 1), 0.25, dtype=F64)
    res = colorize(pixelwise(gm, sde), sde, grey, solver="ancestral", steps=100, resample=10,
                   generator=seeded(13))
    known = torch.zeros(1500, 3, 1, 1, dtype=F64)
    known[:, 0] = math.sqrt(3) * 0.25
    ref = impute(decorrelated_model(pixelwise(gm, sde)), sde, known,
                 torch.tensor([1, 0, 0])[:, None, None], solver="ancestral", steps=100,
                 resample=10, generator=seeded(13))
    torch.testing.assert_close(res.x, from_decorrelated(ref.x), rtol=0, atol=0)
    q = COLOUR_BASIS
    rotated = GaussianMixture(gm.means @ q.T, q @ gm.covs @ q.T)
    exact = rotated.conditional(torch.tensor([True, False, False]),
                                torch.tensor([math.sqrt(3) * 0.25], dtype=F64))
    free = to_decorrelated(res.x)[:, 1:, 0, 0]
    sd = exact.covariance().diagonal().sqrt()
    assert ((free.mean(0) - exact.mean()).abs() / sd).max() < 0.15, (free.mean(0), exact.mean())
    assert ((free.var(0) / exact.covariance().diagonal()) - 1).abs().max() < 0.15


# -- bad input -------------------------------------------------------------------------------


def test_bad_input_gives_one_line_errors() -> None:
    sde = SDES["vp"]()
    model = gaussian().eps_model(sde)
    x = torch.zeros(3, 2)

    def run(x_known=x, mask=None, **kw):
        mask = torch.tensor([1, 0]) if mask is None else mask
        return impute(model, sde, x_known, mask, **{"steps": 3, **kw})

    assert "broadcast" in user_error(lambda: run(mask=torch.tensor([1, 0, 1])))
    assert "broadcast" in user_error(lambda: run(mask=torch.ones(2, 2)))
    assert "only 0 and 1" in user_error(lambda: run(mask=torch.tensor([1.0, 0.5])))
    assert "only 0 and 1" in user_error(lambda: run(mask=torch.tensor([1.0, float("nan")])))
    assert "only 0 and 1" in user_error(lambda: run(mask=torch.tensor([2, 0])))
    assert "every coordinate known" in user_error(lambda: run(mask=torch.tensor([1, 1])))
    assert "no coordinate known" in user_error(lambda: run(mask=torch.tensor([False, False])))
    nan_known = torch.tensor([[float("nan"), 0.0]] * 3)
    assert "known coordinate" in user_error(lambda: run(x_known=nan_known))
    assert "(B, *D)" in user_error(lambda: run(x_known=torch.zeros(2)))
    assert "floating" in user_error(lambda: run(x_known=torch.zeros(3, 2, dtype=torch.long)))
    for solver in ("ode", "dpm", "heun"):
        assert "deterministic" in user_error(lambda solver=solver: run(solver=solver))
    assert "eta=0" in user_error(lambda: run(solver="ddim"))
    assert "unknown solver" in user_error(lambda: run(solver="nope"))
    assert "eta" in user_error(lambda: run(solver="ddim", eta=2.0))
    for resample in (0, 1.5, True):
        assert "resample" in user_error(lambda resample=resample: run(resample=resample))
    assert "unknown imputation method" in user_error(lambda: run(method="gibbs"))
    assert "sde_method" in user_error(lambda: run(method="midpoint"))
    assert "sde_method" in user_error(lambda: run(solver="pc", sde_method="midpoint"))
    assert "particles" in user_error(lambda: run(particles=4))
    assert "particles" in user_error(lambda: run(method="smc"))
    assert "resample" in user_error(lambda: run(method="smc", particles=2, resample=2))
    assert "takes no option 'eta'" in user_error(lambda: run(method="smc", particles=2, eta=0.5))
    assert "steps" in user_error(lambda: run(steps=0))
    assert "t_min" in user_error(lambda: run(t_min=2.0))


def test_bad_grey_gives_one_line_errors() -> None:
    sde = SDES["vp"]()
    model = pixelwise(colour_gaussian(), sde)
    grey = torch.zeros(2, 1, 2, 2)
    assert "(B, 1, H, W)" in user_error(lambda: colorize(model, sde, torch.zeros(2, 2, 2, 2)))
    assert "(B, 1, H, W)" in user_error(lambda: colorize(model, sde, torch.zeros(2, 2, 2)))
    unequal = torch.zeros(2, 3, 2, 2)
    unequal[:, 0] = 0.5
    assert "equal channels" in user_error(lambda: colorize(model, sde, unequal))
    assert "[-1, 1]" in user_error(lambda: colorize(model, sde, grey + 1.5))
    assert "NaN" in user_error(lambda: colorize(model, sde, grey * float("nan")))
    assert "deterministic" in user_error(lambda: colorize(model, sde, grey, solver="ode"))
