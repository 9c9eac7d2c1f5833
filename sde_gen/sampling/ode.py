"""Probability-flow ODE solvers: torchdiffeq (adaptive or fixed-step) and EDM's Heun.

The probability-flow ODE ``dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t)`` ([Song21] Eq. 13) has the
same marginals as the SDE; integrating it from ``T`` to ``eps`` maps prior samples to data.

Refs: [Song21] Eq. (13); [Karras22] Alg. 1, Eq. (4); [Chen18].
"""

from __future__ import annotations

from typing import Callable

import torch
from torchdiffeq import odeint

from ..errors import UserInputError
from ..parameterization import EpsModel, score_fn
from ..sde import SDE
from .grids import grid_coeffs
from .result import Callback

ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams")


def probability_flow(model: EpsModel, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``func(t, x)`` for torchdiffeq: the probability-flow drift, ``t`` a 0-d tensor."""
    rsde = sde.reverse(score_fn(model, sde), probability_flow=True)

    def func(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return rsde.sde(x, t.to(x.dtype).expand(x.shape[0]))[0]

    return func


def odeint_path(func: Callable, state, ts: torch.Tensor, *, method: str, rtol: float, atol: float):
    """Integrate ``func`` along the times ``ts`` (monotone) and return the state at every one.

    Adaptive methods choose their own steps between ``ts[0]`` and ``ts[-1]`` and interpolate at
    the inner times (which do not change the steps). They are told to land on ``ts[-1]``
    (``step_t``) rather than step past it and interpolate back, and their first step is capped at
    1% of the span (torchdiffeq's initial-step probe otherwise can land beyond it, e.g. below
    t = 0 where VP is undefined), so the model is never evaluated outside the span. Fixed-step
    methods take one step per interval of ``ts``.

    Returns:
        ``(len(ts), *state.shape)``, or a tuple of those for a tuple state.
    """
    if method in ADAPTIVE:
        first = 0.01 * (ts[-1] - ts[0]).abs()
        return odeint(func, state, ts, method=method, rtol=rtol, atol=atol,
                      options={"step_t": ts[-1:], "first_step": first})
    if method not in FIXED:
        raise UserInputError(f"unknown ODE method {method!r}; choose one of {', '.join(ADAPTIVE + FIXED)}")
    return odeint(func, state, ts, method=method)


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


@torch.no_grad()
def sample_ode(
    model: EpsModel,
    sde: SDE,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probability-flow ODE from ``ts[0]`` to ``ts[-1]`` with ``torchdiffeq.odeint``.

    Adaptive methods step on their own between the end points of ``ts`` (the tolerances set the
    NFE); with a ``callback`` they also report the state at every inner time of ``ts``,
    interpolated, without changing the steps. Fixed-step methods take one step per interval.

    Returns:
        ``(x, x)`` at ``ts[-1]``.
    """
    t = ts.to(x_T.dtype)
    path = t if callback is not None or method in FIXED else torch.stack([t[0], t[-1]])
    xs = odeint_path(probability_flow(model, sde), x_T, path, method=method, rtol=rtol, atol=atol)
    if callback is not None:
        for k in range(len(t) - 1):
            callback(k, xs[k + 1], xs[k + 1])
    return xs[-1], xs[-1]


@torch.no_grad()
def sample_heun(
    model: EpsModel,
    sde: SDE,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heun's 2nd-order method on the probability-flow ODE, two model calls per interval.

    EDM's Alg. 1 with scale ``s(t) = alpha_t`` and noise level ``sigma~(t) = sigma_t / alpha_t``
    ([Karras22] Eq. 4): in ``y = x / alpha_t`` the ODE is ``dy/dsigma~ = eps(x, t)``, and Heun
    steps it in ``sigma~``. For VE this is exactly EDM's sampler; for VP/sub-VP it is EDM's
    treatment of VP. The step to ``ts[-1] > 0`` always gets its correction.

    Returns:
        ``(x, x)`` at ``ts[-1]``.
    """
    dtype = x_T.dtype
    coeffs = grid_coeffs(sde, ts)
    rho, alpha, tt = coeffs.rho.to(dtype), coeffs.alpha.to(dtype), ts.to(dtype)
    y = x_T / alpha[0]
    for k in range(len(ts) - 1):
        n = y.shape[0]
        d1 = model(alpha[k] * y, tt[k].expand(n))  # dy/drho = eps
        h = rho[k + 1] - rho[k]
        y_euler = y + h * d1
        d2 = model(alpha[k + 1] * y_euler, tt[k + 1].expand(n))
        y = y + h * 0.5 * (d1 + d2)  # Alg. 1 lines 7-8 [Karras22]
        if callback is not None:
            x = alpha[k + 1] * y
            callback(k, x, x)
    x = alpha[-1] * y
    return x, x
