"""Training-recipe components against their formulas: time sampling and importance weights,
min-SNR and EDM weightings, EDM preconditioning, log-SNR conditioning, EMA modes, LR schedules.

References are written here independently of the package (closed forms of [Song21] Eq. 29-30,
[Hang23] Eq. 9, [Karras22] Table 1, [Karras24] Eq. 1-3).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers import DIFFUSION_SDES, F64, SDE_NAMES, SDES, make_sde, seeded
from sde_gen.analytic import GaussianMixture
from sde_gen.app.config import ConfigError, load_config
from sde_gen.app.train import lr_at
from sde_gen.ema import EMA, power_ema_gamma
from sde_gen.losses import dsm_loss, make_weighting, weight_likelihood
from sde_gen.parameterization import ScoreModel
from sde_gen.sde import VESDE, VPSDE
from sde_gen.time_sampling import TimeSampler

DIFFUSION_NAMES = [n for n in SDE_NAMES if n not in SDES or n in DIFFUSION_SDES]

T_EPS = 1e-5


def log_t_quadrature(fn, lo: float, hi: float, n: int = 200_001) -> float:
    """``int_lo^hi fn(t) dt`` by the trapezoid rule in ``u = log t`` (fn ~ 1/t near 0)."""
    u = torch.linspace(math.log(lo), math.log(hi), n, dtype=F64)
    t = torch.exp(u)
    return torch.trapezoid(fn(t) * t, u).item()


@pytest.mark.parametrize("name", SDE_NAMES)
def test_likelihood_weight_is_minus_dlogsnr_dt(name):
    # The identity behind importance sampling: g^2 / sigma^2 = -d log SNR / dt (autograd here).
    sde = make_sde(name)
    t = torch.linspace(1e-4, sde.T - 1e-3, 97, dtype=F64).requires_grad_(True)
    log_snr = 2 * sde.log_snr(t)
    (d,) = torch.autograd.grad(log_snr.sum(), t)
    torch.testing.assert_close(weight_likelihood(sde, t.detach()), -d, rtol=1e-8, atol=0)


# The diffusion SDEs: on a flow path the log-SNR range is infinite (importance sampling in it
# has no density; the flow paths' own time densities are tested with the training recipe).
@pytest.mark.parametrize("sampling", ["uniform", "importance", "lognormal"])
@pytest.mark.parametrize("name", DIFFUSION_NAMES)
def test_time_density_integrates_to_one_and_matches_draws(name, sampling):
    sde = make_sde(name)
    ts = TimeSampler(sampling)
    total = log_t_quadrature(lambda t: ts.density(sde, t, t_eps=T_EPS), T_EPS, sde.T)
    assert abs(total - 1) < 1e-6, total  # quadrature error of 2e5 log-spaced points
    t, r = ts.sample(sde, 40_000, t_eps=T_EPS, generator=seeded(1), dtype=F64)
    assert t.min() >= T_EPS and t.max() <= sde.T and torch.isfinite(r).all()
    # Empirical CDF at three points against the integrated density, within 4 binomial SEs.
    for q in (0.01, 0.2, 0.6):
        c = T_EPS + q * (sde.T - T_EPS)
        cdf = log_t_quadrature(lambda s: ts.density(sde, s, t_eps=T_EPS), T_EPS, c)
        emp = (t <= c).double().mean().item()
        assert abs(emp - cdf) < 4 * math.sqrt(cdf * (1 - cdf) / 40_000) + 1e-4, (q, emp, cdf)


@pytest.mark.parametrize("name", DIFFUSION_NAMES)
def test_importance_estimator_equals_uniform_in_expectation(name):
    sde = make_sde(name)
    def f(t):
        return weight_likelihood(sde, t) * (0.3 + torch.sin(3 * t) ** 2)

    exact = log_t_quadrature(f, T_EPS, sde.T) / (sde.T - T_EPS)  # E_{U(t_eps, T)} f
    t, r = TimeSampler("importance").sample(sde, 200_000, t_eps=T_EPS, generator=seeded(2),
                                            dtype=F64)
    est = r * f(t)
    se = est.std().item() / math.sqrt(est.numel())
    assert abs(est.mean().item() - exact) < 4 * se, (est.mean().item(), exact, se)
    # With p proportional to the likelihood weighting, r(t) w(t) is the constant
    # 2 (lambda(t_eps) - lambda(T)) / (T - t_eps): a zero-variance estimator of its integral.
    lam = sde.log_snr(torch.tensor([T_EPS, sde.T], dtype=F64))
    const = 2 * (lam[0] - lam[1]).item() / (sde.T - T_EPS)
    torch.testing.assert_close(r * weight_likelihood(sde, t), torch.full_like(t, const),
                               rtol=1e-6, atol=0)


def test_ve_importance_sampling_is_uniform():
    # VE: g^2 / sigma^2 = 2 log(sigma_max / sigma_min), a constant, so p(t) is uniform.
    sde = VESDE()
    t = torch.linspace(0.01, 0.99, 11, dtype=F64)
    torch.testing.assert_close(TimeSampler("importance").density(sde, t, t_eps=0.0),
                               torch.ones_like(t), rtol=1e-9, atol=0)


def test_lognormal_follows_edm_log_sigma():
    sde = VESDE(sigma_min=0.002, sigma_max=80.0)
    t, r = TimeSampler("lognormal", p_mean=-1.2, p_std=1.2).sample(
        sde, 100_000, t_eps=0.0, generator=seeded(3), dtype=F64)
    log_sigma = torch.log(sde.sigma(t))
    assert (r == 1).all()  # EDM does not reweight
    # Truncation at [ln 0.002, ln 80] removes < 0.2% of N(-1.2, 1.2^2): moments within 4 SE.
    assert abs(log_sigma.mean().item() + 1.2) < 4 * 1.2 / math.sqrt(1e5) + 2e-3
    assert abs(log_sigma.std().item() - 1.2) < 0.01


def test_min_snr_and_edm_weights_equal_their_formulas():
    sde, t = VPSDE(), torch.linspace(1e-4, 1.0, 50, dtype=F64)
    big_b = 0.1 * t + 19.9 * t**2 / 2
    alpha2, sigma2 = torch.exp(-big_b), 1 - torch.exp(-big_b)
    snr = alpha2 / sigma2
    ref = torch.where(snr < 5, torch.ones_like(snr), 5 / snr)  # min(SNR, 5) / SNR
    torch.testing.assert_close(make_weighting("min_snr", gamma=5.0)(sde, t), ref,
                               rtol=1e-10, atol=0)
    # EDM: lambda(sigma) = (sigma^2 + s^2) / (sigma s)^2 on ||D - x0||^2
    # = sigma^2 ||eps_hat - eps||^2.
    s, sigma2_edm = 0.5, sigma2 / alpha2
    ref = (sigma2_edm + s**2) / (sigma2_edm * s**2) * sigma2_edm
    torch.testing.assert_close(make_weighting("edm", sigma_data=s)(sde, t), ref, rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="gamma must be positive"):
        make_weighting("min_snr", gamma=0.0)
    with pytest.raises(ValueError, match="unknown weighting 'snr'"):
        make_weighting("snr")


class _Fixed(nn.Module):
    """A 'network' returning a fixed function of its input and recording c_noise."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.seen = fn, None

    def forward(self, x, c_noise):
        self.seen = c_noise
        return self.fn(x)


