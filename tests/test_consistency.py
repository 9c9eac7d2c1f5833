"""Consistency distillation against closed forms: for Gaussian data the probability-flow map from
``x_t`` to ``x_{t_min}`` is affine, so the distilled one-step map, the teacher's step and the
multistep sampler each have an exact answer, on every registered path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import F64, SDES, seeded, user_error
from sde_gen.analytic import GaussianMixture
from sde_gen.consistency import (
    ConsistencyModel,
    consistency_coeffs,
    consistency_distillation_loss,
    consistency_function,
    distillation_grid,
    teacher_step,
)
from sde_gen.nets.mlp import MLP
from sde_gen.parameterization import ScoreModel
from sde_gen.sampling import sample

torch.set_num_threads(1)

MEAN = torch.tensor([0.5, -1.0], dtype=F64)
VAR = torch.tensor([0.3, 1.5], dtype=F64)  # N(MEAN, diag(VAR)): per coordinate, closed forms


def coeffs(sde, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    return sde.marginal_coeffs(torch.tensor([t], dtype=F64))


def exact_map(sde, x: torch.Tensor, t: float, t_min: float) -> torch.Tensor:
    """The PF-ODE map x_t -> x_{t_min} of N(m, diag(v)) data: per coordinate
    ``alpha_m m + sqrt(alpha_m^2 v + sigma_m^2) / sqrt(alpha_t^2 v + sigma_t^2) (x - alpha_t m)``
    (the ODE is linear and diagonal in the covariance's eigenbasis)."""
    (a_t,), (s_t,) = coeffs(sde, t)
    (a_m,), (s_m,) = coeffs(sde, t_min)
    return a_m * MEAN + torch.sqrt((a_m**2 * VAR + s_m**2) / (a_t**2 * VAR + s_t**2)) * (
        x - a_t * MEAN)


class GaussianTeacher:
    """The exact model of N(MEAN, diag(VAR)) in closed form (Tweedie's x0 is affine)."""

    predicts_x0 = True

    def __init__(self, sde) -> None:
        self.sde = sde

    def predict(self, x, t):
        a, s = (c.to(F64)[:, None] for c in self.sde.marginal_coeffs(t.to(F64)))
        x0 = MEAN + a * VAR / (a**2 * VAR + s**2) * (x - a * MEAN)
        return (x - a * x0) / s, x0

    def __call__(self, x, t):
        return self.predict(x, t)[0]


class TableStudent(nn.Module):
    """x0_theta(x, t) = a_n * c_in(t) x + b_n at grid time t_n: a model class that holds the
    affine consistency map at every grid time (c_in = 1/sqrt(alpha^2 + sigma^2) conditions it)."""

    predicts_x0 = True

    def __init__(self, sde, ts: torch.Tensor) -> None:
        super().__init__()
        self.sde, self.ts = sde, ts
        self.a = nn.Parameter(torch.zeros(len(ts), 2, dtype=F64))
        self.b = nn.Parameter(torch.zeros(len(ts), 2, dtype=F64))

    def predict(self, x, t):
        i = torch.searchsorted(-self.ts, -t.to(F64)).clamp(max=len(self.ts) - 1)
        a, s = self.sde.marginal_coeffs(t.to(F64))
        x0 = self.a[i] * (x * torch.rsqrt(a**2 + s**2)[:, None]) + self.b[i]
        return x0, x0


def test_the_teacher_gaussian_is_the_package_oracle():
    sde = SDES["vp"]()
    x = torch.randn(64, 2, generator=seeded(0), dtype=F64)
    t = torch.rand(64, generator=seeded(1), dtype=F64) * 0.99 + 0.005
    gm = GaussianMixture.gaussian(MEAN, VAR)
    assert torch.allclose(GaussianTeacher(sde)(x, t), gm.eps(x, t, sde), atol=1e-10)


@pytest.mark.parametrize("name", list(SDES))
def test_the_teacher_step_is_second_order(name):
    """Composing teacher steps over N and 2N Karras intervals: the error to the exact map falls
    about 4x (second order; first order would halve it: the ratio is in [2.7, 5.5])."""
    sde = SDES[name]()
    t_min = sde.default_t_min
    x_T = sde.prior_sampling((256, 2), generator=seeded(1), dtype=F64)
    exact = exact_map(sde, x_T, sde.T, t_min)
    errors = []
    for n in (32, 64):
        ts, x = distillation_grid(sde, n, t_min=t_min), x_T
        for k in range(n):
            x = teacher_step(GaussianTeacher(sde), sde, x, ts[k].expand(256), ts[k + 1].expand(256))
        errors.append(float((x - exact).pow(2).sum(1).mean().sqrt()))
    assert 2.7 < errors[0] / errors[1] < 5.5, errors


@pytest.mark.parametrize("name", list(SDES))
def test_boundary_condition_holds_for_any_network(name):
    """f(x, t_min) = x exactly (c_skip = 1, c_out = 0) for an untrained network, and c_skip,
    c_out are finite at T (alpha_T = 0 on flow and trig)."""
    sde = SDES[name]()
    t_min = sde.default_t_min
    torch.manual_seed(0)
    student = ScoreModel(MLP(dim=2, width=16, depth=1, emb_dim=16, out_dim=2), sde,
                         prediction="x0" if sde.pure_noise_at_T else "eps").double()
    x = torch.randn(32, 2, generator=seeded(2), dtype=F64)
    t = torch.full((32,), t_min, dtype=F64)
    assert torch.equal(consistency_function(student, sde, x, t, t_min=t_min), x)
    c_skip, c_out = consistency_coeffs(sde, torch.tensor([sde.T, 0.5, t_min], dtype=F64), t_min)
    assert torch.isfinite(c_skip).all() and torch.isfinite(c_out).all()
    assert (c_skip[-1], c_out[-1]) == (1.0, 0.0)


@pytest.mark.parametrize("name", list(SDES))
def test_one_step_distillation_reproduces_the_gaussian_transport_map(name):
    """Distilled with the exact Gaussian score as teacher, a model class that holds affine maps
    converges to the CD fixed point (the teacher's 18 Heun steps composed; RMS < 0.01 after 1000
    steps, 1e-15 after 2000) and so to the closed-form PF-ODE map x_T -> x_{t_min} within the
    teacher's discretization error (RMS < 0.06 at N = 18: 0.016-0.056 by path, second order);
    the untrained student (one DDIM step) is 0.3 or more away."""
    sde = SDES[name]()
    t_min = sde.default_t_min
    ts = distillation_grid(sde, 18, t_min=t_min)
    teacher, student = GaussianTeacher(sde), TableStudent(sde, ts)
    x_T = sde.prior_sampling((512, 2), generator=seeded(1), dtype=F64)
    T = torch.full((512,), sde.T, dtype=F64)

    def rms(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).pow(2).sum(1).mean().sqrt())

    exact = exact_map(sde, x_T, sde.T, t_min)
    with torch.no_grad():
        before = rms(consistency_function(student, sde, x_T, T, t_min=t_min), exact)
    opt = torch.optim.Adam(student.parameters(), lr=3e-2)
    steps = 1000
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = seeded(0)
    for _ in range(steps):
        x0 = MEAN + VAR.sqrt() * torch.randn(256, 2, generator=g, dtype=F64)
        loss = consistency_distillation_loss(student, teacher, sde, x0, ts, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        one_step = consistency_function(student, sde, x_T, T, t_min=t_min)
        x = x_T
        for k in range(len(ts) - 1):
            x = teacher_step(teacher, sde, x, ts[k].expand(512), ts[k + 1].expand(512))
    assert rms(one_step, x) < 0.01, rms(one_step, x)
    assert rms(one_step, exact) < 0.06, rms(one_step, exact)
    assert before > 0.3, before


class ExactConsistency:
    """The exact consistency function of the Gaussian (what a perfect distillation gives)."""

    is_consistency_model = True

    def __init__(self, sde, t_min: float) -> None:
        self.sde, self.t_min = sde, t_min

    def consistency(self, x, t):
        return exact_map(self.sde, x, float(t[0]), self.t_min)

    def __call__(self, x, t):
        raise AssertionError("a consistency model is not called as an eps-model")


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("k", [1, 2, 4])
def test_multistep_sampling_with_the_exact_function_draws_q_t_min(name, k):
    """Song et al. Alg. 1 with the exact consistency function and the exact forward kernel
    t_min -> tau gives q_{t_min} = N(alpha m, alpha^2 v + sigma^2) at K steps, K NFE, no
    denoise (mean within 0.03, variance within 5%, 20000 samples; VP's prior is q_T to 1e-4)."""
    sde = SDES[name]()
    t_min = sde.default_t_min
    res = sample(ExactConsistency(sde, t_min), sde, (20000, 2), "consistency", steps=k,
                 generator=seeded(3), dtype=F64)
    assert res.nfe == k and len(res.ts) == k + 1
    (a_m,), (s_m,) = coeffs(sde, t_min)
    mean, var = a_m * MEAN, a_m**2 * VAR + s_m**2
    assert torch.allclose(res.x.mean(0), mean, atol=0.03), res.x.mean(0)
    assert torch.allclose(res.x.var(0) / var, torch.ones(2, dtype=F64), atol=0.05), res.x.var(0)


def test_the_consistency_solver_and_model_refuse_each_other_s_misuse():
    sde = SDES["vp"]()
    gm = GaussianMixture.gaussian(MEAN, VAR)
    msg = user_error(lambda: sample(gm.eps_model(sde), sde, (4, 2), "consistency"))
    assert "distilled consistency model" in msg
    cm = ConsistencyModel(ScoreModel(MLP(dim=2, width=8, depth=1, emb_dim=8, out_dim=2), sde),
                          sde, sde.default_t_min)
    assert "solver='consistency'" in user_error(lambda: sample(cm, sde, (4, 2), "ddim"))
    assert "t_min=0.001" in user_error(lambda: sample(cm, sde, (4, 2), "consistency",
                                                       t_min=0.01))
    ts = torch.tensor([0.5, 1e-3], dtype=F64)
    assert "starts from the prior" in user_error(lambda: sample(cm, sde, (4, 2), "consistency",
                                                                ts=ts))
    assert "t_min must lie" in user_error(lambda: ConsistencyModel(cm.student, sde, 0.0))
