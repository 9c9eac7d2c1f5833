"""Consistency distillation: a few-step model distilled from a trained diffusion model.

A consistency function maps any point ``x_t`` of a probability-flow trajectory to the point of
the same trajectory at ``t_min``, ``f(x_t, t) = x_{t_min}``, with the boundary condition
``f(x, t_min) = x`` ([Song23cm] Eq. 3). One evaluation at ``T`` is a one-step sampler; the
multistep sampler re-noises and applies it again ([Song23cm] Alg. 1,
:mod:`sde_gen.sampling.consistency`).

**Method: consistency distillation (CD, [Song23cm] Alg. 2) with an ODE-solver teacher**, not
ECT ([Geng24ect], consistency *tuning*: consistency training on data pairs ``x_t, x_r`` that share
one noise draw, started from the diffusion model's weights). Why:

- CD's target is the teacher's own ODE step, so the distilled model approaches the teacher's
  probability-flow map, which is what a few-step replacement of the teacher's sampler should
  reproduce, and what can be checked in closed form (the Gaussian transport map in the tests);
  ECT's target uses the teacher only through the initial weights, and its unbiasedness needs
  ``r -> t`` over a long schedule (an A100-hour on CIFAR-10), out of reach of a CPU budget.
- CD needs only ``x_t`` from the forward kernel and the teacher, on every path the package has
  (the teacher step below is finite where ``alpha_T = 0``).

Choices, each on one line of the code:

- **Parameterization** (every path): ``f(x, t) = c_skip(t) x + c_out(t) x0_theta(x, t)`` with
  ``c_skip = sigma_min / sigma_t`` and ``c_out = alpha_min - alpha_t sigma_min / sigma_t``: one
  DDIM step ([Song21ddim] Eq. 12, eta = 0) from ``t`` to ``t_min`` with the student's x0, the
  "DDIM parameterization" of [Heek24] Sec. 3. ``c_skip(t_min) = 1`` and ``c_out(t_min) = 0``
  exactly, so the boundary condition holds for any network; both are finite at ``alpha_T = 0``
  (``c_skip = sigma_min``, ``c_out = alpha_min`` on the flow paths); and a student copied from
  the teacher starts as the teacher's one-step DDIM sampler.
- **Teacher step**: a Heun step (two calls, second order, like [Song23cm]'s teacher) of the
  probability-flow ODE in its data-prediction form ([Lu22pp] Eq. 9), finite at ``alpha_T = 0``.
- **Target**: the student itself under stop-gradient (the target EMA ``mu = 0`` of
  [Song23ict] Sec. 3.2), so a distillation's state is that of a training run (model, EMA,
  optimizer, RNGs) and it resumes bitwise through :mod:`sde_gen.app.train`.
- **Metric and grid**: squared L2 (mean over dimensions) on ``N`` intervals of the Karras
  ``rho = 7`` grid from ``T`` to ``t_min`` ([Song23cm] Sec. 5 and App. C: ``N = 18`` for
  CIFAR-10), the interval drawn uniformly per example.

Shapes: ``x: (B, *D)``, ``t: (B,)``. Refs: [Song23cm] Eq. 3, Alg. 1-2; [Song23ict] Sec. 3.2;
[Heek24] Sec. 3; [Lu22pp] Eq. 9; [Geng24ect].
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .errors import UserInputError
from .noise import Generator, randn
from .parameterization import EpsModel, eps_to_x0, model_name, model_prediction, predicts_x0
from .sde import SDE
from .tensor_utils import append_dims

__all__ = ["ConsistencyModel", "consistency_coeffs", "consistency_distillation_loss",
           "consistency_function", "distillation_grid", "is_consistency_model", "model_x0",
           "teacher_step"]


def _coeffs(sde: SDE, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha_t, sigma_t)`` in float64 (the ratios below cancel exactly at ``t_min``)."""
    return sde.marginal_coeffs(t.to(torch.float64))