@pytest.mark.parametrize("name", list(SDES))
def test_edm_preconditioning_equals_table_1(name):
    sde, s = SDES[name](), 0.7
    x = torch.randn(64, 3, generator=seeded(4), dtype=F64) * 3
    # up to T, or just below it on a flow path (the reference below divides by alpha_T = 0;
    # the model itself is finite there: test_flow_path.py)
    t = torch.linspace(1e-4, 1.0 - (1e-6 if sde.pure_noise_at_T else 0.0), 64, dtype=F64)
    def F(x_in):
        return torch.tanh(x_in) - 0.3

    eps = ScoreModel(_Fixed(F), sde, prediction="edm", sigma_data=s)(x, t)
    alpha_t, sigma_t = sde.marginal_coeffs(t)
    sig = (sigma_t / alpha_t)[:, None]
    x_tilde = x / alpha_t[:, None]  # EDM's x = x_t / alpha_t, noise std sigma
    c_skip, c_out = s**2 / (sig**2 + s**2), sig * s / (sig**2 + s**2).sqrt()
    c_in = 1 / (sig**2 + s**2).sqrt()
    D = c_skip * x_tilde + c_out * F(c_in * x_tilde)
    eps_ref = (x - alpha_t[:, None] * D) / sigma_t[:, None]
    torch.testing.assert_close(eps, eps_ref, rtol=1e-9, atol=1e-9)


def test_edm_skip_is_the_gaussian_denoiser():
    # With F = 0 the EDM model is the exact eps of N(0, s^2 I) data, at every t and SDE.
    s = 0.6
    gm = GaussianMixture.gaussian(torch.zeros(2, dtype=F64), torch.tensor(s**2, dtype=F64))
    x = torch.randn(32, 2, generator=seeded(5), dtype=F64)
    t = torch.linspace(1e-3, 1.0, 32, dtype=F64)
    for sde in (cls() for cls in SDES.values()):
        model = ScoreModel(_Fixed(torch.zeros_like), sde, prediction="edm", sigma_data=s)
        torch.testing.assert_close(model(x, t), gm.eps(x, t, sde), rtol=1e-9, atol=1e-10)


