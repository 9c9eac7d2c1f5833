"""The twisted SMC imputer (sde_gen/sampling/smc.py) against closed-form answers.

On Gaussian data with the exact score the sampler's Markov chain is linear-Gaussian, so the
*model's* conditional ``p_model(x0[B] | x0[A] = y)`` and evidence ``p_model(y)`` are closed-form:
the particle system must reproduce them (the weights), not the data's (which the chain only
approximates at few steps). On a mixture, many particles must match the exact data conditional
and beat one particle clearly.
"""

from __future__ import annotations

import math

import pytest
import torch

from sde_gen.analytic import GaussianMixture
from sde_gen.chain import grid_coeffs
from sde_gen.errors import UserInputError
from sde_gen.sampling.grids import make_grid
from sde_gen.sampling.smc import _resample_indices, _resampling_uniforms, impute_smc
from sde_gen.sde import VESDE, VPSDE

torch.set_num_threads(1)
D = 4
KNOWN = torch.tensor([True, False, True, False])


def _gaussian() -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(D, D, generator=g, dtype=torch.float64)
    return GaussianMixture.gaussian(torch.randn(D, generator=g, dtype=torch.float64),
                                    a @ a.T / D + 0.05 * torch.eye(D, dtype=torch.float64))


def _model_conditional(gm, sde, steps, variance, y):
    """Mean, covariance of the chain's output's unknown part given its known part = y, and
    the log-evidence, for Gaussian data: propagate N(m, C) through the linear chain."""
    mu, s = gm.means[0], gm.covs[0]
    eye = torch.eye(D, dtype=torch.float64)
    ts = make_grid(sde, steps, t_min=sde.default_t_min, spacing="logsnr")
    alpha, sigma = grid_coeffs(sde, ts)
    c_x, c_x0, var_tilde, v = grid_coeffs(sde, ts).posterior()
    w = {"beta": v, "beta_tilde": var_tilde, "geometric": torch.sqrt(v * var_tilde)}[variance]

    def gain(a, sg):  # x0_hat(x) = mu + G (x - a mu) for Gaussian data
        return a * s @ torch.linalg.inv(a * a * s + sg * sg * eye)

    m, c = torch.zeros(D, dtype=torch.float64), sde.prior_std**2 * eye
    for k in range(steps):
        g = gain(alpha[k], sigma[k])
        lin = c_x[k] * eye + c_x0[k] * g
        m = lin @ m + c_x0[k] * (mu - alpha[k] * g @ mu)
        c = lin @ c @ lin.T + w[k] * eye
    g = gain(alpha[-1], sigma[-1])
    mu_u, c_u = mu + g @ (m - alpha[-1] * mu), g @ c @ g.T
    a, b = KNOWN, ~KNOWN
    c_aa = c_u[a][:, a] + float(sigma[-1] / alpha[-1]) ** 2 * torch.eye(int(a.sum()),
                                                                         dtype=torch.float64)
    k_gain = c_u[b][:, a] @ torch.linalg.inv(c_aa)
    mean = mu_u[b] + k_gain @ (y[a] - mu_u[a])
    cov = c_u[b][:, b] - k_gain @ c_u[b][:, a].T
    evidence = torch.distributions.MultivariateNormal(mu_u[a], c_aa).log_prob(y[a])
    return mean, cov, float(evidence)


