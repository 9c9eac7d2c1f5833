"""Probability-flow ODE solvers: torchdiffeq (adaptive or fixed-step) and EDM's Heun.

The probability-flow ODE ``dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t)`` ([Song21] Eq. 13) has the
same marginals as the SDE; integrating it from ``T`` to ``eps`` maps prior samples to data.

Refs: [Song21] Eq. (13); [Karras22] Alg. 1, Eq. (4); [Chen18].
"""

from __future__ import annotations

import torch

from ..chain import grid_coeffs
from ..noise import Generator
from ..parameterization import EpsModel
from ..pf_ode import ADAPTIVE, FIXED, ODEDivergedError, odeint_path, probability_flow
from ..sde import SDE
from .pure_start import continue_after_first, heun_first_step, starts_pure
from .result import Callback
from .spec import Option, SolverSpec, x0_options

__all__ = ["HEUN_SPEC", "ODE_SPEC", "sample_heun", "sample_ode"]


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
    generator: Generator = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probability-flow ODE from ``ts[0]`` to ``ts[-1]`` with ``torchdiffeq.odeint``.

    Adaptive methods step on their own between the end points of ``ts`` (the tolerances set the
    NFE); with a ``callback`` they also report the state at every inner time of ``ts``,
    interpolated, without changing the steps. Fixed-step methods take one step per interval.

    Returns:
        ``(x, x)`` at ``ts[-1]``. An adaptive solve that cannot go on (a NaN or infinite model
        output shrinks its step to zero) returns NaN for every example, as a diverged
        fixed-step solve does (:attr:`~.result.SampleResult.n_nonfinite`).
    """
    t = ts.to(x_T.dtype)
    path = t if callback is not None or method in FIXED else torch.stack([t[0], t[-1]])
    try:
        xs = odeint_path(probability_flow(model, sde), x_T, path, method=method, rtol=rtol,
                         atol=atol)
    except ODEDivergedError:
        xs = torch.full((len(path), *x_T.shape), float("nan"), dtype=x_T.dtype,
                        device=x_T.device)
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
    generator: Generator = None,
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
    if starts_pure(sde, ts):  # alpha = 0 at ts[0]: the first step's finite limit
        x = heun_first_step(model, sde, x_T, ts)
        return continue_after_first(x, x, ts, callback, lambda x, ts, cb: sample_heun(
            model, sde, x, ts, callback=cb))
    dtype = x_T.dtype
    coeffs = grid_coeffs(sde, ts)
    sig, alpha, tt = coeffs.sigma_tilde.to(dtype), coeffs.alpha.to(dtype), ts.to(dtype)
    y = x_T / alpha[0]
    for k in range(len(ts) - 1):
        n = y.shape[0]
        d1 = model(alpha[k] * y, tt[k].expand(n))  # dy/dsigma~ = eps
        h = sig[k + 1] - sig[k]
        y_euler = y + h * d1
        d2 = model(alpha[k + 1] * y_euler, tt[k + 1].expand(n))
        y = y + h * 0.5 * (d1 + d2)  # Alg. 1 lines 7-8 [Karras22]
        if callback is not None:
            x = alpha[k + 1] * y
            callback(k, x, x)
    x = alpha[-1] * y
    return x, x


#: Model calls per step of the fixed-step torchdiffeq methods (the rest: the method decides).
_ODE_STAGES = {"euler": 1, "midpoint": 2, "rk4": 4}
#: Global order of the fixed-step methods with one-step starts (Adams: not fixed).
_ODE_ORDERS = {"euler": 1, "midpoint": 2, "rk4": 4}

ODE_SPEC = SolverSpec(
    sample_ode, "probability-flow ODE via torchdiffeq",
    options=(
        Option("method", str, "dopri5", "a torchdiffeq method; adaptive ones step on their "
               "own between the grid's end points, fixed-step ones walk the grid",
               choices=ADAPTIVE + FIXED, noun="ODE method"),
        Option("rtol", float, 1e-5, "relative tolerance of adaptive methods", min=0.0,
               min_open=True),
        Option("atol", float, 1e-5, "absolute tolerance of adaptive methods", min=0.0,
               min_open=True),
    ),
    steps=100,
    calls_per_step=lambda o: _ODE_STAGES.get(o["method"]),
    order=lambda o: _ODE_ORDERS.get(o["method"]),
)

HEUN_SPEC = SolverSpec(
    sample_heun, "Heun on the PF-ODE in (x/α, σ/α) = EDM Alg. 1",
    options=x0_options(),
    steps=19, spacing="karras", calls_per_step=lambda o: 2, order=2, x0_by_model=True,
)
