"""The first step from a pure-noise ``T`` (``alpha_T = 0``, the flow paths), for every solver.

At such a ``T`` the state is pure noise, ``x_T = eps``, and x0 cannot be read from eps: the
solvers take ``(eps, x0)`` from the model itself
(:func:`~sde_gen.parameterization.model_prediction`). What else diverges there depends on the
solver's variables:

- ``ancestral``, ``ddim``, SMC: the Gaussian posterior ``q(x_s | x_T, x0)`` is finite
  (``alpha_T / alpha_s = 0``): mean ``alpha_s x0``, variance ``sigma_s^2``. They need only x0.
- ``dpm``, ``unipc`` (log-SNR ``-inf``), ``heun``, ``ipndm``, ``deis`` (``sigma / alpha = inf``):
  the first step of each is taken in its finite limit, DDIM's ``x_s = alpha_s x0 + sigma_s eps``
  (the limit of every first-order exponential-integrator step; Heun: its trapezoidal step in
  ``t`` on the drift ``alpha' x0 + sigma' eps``), and the multistep history starts after it (a
  polynomial in log-SNR or ``sigma / alpha`` through a point at infinity has no limit but the
  one that drops it).
- ``sde``, ``pc`` and torchsde (the reverse SDE's ``f`` and ``g^2`` diverge at ``T``): the first
  step is the posterior step above (DDPM's), then their own.

Nowhere is ``T`` moved to ``T - delta``: the model is evaluated at ``T`` itself.

Refs: [Song21ddim] Eq. (12); [Ho20] Eq. (7); [Lu22pp] Eq. 8 (its ``h -> inf`` limit).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..chain import grid_coeffs
from ..noise import Generator, randn
from ..parameterization import EpsModel, model_prediction
from ..sde import SDE
from ..tensor_utils import append_dims
from .result import Callback

__all__ = ["after_first", "continue_after_first", "ddim_first_step", "heun_first_step",
           "posterior_first_step", "starts_pure"]


def starts_pure(sde: SDE, ts: torch.Tensor) -> bool:
    """Whether the grid starts at a time where ``alpha = 0`` (one host read, before any loop)."""
    return bool(grid_coeffs(sde, ts[:1]).alpha[0] == 0)


def _at(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return t.to(x.dtype).expand(x.shape[0])


def ddim_first_step(model: EpsModel, sde: SDE, x: torch.Tensor,
                    ts: torch.Tensor) -> torch.Tensor:
    """``x_s = alpha_s x0 + sigma_s eps`` from ``ts[0]`` to ``ts[1]`` ([Song21ddim] Eq. 12,
    ``eta = 0``), with the model's own ``(eps, x0)``: one model call."""
    eps, x0 = model_prediction(model, x, _at(x, ts[0]))
    alpha, sigma = (c[1].to(x.dtype) for c in grid_coeffs(sde, ts[:2]))
    return alpha * x0 + sigma * eps


def posterior_first_step(model: EpsModel, sde: SDE, x: torch.Tensor, ts: torch.Tensor,
                         generator: Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_s, mean)`` with ``x_s ~ q(x_s | x_T, x0_hat) = N(alpha_s x0_hat, sigma_s^2 I)``: the
    posterior of the forward kernel from a pure-noise ``T`` ([Ho20] Eq. 7 with ``alpha_T = 0``),
    one model call."""
    _, x0 = model_prediction(model, x, _at(x, ts[0]))
    alpha, sigma = (c[1].to(x.dtype) for c in grid_coeffs(sde, ts[:2]))
    mean = alpha * x0
    return mean + sigma * randn(x.shape, generator, device=x.device, dtype=x.dtype), mean


def heun_first_step(model: EpsModel, sde: SDE, x: torch.Tensor,
                    ts: torch.Tensor) -> torch.Tensor:
    """Heun's trapezoidal step in ``t`` on the probability-flow drift ``v = alpha' x0 +
    sigma' eps`` from ``ts[0]`` to ``ts[1]``, two model calls (its Euler predictor is DDIM's step
    for the linear path)."""

    def drift(x_k: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps, x0 = model_prediction(model, x_k, _at(x_k, t))
        d_alpha, d_sigma = (append_dims(c.to(x_k.dtype), x_k.ndim)
                            for c in sde.marginal_coeffs_derivative(_at(x_k, t)))
        return d_alpha * x0 + d_sigma * eps

    h = (ts[1] - ts[0]).to(x.dtype)
    d1 = drift(x, ts[0])
    d2 = drift(x + h * d1, ts[1])
    return x + 0.5 * h * (d1 + d2)


def continue_after_first(x: torch.Tensor, x_mean: torch.Tensor, ts: torch.Tensor,
                         callback: Callback | None, rest: Callable[..., tuple[torch.Tensor,
                                                                              torch.Tensor]]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """After the first step from a pure-noise ``ts[0]`` (state ``x``, mean ``x_mean`` at
    ``ts[1]``): report it as interval 0, then ``rest(x, ts[1:], callback)`` on the remaining
    intervals with the callback's indices shifted (``(x, x_mean)`` when there are none)."""
    if callback is not None:
        callback(0, x, x_mean)
    if len(ts) == 2:
        return x, x_mean
    return rest(x, ts[1:], after_first(callback))


def after_first(callback: Callback | None) -> Callback | None:
    """``callback`` for a solve of ``ts[1:]`` that continues after the first step: its interval
    ``k`` is the whole grid's ``k + 1``."""
    if callback is None:
        return None
    return lambda k, x, x_mean: callback(k + 1, x, x_mean)
