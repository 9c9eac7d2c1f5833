"""DDIM ([Song21ddim] Eq. 12) on any grid, for every SDE; its sigma-space form for VE.

With ``x0_hat = (x_t - sigma_t eps)/alpha_t`` and ``c = eta sqrt(var~)`` (the posterior std of
:mod:`ancestral`, i.e. [Song21ddim] Eq. (16)'s ``sigma_tau(eta)``):

    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps + c z.

``eta = 0`` is deterministic: Euler's method on the probability-flow ODE written in
``(x/alpha, sigma/alpha)`` ([Song21ddim] Eq. (14)); for VE that is ``x_s = x_t + (sigma_s -
sigma_t) eps``. ``eta = 1`` is ancestral sampling with ``beta~``.

Refs: [Song21ddim] Eq. (12), (14), (16).
"""

from __future__ import annotations

import torch

from ..chain import grid_coeffs
from ..noise import Generator, randn
from ..parameterization import EpsModel, eps_to_x0, model_prediction
from ..sde import SDE
from .pure_start import starts_pure
from .result import Callback
from .spec import Option, SolverSpec, discrete_option, x0_options
from .thresholding import process_x0

__all__ = ["SPEC", "sample_ddim"]


@torch.no_grad()
def sample_ddim(
    model: EpsModel,
    sde: SDE,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    *,
    eta: float = 0.0,
    discrete: bool = False,
    clip_sample: float | None = None,
    threshold: float | None = None,
    generator: Generator = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM from ``ts[0]`` to ``ts[-1]``, one model call per interval.

    Args:
        eta: stochasticity in ``[0, 1]``.
        discrete: use the discrete chain's ``abar_i`` (``ts`` on its step times, as ``sample()``
            snaps them: DDPM checkpoints, diffusers' DDIMScheduler); default the continuous
            ``marginal_coeffs``.
        clip_sample, threshold: clip or dynamically threshold ``x0_hat`` before the step
            (:func:`~.thresholding.process_x0`); the eps direction stays the model's, as in
            diffusers' DDIMScheduler (``use_clipped_model_output=False``).

    Returns:
        ``(x, x_mean)`` at ``ts[-1]``.
    """
    alpha, sigma = coeffs = grid_coeffs(sde, ts, discrete=discrete)
    c = eta * torch.sqrt(coeffs.posterior().var_tilde)
    c_eps = torch.sqrt((sigma[1:] ** 2 - c**2).clamp(min=0))
    dtype = x_T.dtype
    pure = not discrete and starts_pure(sde, ts)  # alpha = 0 at ts[0]: x0 from the model
    x = x_mean = x_T
    for k in range(len(ts) - 1):
        t = ts[k].to(dtype).expand(x.shape[0])
        if k == 0 and pure:
            eps, x0 = model_prediction(model, x, t)
        else:
            eps = model(x, t)
            x0 = eps_to_x0(x, eps, alpha[k].to(dtype), sigma[k].to(dtype))
        x0 = process_x0(x0, clip_sample=clip_sample, threshold=threshold)
        x_mean = alpha[k + 1].to(dtype) * x0 + c_eps[k].to(dtype) * eps  # Eq. (12) [Song21ddim]
        if eta > 0:
            z = randn(x.shape, generator, device=x.device, dtype=dtype)
            x = x_mean + c[k].to(dtype) * z
        else:
            x = x_mean
        if callback is not None:
            callback(k, x, x_mean)
    return x, x_mean


SPEC = SolverSpec(
    sample_ddim, "DDIM Eq. 12 on any grid; σ-space form for VE",
    options=(
        Option("eta", float, 0.0, "stochasticity: 0 is deterministic, 1 is ancestral with "
               "beta~", min=0.0, max=1.0),
        discrete_option(False),
        *x0_options(),
    ),
    steps=49, stochastic="eta", order=1,
)