def consistency_coeffs(sde: SDE, t: torch.Tensor, t_min: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out)`` of the DDIM parameterization ([Heek24] Sec. 3), float64 ``(B,)``:
    ``c_skip = sigma_min / sigma_t``, ``c_out = alpha_min - alpha_t c_skip``; exactly ``(1, 0)``
    at ``t = t_min`` (the boundary condition, [Song23cm] Eq. 3)."""
    alpha_t, sigma_t = _coeffs(sde, t)
    alpha_m, sigma_m = _coeffs(sde, torch.full_like(t, t_min, dtype=torch.float64))
    c_skip = sigma_m / sigma_t
    return c_skip, alpha_m - alpha_t * c_skip


def model_x0(model: Any, sde: SDE, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The x0 prediction of an eps-model: its own (:func:`~.parameterization.predicts_x0`,
    finite where ``alpha_t = 0``), else Tweedie's ``(x - sigma_t eps) / alpha_t``."""
    if predicts_x0(model):
        return model_prediction(model, x, t)[1]
    alpha_t, sigma_t = sde.marginal_coeffs(t)
    return eps_to_x0(x, model(x, t), alpha_t.to(x.dtype), sigma_t.to(x.dtype))


def consistency_function(student: Any, sde: SDE, x: torch.Tensor, t: torch.Tensor, *,
                         t_min: float) -> torch.Tensor:
    """``f(x, t) = c_skip(t) x + c_out(t) x0_theta(x, t)``, the student's estimate of the
    probability-flow point at ``t_min`` ([Song23cm] Eq. 5 with [Heek24]'s coefficients).

    Args:
        student: a model whose x0 prediction is the network output (:func:`model_x0`).
    """
    c_skip, c_out = consistency_coeffs(sde, t, t_min)
    n, dt = x.ndim, x.dtype
    return append_dims(c_skip, n).to(dt) * x + append_dims(c_out, n).to(dt) * model_x0(
        student, sde, x, t)


def teacher_step(teacher: EpsModel, sde: SDE, x: torch.Tensor, t: torch.Tensor,
                 s: torch.Tensor) -> torch.Tensor:
    """One second-order step of the probability-flow ODE from ``t`` down to ``s`` (per example)
    with two teacher calls, finite where ``alpha_t = 0``.

    The ODE in data-prediction form, ``x_s / sigma_s = x_t / sigma_t + int e^lambda x0 dlambda``
    ([Lu22pp] Eq. 9; ``lambda = log(alpha / sigma)``, ``h = lambda_s - lambda_t``), integrated
    exactly for x0 linear in ``lambda`` between its values at ``t`` and at DDIM's prediction
    at ``s``: a Heun step (the teacher of [Song23cm]) on the exponential integrator.
    Shapes: ``t, s: (B,)``.
    """
    alpha_t, sigma_t = _coeffs(sde, t)
    alpha_s, sigma_s = _coeffs(sde, s)
    h = torch.log(alpha_s / sigma_s) - torch.log(alpha_t / sigma_t)  # inf where alpha_t = 0
    n, dt = x.ndim, x.dtype

    def col(c: torch.Tensor) -> torch.Tensor:
        return append_dims(c, n).to(dt)

    ratio = sigma_s / sigma_t
    x0_t = model_x0(teacher, sde, x, t.to(dt))
    euler = col(ratio) * x + col(alpha_s - alpha_t * ratio) * x0_t  # DDIM, [Song21ddim] Eq. 12
    x0_s = model_x0(teacher, sde, euler, s.to(dt))
    slope = alpha_s * (1 - 1 / h) + alpha_t * ratio / h  # int e^l (l - l_t) / h, times sigma_s
    return euler + col(slope) * (x0_s - x0_t)


