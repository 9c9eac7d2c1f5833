"""The probability-flow ODE and the one adapter to ``torchdiffeq.odeint``.

The probability-flow ODE ``dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t)`` ([Song21] Eq. 13) has the
same marginals as the SDE: integrated from ``T`` down to ``t_min`` it maps prior samples to data
(the ``ode`` sampler, ``decode``), and up from ``t_min`` it gives the likelihood and ``encode``.

Refs: [Song21] Eq. (13); [Chen18] (torchdiffeq).
"""

from __future__ import annotations

from typing import Callable

import torch
from torchdiffeq import odeint

from .errors import SDEGenError, UserInputError
from .parameterization import EpsModel, model_prediction, predicts_x0, score_fn
from .sde import SDE
from .tensor_utils import append_dims

__all__ = ["ADAPTIVE", "FIXED", "ODEDivergedError", "check_method", "odeint_between",
           "odeint_path", "probability_flow"]

#: torchdiffeq's adaptive methods: the tolerances set the steps.
ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
#: torchdiffeq's fixed-step methods: one step per interval of the given times.
FIXED = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams")


class ODEDivergedError(SDEGenError, ArithmeticError):
    """An adaptive ODE solve whose step size shrank to zero: the drift is NaN or infinite (a
    diverged model) or the ODE is too stiff for the tolerances."""


def check_method(method: object) -> str:
    """``method`` if torchdiffeq has it (:data:`ADAPTIVE` or :data:`FIXED`), else a one-line
    :class:`~sde_gen.errors.UserInputError`."""
    if method not in ADAPTIVE + FIXED:
        raise UserInputError(f"unknown ODE method {method!r}; choose one of "
                             f"{', '.join(ADAPTIVE + FIXED)}")
    return method  # type: ignore[return-value]


def probability_flow(model: EpsModel, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor],
                                                           torch.Tensor]:
    """``func(t, x)`` for torchdiffeq: the probability-flow drift, ``t`` a 0-d tensor.

    ``f x - 1/2 g^2 score`` ([Song21] Eq. 13), which for these SDEs equals
    ``alpha' x0 + sigma' eps`` (with ``f = alpha'/alpha`` and ``g^2 = 2 sigma sigma' - 2 f
    sigma^2``). On a path whose ``alpha_T = 0`` (the flow paths) ``f`` and ``g`` diverge at
    ``T`` and the second form is used, with the model's own x0
    (:func:`~sde_gen.parameterization.model_prediction`) where the model gives one: finite on
    all of ``[t_min, T]``.
    """
    if sde.pure_noise_at_T and predicts_x0(model):

        def velocity(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            tt = t.to(x.dtype).expand(x.shape[0])
            eps, x0 = model_prediction(model, x, tt)
            d_alpha, d_sigma = (append_dims(c.to(x.dtype), x.ndim)
                                for c in sde.marginal_coeffs_derivative(tt))
            return d_alpha * x0 + d_sigma * eps

        return velocity
    rsde = sde.reverse(score_fn(model, sde), probability_flow=True)

    def func(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return rsde.sde(x, t.to(x.dtype).expand(x.shape[0]))[0]

    return func


def odeint_path(func: Callable, state, ts: torch.Tensor, *, method: str, rtol: float,
                atol: float):
    """Integrate ``func`` along the times ``ts`` (monotone) and return the state at every one.

    Adaptive methods choose their own steps between ``ts[0]`` and ``ts[-1]`` and interpolate at
    the inner times (which do not change the steps). They are told to land on ``ts[-1]``
    (``step_t``) rather than step past it and interpolate back, and their first step is capped at
    1% of the span (torchdiffeq's initial-step probe otherwise can land beyond it, e.g. below
    t = 0 where VP is undefined), so the model is never evaluated outside the span. Fixed-step
    methods take one step per interval of ``ts``. ``method`` is one of :data:`ADAPTIVE` or
    :data:`FIXED` (checked by the callers).

    Returns:
        ``(len(ts), *state.shape)``, or a tuple of those for a tuple state.

    Raises:
        ODEDivergedError: an adaptive solve whose step underflowed (torchdiffeq's bare
            ``AssertionError``).
    """
    if method not in ADAPTIVE:
        return odeint(func, state, ts, method=method)
    first = 0.01 * (ts[-1] - ts[0]).abs()
    try:
        return odeint(func, state, ts, method=method, rtol=rtol, atol=atol,
                      options={"step_t": ts[-1:], "first_step": first})
    except AssertionError as e:
        if "underflow" not in str(e):
            raise
        raise ODEDivergedError(
            f"the {method} solve of the probability-flow ODE stopped: its step size underflowed "
            f"between t = {float(ts[0]):g} and {float(ts[-1]):g} (the model's output is NaN or "
            f"infinite, or the tolerances rtol={rtol:g}, atol={atol:g} are too tight)") from None


def odeint_between(
    func: Callable,
    state,
    t0: torch.Tensor,
    t1: torch.Tensor,
    *,
    method: str,
    rtol: float,
    atol: float,
    grid: torch.Tensor | None = None,
):
    """Integrate ``func`` from ``t0`` to ``t1`` and return the state at ``t1``
    (:func:`odeint_path`; fixed-step methods walk ``grid`` when given)."""
    ts = grid if grid is not None and method in FIXED else torch.stack([t0, t1])
    out = odeint_path(func, state, ts, method=method, rtol=rtol, atol=atol)
    return tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]
