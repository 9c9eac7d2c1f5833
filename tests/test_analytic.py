"""Unit tests for the analytic oracle ``sde_gen.analytic.GaussianMixture``.

References are ``torch.distributions`` (MixtureSameFamily, MultivariateNormal), autograd, and the
perturbed single-Gaussian marginal ``N(alpha_t mu, alpha_t^2 S + sigma_t^2 I)`` with closed-form
``(alpha_t, sigma_t)`` written here.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from helpers import F64, SDE_NAMES, make_sde, seeded
from sde_gen.analytic import GaussianMixture
from sde_gen.sde import VPSDE


def mixture_params():
    """K = 3 components in D = 2 with full covariances and unnormalized weights."""
    means = torch.tensor([[-2.0, 0.5], [1.5, 1.0], [0.0, -2.5]], dtype=F64)
    a = torch.tensor([[[0.6, 0.2], [0.0, 0.4]], [[0.3, -0.1], [0.2, 0.5]],
                      [[0.8, 0.0], [0.3, 0.2]]], dtype=F64)
    covs = a @ a.transpose(-1, -2) + 0.05 * torch.eye(2, dtype=F64)
    weights = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    return means, covs, weights


def torch_mixture(means, covs, weights) -> MixtureSameFamily:
    return MixtureSameFamily(Categorical(probs=weights / weights.sum()),
                             MultivariateNormal(means, covariance_matrix=covs))


def closed_coeffs(name: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) for VP and VE at the package defaults, written independently."""
    if name == "ve":
        return torch.ones_like(t), 0.01 * 5000.0**t
    big_b = 0.1 * t + 9.95 * t**2
    return torch.exp(-big_b / 2), torch.sqrt(1 - torch.exp(-big_b))


# -------------------------------------------------------------------------------------------------
def test_log_prob_matches_mixture_same_family() -> None:
    means, covs, weights = mixture_params()
    gm = GaussianMixture(means, covs, weights)
    x = 2 * torch.randn(64, 2, generator=seeded(0), dtype=F64)
    ref = torch_mixture(means, covs, weights).log_prob(x)
    lp = gm.log_prob(x)
    assert lp.shape == (64,) and lp.dtype == F64
    torch.testing.assert_close(lp, ref, rtol=1e-10, atol=1e-10)  # float64 throughout: 1e-10
    torch.testing.assert_close(gm.weights.sum(), torch.tensor(1.0, dtype=F64), rtol=0, atol=1e-15)


def test_diagonal_and_isotropic_covariances() -> None:
    means = torch.tensor([[0.0, 1.0, 2.0], [-1.0, 0.0, 1.0]], dtype=F64)
    diag = torch.tensor([[0.5, 1.0, 2.0], [0.3, 0.3, 0.7]], dtype=F64)
    iso = torch.tensor([0.4, 1.7], dtype=F64)
    x = torch.randn(32, 3, generator=seeded(1), dtype=F64)
    for covs, full in ((diag, torch.diag_embed(diag)),
                       (iso, iso[:, None, None] * torch.eye(3, dtype=F64))):
        ref = torch_mixture(means, full, torch.ones(2, dtype=F64)).log_prob(x)
        # float64: 1e-10.
        torch.testing.assert_close(GaussianMixture(means, covs).log_prob(x), ref, rtol=1e-10,
                                   atol=1e-10)


