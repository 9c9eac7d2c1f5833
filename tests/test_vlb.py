"""DDPM's variational bound against closed forms for Gaussian data."""

import math

import pytest
import torch

from helpers import seeded
from sde_gen import VESDE, VPSDE, GaussianMixture
from sde_gen.likelihood import discretized_gaussian_log_likelihood, vlb

F64 = torch.float64
D, S2 = 3, 0.25
MU = torch.tensor([0.3, -0.2, 0.5], dtype=F64)


def discrete_exact_model(sde):
    """Exact eps for N(MU, S2 I) under the discrete chain's own coefficients (Bayes-optimal)."""

    def model(x, t):
        a, s = sde.discrete_coeffs(sde.time_to_index(t))
        a, s = a[:, None], s[:, None]
        return s * (x - a * MU) / (a**2 * S2 + s**2)

    return model


def chain(N):
    beta = torch.linspace(0.1 / N, 20 / N, N, dtype=F64)  # DDPM's schedule, written independently
    abar = torch.cumprod(1 - beta, 0)
    return beta, abar


@pytest.fixture(scope="module")
def result():
    sde = VPSDE()
    gauss = GaussianMixture.gaussian(MU, torch.tensor(S2))
    x = gauss.sample(4096, generator=seeded(0), dtype=F64)
    return x, vlb(discrete_exact_model(sde), sde, x, generator=seeded(1))


def test_prior_term_closed_form(result):
    x, r = result
    _, abar = chain(1000)
    m, v = torch.sqrt(abar[-1]) * x, 1 - abar[-1]
    expected = (0.5 * (v + m**2 - 1 - torch.log(v))).sum(1)  # KL(N(m, v) || N(0, 1)) per dim
    torch.testing.assert_close(r.prior, expected, atol=1e-12, rtol=1e-10)


def _expected_middle(t):
    """E over data and x_t of L_{t-1} (DDPM t, 2..N), sigma_t^2 = beta_t, from [Ho20] Eq. (7)."""
    beta, abar = chain(1000)
    i = t - 1  # 0-based
    bt, ab, ab_prev = beta[i], abar[i], abar[i - 1]
    tilde = (1 - ab_prev) / (1 - ab) * bt
    c_x0 = torch.sqrt(ab_prev) * bt / (1 - ab)
    post_var = S2 * (1 - ab) / (ab * S2 + (1 - ab))  # Var(x0 | x_t) per dim
    r = tilde / bt
    return 0.5 * D * (r - 1 - torch.log(r) + c_x0**2 * post_var / bt)


def test_middle_term_and_full_bound_match_closed_form(result):
    x, r = result
    t = 500  # DDPM's t; column N - t of the terms (t = N..2)
    col = r.terms[:, 1000 - t]
    se = col.std().item() / math.sqrt(len(col))
    assert abs(col.mean().item() - _expected_middle(t).item()) < 4 * se  # within 4 SE
    expected_mid = sum(_expected_middle(t).item() for t in range(2, 1001))
    se_mid = r.diffusion.std().item() / math.sqrt(len(x))
    assert abs(r.diffusion.mean().item() - expected_mid) < 4 * se_mid
    # Decoder: E[-log N(x0; x0_hat(x_1), beta_1)] with E(x0 - x0_hat)^2 = Var(x0 | x_1).
    beta, abar = chain(1000)
    post_var = S2 * (1 - abar[0]) / (abar[0] * S2 + 1 - abar[0])
    expected_dec = 0.5 * D * (math.log(2 * math.pi * beta[0]) + post_var / beta[0])
    se_dec = r.decoder.std().item() / math.sqrt(len(x))
    assert abs(r.decoder.mean().item() - expected_dec.item()) < 4 * se_dec


def test_bound_is_above_the_exact_nll_and_tightens_with_N():
    gm = GaussianMixture.gaussian(MU, torch.tensor(S2))
    x = gm.sample(2048, generator=seeded(2), dtype=F64)
    nll = -gm.log_prob(x).mean().item()
    gaps = []
    for n in (50, 1000):
        sde = VPSDE(N=n)
        r = vlb(discrete_exact_model(sde), sde, x, generator=seeded(3))
        se = r.nats.std().item() / math.sqrt(len(x))
        gaps.append(r.nats.mean().item() - nll)
        assert gaps[-1] > -3 * se  # a bound, up to Monte-Carlo noise
    # Measured gaps 0.19 (N=50) and 0.05 (N=1000) nats.
    assert gaps[1] < gaps[0]


def test_beta_tilde_is_tighter_for_near_discrete_data():
    # Where x_0 is (nearly) determined by x_t at small t, as for 8-bit pixels, the true reverse
    # variance approaches beta~_t ([Ho20] Sec. 3.2). Two near-point masses:
    gm = GaussianMixture(torch.tensor([[0.5, 0.5, -0.5], [-0.5, 0.3, 0.5]]),
                         torch.tensor([1e-6, 1e-6]))
    sde = VPSDE()
    x = gm.sample(1024, generator=seeded(4), dtype=F64)
    b = vlb(gm.eps_model(sde), sde, x, variance="beta", generator=seeded(5))
    bt = vlb(gm.eps_model(sde), sde, x, variance="beta_tilde", generator=seeded(5))
    nll = -gm.log_prob(x).mean().item()
    assert bt.nats.mean() < b.nats.mean()  # measured -11.2 vs -9.3 nats
    assert bt.nats.mean() > nll  # still a bound (-15.8)
    # For smooth data (N(MU, 0.25 I)) it is the other way round: beta is the tighter choice.
    g = GaussianMixture.gaussian(MU, torch.tensor(S2))
    y = g.sample(1024, generator=seeded(6), dtype=F64)
    m = discrete_exact_model(sde)
    beta = vlb(m, sde, y, variance="beta").nats.mean()
    assert beta < vlb(m, sde, y, variance="beta_tilde").nats.mean()


def test_sampled_steps_are_unbiased(result):
    x, full = result
    sde = VPSDE()
    est = vlb(discrete_exact_model(sde), sde, x[:1024], n_t=20, generator=seeded(7))
    se = est.diffusion.std().item() / math.sqrt(1024)
    assert abs(est.diffusion.mean().item() - full.diffusion[:1024].mean().item()) < 4 * se
    assert (est.diffusion_stderr > 0).all() and est.nfe == 21


def test_discretized_decoder_sums_to_one():
    levels = torch.linspace(-1, 1, 256, dtype=F64)
    for mean, var in [(0.0, 0.01), (0.97, 1e-4), (-1.3, 0.5)]:
        p = torch.exp(discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean),
                                                          torch.full_like(levels, var)))
        assert abs(p.sum().item() - 1) < 1e-9


def test_uint8_images_give_bits_per_dim():
    x = torch.randint(0, 256, (4, 1, 4, 4), dtype=torch.uint8, generator=seeded(8))
    sde = VPSDE(N=100)  # (N = 20 would make beta_N = 1: abar_N = 0, a degenerate chain)
    r = vlb(lambda z, t: torch.zeros_like(z), sde, x, generator=seeded(9))
    assert r.bpd is not None and torch.isfinite(r.bpd).all()
    torch.testing.assert_close(r.bpd, r.nats / (16 * math.log(2)))


def test_bad_input():
    with pytest.raises(ValueError, match="variance-preserving"):
        vlb(lambda z, t: z, VESDE(), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="unknown variance"):
        vlb(lambda z, t: z, VPSDE(), torch.zeros(2, 2), variance="x")