@pytest.mark.parametrize("sde_cls,variance", [(VPSDE, "geometric"), (VESDE, "beta")])
def test_gaussian_matches_the_models_closed_form_conditional_and_evidence(sde_cls, variance):
    gm, sde, steps = _gaussian(), sde_cls(), 12
    y = torch.tensor([0.3, 0.0, -0.5, 0.0], dtype=torch.float64)
    mean, cov, evidence = _model_conditional(gm, sde, steps, variance, y)
    data = gm.conditional(KNOWN, y)
    # the chain at 12 steps is visibly not the data: the test can tell the two apart
    assert (cov - data.covariance()).abs().max() > 0.01
    n = 3000
    r = impute_smc(gm.eps_model(sde), sde, y.expand(n, D).clone(), KNOWN, particles=16,
                   steps=steps, variance=variance, generator=torch.Generator().manual_seed(1))
    # pooled weighted particles: n*K draws of (nearly) the target, tolerance ~4 standard errors
    w = (r.log_weights.exp() / n).reshape(-1, 1)
    p = r.particles.reshape(-1, D)[:, ~KNOWN]
    m_hat = (w * p).sum(0)
    c_hat = (w * (p - m_hat)).T @ (p - m_hat)
    sd = cov.diagonal().sqrt()
    assert ((m_hat - mean).abs() / sd).max() < 0.06
    assert ((c_hat - cov).abs() / torch.outer(sd, sd)).max() < 0.08
    # the mean of the unbiased evidence estimates (log-mean-exp over rows), within 4 standard
    # errors of that mean (its relative spread over the rows / sqrt(n)) plus 0.01 nats
    log_mean = float(torch.logsumexp(r.log_evidence, 0) - math.log(n))
    ratio = torch.exp(r.log_evidence - log_mean)
    se = float(ratio.std()) / math.sqrt(n)
    assert se < 0.05 and abs(log_mean - evidence) < 4 * se + 0.01, (log_mean, evidence, se)
    assert torch.equal(r.x[:, KNOWN], y.expand(n, D)[:, KNOWN])
    assert r.nfe == steps + 1


def test_mixture_many_particles_match_the_exact_conditional():
    gm = GaussianMixture(torch.tensor([[-1.0, -1.0], [0.4, 1.2], [1.0, -0.8]]),
                         torch.tensor([[0.10, 0.05], [0.15, 0.3], [0.15, 0.1]]),
                         torch.tensor([0.3, 0.5, 0.2]))
    sde = VPSDE()
    known = torch.tensor([True, False])
    y = torch.tensor([0.8, 0.0])
    exact = gm.conditional(known, y)  # x2 | x1 = 0.8: two modes, at -0.8 and 1.2
    upper = float(exact.weights[exact.means[:, 0] > 0.2].sum())
    n = 400

    def moments(k, seed):
        r = impute_smc(gm.eps_model(sde), sde, y.expand(n, 2).clone(), known, particles=k,
                       generator=torch.Generator().manual_seed(seed))
        assert torch.equal(r.x[:, 0], torch.full((n,), 0.8))
        w = (r.log_weights.exp() / n).reshape(-1).double()
        p = r.particles.reshape(-1, 2)[:, 1].double()
        m = (w * p).sum()
        return float(m), float((w * (p - m) ** 2).sum()), float((w * (p > 0.2)).sum())

    m_true, v_true = float(exact.mean()[0]), float(exact.covariance()[0, 0])
    m64, v64, up64 = moments(64, 2)
    _, _, up1 = moments(1, 3)
    # K = 64: mean within 0.1 sd, variance within 10 %, upper mode's weight within 0.05
    assert abs(m64 - m_true) / math.sqrt(v_true) < 0.1 and abs(v64 / v_true - 1) < 0.1, (
        m64, v64, m_true, v_true)
    assert abs(up64 - upper) < 0.05, (up64, upper)
    # K = 1 (no selection) gets the modes' weights clearly wrong
    assert abs(up1 - upper) > 2 * max(abs(up64 - upper), 0.03), (up1, up64, upper)


def test_images_masks_broadcast_and_known_pixels_are_exact():
    c, h, w = 2, 3, 3
    gm = GaussianMixture.gaussian(torch.zeros(c * h * w), torch.full((c * h * w,), 0.5))
    sde = VPSDE()
    flat = gm.eps_model(sde)

    def model(x, t):
        return flat(x.reshape(x.shape[0], -1), t).reshape(x.shape)

    x_known = torch.randn(3, c, h, w, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, h, w)
    mask[:, :, 0] = 1  # left column known, shared over channels
    x_known[..., 1:] = float("nan")  # unknown pixels may hold anything
    r = impute_smc(model, sde, x_known, mask, particles=4, steps=8,
                   generator=torch.Generator().manual_seed(1))
    assert r.x.shape == x_known.shape and r.particles.shape == (3, 4, c, h, w)
    assert torch.equal(r.x[..., 0], x_known[..., 0])
    assert torch.equal(r.x_mean[..., 0], x_known[..., 0])
    assert torch.isfinite(r.x).all() and torch.isfinite(r.log_evidence).all()
    assert torch.allclose(r.log_weights.logsumexp(1), torch.zeros(3, dtype=torch.float64))