@pytest.mark.parametrize("name", SDE_NAMES)
def test_score_is_gradient_of_log_prob_t(name: str) -> None:
    sde = make_sde(name)
    gm = GaussianMixture(*mixture_params())
    gen = seeded(2)
    x = (3 * torch.randn(40, 2, generator=gen, dtype=F64)).requires_grad_(True)
    t = torch.rand(40, generator=gen, dtype=F64) * (0.98 * sde.T - 1e-3) + 1e-3
    (grad,) = torch.autograd.grad(gm.log_prob_t(x, t, sde).sum(), x)
    score = gm.score(x.detach(), t, sde)
    assert score.shape == (40, 2) and score.dtype == F64
    # Two exact float64 evaluations of the same gradient; |score| reaches ~1e3 at small t:
    # rtol 1e-8.
    torch.testing.assert_close(score, grad, rtol=1e-8, atol=1e-8)
    # eps = -sigma_t score (float64, exact algebra: rtol 1e-12).
    sigma = sde.marginal_coeffs(t)[1]
    torch.testing.assert_close(gm.eps(x.detach(), t, sde), -sigma[:, None] * score, rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_single_gaussian_log_prob_t_and_denoiser_closed_form(name: str) -> None:
    sde = make_sde(name)
    mu = torch.tensor([1.0, -2.0], dtype=F64)
    cov = torch.tensor([[1.5, 0.4], [0.4, 0.6]], dtype=F64)
    gm = GaussianMixture.gaussian(mu, cov)
    gen = seeded(3)
    t = torch.rand(30, generator=gen, dtype=F64) * 0.99 + 0.005
    alpha, sigma = closed_coeffs(name, t)
    x = alpha[:, None] * mu + (alpha[:, None] + sigma[:, None]) * torch.randn(
        30, 2, generator=gen, dtype=F64)
    cov_t = alpha[:, None, None] ** 2 * cov + sigma[:, None, None] ** 2 * torch.eye(2, dtype=F64)
    ref = MultivariateNormal(alpha[:, None] * mu, covariance_matrix=cov_t).log_prob(x)
    # float64, sigma_t up to ~50 under VE: rtol 1e-10.
    torch.testing.assert_close(gm.log_prob_t(x, t, sde), ref, rtol=1e-10, atol=1e-10)
    # Tweedie: E[x0 | x_t] = mu + alpha S cov_t^{-1} (x - alpha mu).
    resid = (x - alpha[:, None] * mu).unsqueeze(-1)
    x0_ref = mu + alpha[:, None] * (cov @ torch.linalg.solve(cov_t, resid)).squeeze(-1)
    torch.testing.assert_close(gm.denoise(x, t, sde), x0_ref, rtol=1e-9, atol=1e-10)  # float64


def test_scalar_variance_gaussian_is_isotropic() -> None:
    gm = GaussianMixture.gaussian(torch.tensor([0.5, -1.0, 2.0], dtype=F64),
                                  torch.tensor(0.64, dtype=F64))
    # covariance() = (S + mu mu^T) - mu mu^T: cancellation of terms <= 4 costs ~1e-15: atol 1e-14.
    torch.testing.assert_close(gm.covariance(), 0.64 * torch.eye(3, dtype=F64), rtol=0,
                               atol=1e-14)
    assert gm.dim == 3


def test_sample_moments_match_mean_and_covariance() -> None:
    means, covs, weights = mixture_params()
    gm = GaussianMixture(means, covs, weights)
    ref = torch_mixture(means, covs, weights)
    # mean() and the diagonal of covariance() against torch.distributions (float64: 1e-12).
    torch.testing.assert_close(gm.mean(), ref.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.diagonal(gm.covariance()), ref.variance, rtol=1e-12,
                               atol=1e-12)
    n = 200_000
    x = gm.sample(n, generator=seeded(4), dtype=F64)
    assert x.shape == (n, 2) and x.dtype == F64
    assert torch.equal(x, gm.sample(n, generator=seeded(4), dtype=F64))  # reproducible
    assert gm.sample(5, generator=seeded(4)).dtype == torch.float32  # default dtype
    m = gm.mean()
    centred = x - m
    se_mean = centred.std(0) / math.sqrt(n)
    # Tolerance: 4 standard errors per coordinate.
    assert ((x.mean(0) - m).abs() < 4 * se_mean).all(), ((x.mean(0) - m) / se_mean)
    prods = centred[:, :, None] * centred[:, None, :]  # per-sample second moments (n, D, D)
    se_cov = prods.std(0) / math.sqrt(n)
    err = prods.mean(0) - gm.covariance()
    assert (err.abs() < 4 * se_cov).all(), err / se_cov  # 4 standard errors per entry


def test_eps_model_is_exact_and_keeps_dtype() -> None:
    sde = VPSDE()
    gm = GaussianMixture(*mixture_params())
    x = torch.randn(8, 2, generator=seeded(5))
    t = torch.full((8,), 0.3)
    out = gm.eps_model(sde)(x, t)
    assert out.dtype == torch.float32 and out.shape == (8, 2)
    # float32 cast of the float64 oracle: rtol 1e-6.
    torch.testing.assert_close(out.double(), gm.eps(x, t, sde), rtol=1e-6, atol=1e-7)


def test_bad_arguments_raise() -> None:
    means, covs, _ = mixture_params()
    with pytest.raises(ValueError, match=r"means must be \(K, D\)"):
        GaussianMixture(means[0], covs)
    with pytest.raises(ValueError, match=r"covs must be \(K,\), \(K, D\) or \(K, D, D\)"):
        GaussianMixture(means, covs[:2])
    with pytest.raises(ValueError, match="weights must be K positive numbers"):
        GaussianMixture(means, covs, torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="weights must be K positive numbers"):
        GaussianMixture(means, covs, torch.tensor([1.0, 1.0]))