def distillation_grid(sde: SDE, intervals: int, *, t_min: float,
                      spacing: str = "karras") -> torch.Tensor:
    """The decreasing ``intervals + 1`` times ``T = t_N > ... > t_0 = t_min`` of the
    distillation ([Song23cm] Sec. 5: Karras' ``rho = 7`` spacing, ``N = 18`` on CIFAR-10)."""
    from .sampling.grids import make_grid

    return make_grid(sde, intervals, t_min=t_min, spacing=spacing)


def consistency_distillation_loss(
    student: Any, teacher: EpsModel, sde: SDE, x0: torch.Tensor, ts: torch.Tensor, *,
    generator: Generator = None,
) -> torch.Tensor:
    """The consistency-distillation loss of each example, ``(B,)`` ([Song23cm] Alg. 2 with the
    target ``mu = 0`` of [Song23ict] Sec. 3.2).

    For each example an interval ``ts[n] > ts[n + 1]`` is drawn uniformly, ``x_t = alpha_t x0 +
    sigma_t z`` at ``t = ts[n]``, the teacher steps to ``s = ts[n + 1]`` (:func:`teacher_step`),
    and the loss is ``mean((f(x_t, t) - sg[f(x_s, s)])^2)`` over the dimensions.

    Args:
        student: the model being distilled (x0 through :func:`model_x0`).
        teacher: the frozen diffusion model (an eps-model).
        x0: data ``(B, *D)``.
        ts: the decreasing grid (:func:`distillation_grid`); ``ts[-1]`` is ``t_min``.
        generator: source of the interval and noise draws.
    """
    b, dt = x0.shape[0], x0.dtype
    ts = ts.to(x0.device, torch.float64)
    n = torch.randint(0, len(ts) - 1, (b,), generator=generator, device=x0.device)
    t, s = ts[n], ts[n + 1]
    z = randn(x0.shape, generator, device=x0.device, dtype=dt)
    alpha_t, sigma_t = _coeffs(sde, t)
    x_t = append_dims(alpha_t, x0.ndim).to(dt) * x0 + append_dims(sigma_t, x0.ndim).to(dt) * z
    t_min = float(ts[-1])
    with torch.no_grad():
        x_s = teacher_step(teacher, sde, x_t, t, s)
        target = consistency_function(student, sde, x_s, s.to(dt), t_min=t_min)
    pred = consistency_function(student, sde, x_t, t.to(dt), t_min=t_min)
    return (pred - target).pow(2).flatten(1).mean(1)


def is_consistency_model(model: object) -> bool:
    """Whether ``model`` is a distilled consistency model (``model.consistency(x, t)``)."""
    return bool(getattr(model, "is_consistency_model", False)) and callable(
        getattr(model, "consistency", None))


class ConsistencyModel(nn.Module):
    """A distilled student as the sampler sees it: ``consistency(x, t) -> x_{t_min}``.

    It is not an eps-model: calling it (``model(x, t)``, what every other solver, the likelihood
    and guidance do) raises a one-line :class:`~sde_gen.errors.UserInputError` naming the
    solver to use.

    Args:
        student: the distilled network's model (a :class:`~sde_gen.parameterization.ScoreModel`
            of the teacher's architecture).
        sde: the teacher's SDE.
        t_min: the boundary time ``f(x, t_min) = x``.
    """

    is_consistency_model = True

    def __init__(self, student: nn.Module, sde: SDE, t_min: float) -> None:
        super().__init__()
        if not (math.isfinite(t_min) and 0 < t_min < sde.T):
            raise UserInputError(f"t_min must lie in (0, T={sde.T}), got {t_min!r}")
        self.student, self.sde, self.t_min = student, sde, float(t_min)

    def consistency(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``f(x, t)`` (:func:`consistency_function`). Shapes: ``(B, *D), (B,) -> (B, *D)``."""
        return consistency_function(self.student, self.sde, x, t, t_min=self.t_min)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise UserInputError(
            f"model {model_name(self)} is a distilled consistency model, not an eps-model: "
            "sample it with solver='consistency' (sde-gen sample --solver consistency)")