def test_deterministic_with_a_seeded_generator_and_nfe_counted():
    gm, sde = _gaussian(), VPSDE()
    y = torch.randn(5, D, generator=torch.Generator().manual_seed(3))
    runs = [impute_smc(gm.eps_model(sde), sde, y, KNOWN, particles=8, steps=10,
                       generator=torch.Generator().manual_seed(4), resampling=m)
            for m in ("systematic", "systematic", "multinomial")]
    assert torch.equal(runs[0].x, runs[1].x) and torch.equal(runs[0].log_evidence,
                                                             runs[1].log_evidence)
    assert not torch.equal(runs[0].x, runs[2].x)
    plain = impute_smc(gm.eps_model(sde), sde, y, KNOWN, particles=8, steps=10, denoise=False,
                       generator=torch.Generator().manual_seed(4))
    assert (runs[0].nfe, plain.nfe) == (11, 10)
    assert torch.equal(plain.x[:, KNOWN], y[:, KNOWN])


def test_systematic_resampling_counts_are_floor_or_ceil_of_k_times_weight():
    w = torch.tensor([[0.5, 0.25, 0.125, 0.125], [0.05, 0.05, 0.3, 0.6]], dtype=torch.float64)
    for seed in range(20):
        u = _resampling_uniforms(2, 4, "systematic", torch.Generator().manual_seed(seed), "cpu")
        idx = _resample_indices(w.log(), u, "systematic")
        counts = torch.stack([torch.bincount(row, minlength=4) for row in idx]).double()
        expected = 4 * w
        assert ((counts >= expected.floor()) & (counts <= expected.ceil())).all(), counts


def test_impute_method_smc_dispatches_here():
    from sde_gen.sampling.impute import impute

    gm, sde = _gaussian(), VPSDE()
    y = torch.randn(4, D, generator=torch.Generator().manual_seed(3))
    a = impute(gm.eps_model(sde), sde, y, KNOWN, method="smc", particles=4, steps=6,
               generator=torch.Generator().manual_seed(5))
    b = impute_smc(gm.eps_model(sde), sde, y, KNOWN, particles=4, steps=6,
                   generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe == 7


@pytest.mark.parametrize("kwargs,match", [
    ({"particles": 0}, "particles"),
    ({"particles": 2.5}, "particles"),
    ({"particles": True}, "particles"),
    ({"particles": 2, "mask": torch.tensor([1, 2, 0, 0])}, "0/1"),
    ({"particles": 2, "mask": torch.ones(D)}, "all known"),
    ({"particles": 2, "mask": torch.zeros(D, dtype=torch.bool)}, "none known"),
    ({"particles": 2, "mask": torch.ones(3)}, "broadcast"),
    ({"particles": 2, "steps": 0}, "steps"),
    ({"particles": 2, "eps": 2.0}, "eps"),
    ({"particles": 2, "variance": "big"}, "variance"),
    ({"particles": 2, "resampling": "stratified"}, "resampling"),
    ({"particles": 2, "ess_threshold": 1.5}, "ess_threshold"),
    ({"particles": 2, "twist_scale": 0.0}, "twist_scale"),
    ({"particles": 2, "x_known": torch.full((2, D), float("nan"))}, "non-finite"),
    ({"particles": 2, "x_known": torch.zeros(2, D, dtype=torch.long)}, "floating"),
])
def test_bad_input_is_one_line_user_error(kwargs, match):
    gm, sde = _gaussian(), VPSDE()
    mask = kwargs.pop("mask", KNOWN)
    x_known = kwargs.pop("x_known", torch.zeros(2, D))
    with pytest.raises(UserInputError, match=match) as info:
        impute_smc(gm.eps_model(sde), sde, x_known, mask, **kwargs)
    assert "\n" not in str(info.value)
