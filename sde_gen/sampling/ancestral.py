"""Ancestral sampling: DDPM's Algorithm 2 on any grid, and SMLD's ancestral sampler for VE.

Each step draws from the Gaussian posterior ``q(x_s | x_t, x0 = x0_hat)`` of the forward
kernel, for ``s < t`` on the grid. With ``a = alpha_t / alpha_s`` and the forward transition
variance ``v = sigma_t^2 - a^2 sigma_s^2`` (DDPM's ``beta_t`` on the N-step grid):

| symbol here | [Ho20]                      | meaning                                  |
| ----------- | --------------------------- | ---------------------------------------- |
| alpha_t^2   | abar_t                      | signal power of ``x_t``                  |
| v           | beta_t = 1 - abar_t/abar_s  | variance of ``q(x_t | x_s)``             |
| mean        | mu~_t(x_t, x0), Eq. (7)     | ``a sigma_s^2/sigma_t^2 x_t``            |
|             |                             | ``+ alpha_s v/sigma_t^2 x0``             |
| var         | beta~_t or beta_t (Sec. 3.2)| ``v sigma_s^2 / sigma_t^2`` or ``v``     |
| var learned | Sigma_theta, [Nichol21] (15)| ``exp(v_th log v + (1 - v_th) log var~)`` per dim |

With ``x0_hat = (x_t - sigma_t eps)/alpha_t`` the mean equals Alg. 2's
``(x_t - beta_t/sqrt(1 - abar_t) eps) / sqrt(alpha_t)``. For VE (``alpha = 1``) it is SMLD's
ancestral step ([Song21] Eq. (47)). Step indices appear only through :func:`grid_coeffs`
(``sde.time_to_index``) when ``discrete=True``. On a strided grid (K < N steps) ``v`` and ``var~``
are those of the respaced chain, ``1 - abar_t/abar_s`` and its posterior ([Nichol21] Sec. 4), which
is also what a learned variance interpolates between.

Refs: [Ho20] Alg. 2, Eq. (6)-(7); [Song21] Appendix F; [Nichol21] Eq. (15), Sec. 4.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..chain import grid_coeffs
from ..errors import UserInputError
from ..noise import Generator, randn
from ..parameterization import (
    EpsModel,
    eps_to_x0,
    learned_variance_fn,
    log_variance_from_v,
    model_prediction,
)
from ..sde import SDE
from .pure_start import starts_pure
from .result import Callback
from .spec import Option, SolverSpec, discrete_option, x0_options
from .thresholding import process_x0

__all__ = ["SPEC", "VARIANCES", "sample_ancestral"]

VARIANCES = ("beta", "beta_tilde", "learned")


@torch.no_grad()
def sample_ancestral(
    model: EpsModel,
    sde: SDE,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    *,
    variance: str = "beta",
    discrete: bool = True,
    clip_sample: float | None = None,
    threshold: float | None = None,
    generator: Generator = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPM ancestral sampling from ``ts[0]`` to ``ts[-1]`` (one model call per interval).

    Args:
        variance: reverse variance ``"beta"`` (``sigma_t^2 = beta_t``), ``"beta_tilde"``, or
            ``"learned"``: the model's ``Sigma_theta`` ([Nichol21] Eq. 15) between the grid
            interval's ``beta`` and ``beta~``; needs a model with ``eps_and_variance``
            (``learn_variance=True``).
        discrete: use the discrete chain's coefficients (DDPM's ``abar_i``; ``ts`` on the chain's
            step times, as ``sample()`` snaps them); otherwise the continuous ``marginal_coeffs``.
        clip_sample, threshold: clip or dynamically threshold ``x0_hat`` before forming the
            posterior mean (:func:`~.thresholding.process_x0`), as diffusers' DDPMScheduler.

    Returns:
        ``(x, x_mean)`` at ``ts[-1]``.
    """
    eps_and_v = learned_variance_fn(model) if variance == "learned" else None
    alpha, sigma = coeffs = grid_coeffs(sde, ts, discrete=discrete)
    c_x, c_x0, var_tilde, v = coeffs.posterior()
    std = torch.sqrt(var_tilde if variance == "beta_tilde" else v)
    dtype = x_T.dtype
    pure = not discrete and starts_pure(sde, ts)  # alpha = 0 at ts[0]: x0 from the model
    x = x_mean = x_T
    for k in range(len(ts) - 1):
        t = ts[k].to(dtype).expand(x.shape[0])
        if k == 0 and pure:
            (eps, x0), scale = model_prediction(model, x, t), std[k].to(dtype)
        elif eps_and_v is None:
            eps, scale = model(x, t), std[k].to(dtype)
        else:
            eps, v_out = eps_and_v(x, t)
            scale = torch.exp(0.5 * log_variance_from_v(v_out, v[k], var_tilde[k]))
        if not (k == 0 and pure):
            x0 = eps_to_x0(x, eps, alpha[k].to(dtype), sigma[k].to(dtype))
        x0 = process_x0(x0, clip_sample=clip_sample, threshold=threshold)
        x_mean = c_x[k].to(dtype) * x + c_x0[k].to(dtype) * x0  # Eq. (7) [Ho20]
        z = randn(x.shape, generator, device=x.device, dtype=dtype)
        x = x_mean + scale * z
        if callback is not None:
            callback(k, x, x_mean)
    return x, x_mean


def _check(model: Any, sde: SDE, ts: torch.Tensor, options: Mapping[str, Any]) -> None:
    """A learned variance needs a model that learns it and ``beta~ > 0`` on every interval."""
    if options["variance"] != "learned":
        return
    learned_variance_fn(model)
    if (grid_coeffs(sde, ts, discrete=options["discrete"]).posterior().var_tilde <= 0).any():
        raise UserInputError("variance='learned' needs beta~ > 0 on every interval; the grid "
                             "must end at a positive time")


SPEC = SolverSpec(
    sample_ancestral,
    "DDPM Alg. 2 (posterior of the forward kernel; SMLD ancestral for VE)",
    options=(
        Option("variance", str, "beta", "reverse variance: beta (sigma_t^2 = beta_t), "
               "beta_tilde, or learned (a model trained with model.learn_variance=true)",
               choices=VARIANCES),
        discrete_option(True),
        *x0_options(),
    ),
    steps=None, stochastic=True, check=_check,
)