def test_logsnr_conditioning_passes_lambda():
    sde, net = VPSDE(), _Fixed(torch.zeros_like)
    t = torch.tensor([1e-3, 0.5, 1.0], dtype=F64)
    ScoreModel(net, sde, noise_cond="logsnr")(torch.zeros(3, 2, dtype=F64), t)
    torch.testing.assert_close(net.seen, sde.log_snr(t))
    ScoreModel(net, sde)(torch.zeros(3, 2, dtype=F64), t)
    assert torch.equal(net.seen, t)  # default: the time itself
    with pytest.raises(ValueError, match="unknown noise_cond"):
        ScoreModel(net, sde, noise_cond="sigma")


def test_dsm_loss_with_every_sampling_and_weighting_is_finite():
    sde, x0 = VPSDE(), torch.randn(256, 2, generator=seeded(6))
    for ts in ("uniform", "importance", "lognormal"):
        for w in ("simple", "likelihood", "min_snr", "edm"):
            loss = dsm_loss(lambda x, t: torch.zeros_like(x), sde, x0, weighting=w,
                            time_sampling=ts, generator=seeded(7))
            assert loss.shape == (256,) and torch.isfinite(loss).all(), (ts, w)
    with pytest.raises(ValueError, match="needs continuous time"):
        dsm_loss(lambda x, t: x, sde, x0, time_sampling="importance", discrete=True)


def _scalar_model(value: float) -> nn.Module:
    m = nn.Linear(1, 1, bias=False)
    nn.init.constant_(m.weight, value)
    return m


def test_ema_warmup_and_power_rules():
    ema = EMA(_scalar_model(0.0), 0.999, mode="warmup")
    assert ema.beta(1) == pytest.approx(2 / 11) and ema.beta(10**6) == 0.999
    # Power EMA ([Karras24] Eq. 1-2): the first update copies the weights (no initial bias), and
    # the average of a linear ramp p_k = k over n updates is n (gamma + 1) / (gamma + 2) + O(1).
    model = _scalar_model(123.0)
    ema = EMA(model, 0.0, mode="power", sigma_rel=0.1)
    n = 2000
    for k in range(1, n + 1):
        nn.init.constant_(model.weight, float(k))
        ema.update(model)
        if k == 1:
            assert ema.module.weight.item() == 1.0
    g = ema.gamma
    assert abs(ema.module.weight.item() - n * (g + 1) / (g + 2)) < 2.0
    # Eq. 3: sigma_rel = sqrt((g + 1) / ((g + 2)^2 (g + 3))); EDM2's sigma_rel 0.10 is gamma 6.94.
    assert power_ema_gamma(0.1) == pytest.approx(6.94, abs=0.01)
    for s in (0.05, 0.15):
        g = power_ema_gamma(s)
        assert math.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3))) == pytest.approx(s, rel=1e-9)


def test_ema_copy_is_in_eval_mode():
    # Regression: the copy was made from the model in train mode, so dropout stayed on while
    # sample grids were drawn.
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    ema = EMA(model, 0.9)
    assert not ema.module.training and model.training
    ema.update(model)
    x = torch.ones(8, 4)
    assert not ema.module.training and torch.equal(ema.module(x), ema.module(x))


def test_cosine_lr_schedule():
    cfg = load_config(None, ["train.lr=1e-3", "train.warmup=10", "train.steps=110",
                             "train.lr_schedule=cosine"])
    assert lr_at(0, cfg) == pytest.approx(1e-4)  # warmup: (step + 1) / warmup
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(5e-4)  # halfway through the cosine
    assert lr_at(110, cfg) == pytest.approx(0.0, abs=1e-12)
    const = load_config(None, ["train.lr=1e-3", "train.warmup=10", "train.steps=110",
                               "train.lr_schedule=constant"])
    assert lr_at(100, const) == 1e-3


@pytest.mark.parametrize("override, message", [
    ("train.weighting=snr", "train.weighting: 'snr' is not one of"),
    ("train.time_sampling=beta", "train.time_sampling: 'beta' is not one of"),
    ("train.min_snr_gamma=0", "train.min_snr_gamma: 0.0 must be greater than 0.0"),
    ("train.min_snr_gamma=-1", "train.min_snr_gamma: -1.0 must be greater than 0.0"),
    ("train.p_std=0", "train.p_std: 0.0 must be greater than 0.0"),
    ("train.ema_mode=karras", "train.ema_mode: 'karras' is not one of"),
    ("train.lr_schedule=step", "train.lr_schedule: 'step' is not one of"),
    ("model.prediction=score", "model.prediction: 'score' is not one of"),
    ("model.noise_cond=sigma", "model.noise_cond: 'sigma' is not one of"),
])
def test_recipe_options_are_validated(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_discrete_training_rejects_non_uniform_time_sampling():
    with pytest.raises(ConfigError, match="also set train.time_sampling=uniform"):
        load_config(None, ["train.discrete=true", "train.time_sampling=importance"])
