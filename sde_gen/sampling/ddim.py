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

from typing import Callable

import torch

from ..sde import SDE
from .ancestral import posterior_coeffs
from .grids import grid_coeffs, snap_to_steps
from .result import EpsModel

Callback = Callable[[int, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def sample_ddim(
    model: EpsModel,
    sde: SDE,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    *,
    eta: float = 0.0,
    discrete: bool = False,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM from ``ts[0]`` to ``ts[-1]``, one model call per interval.

    Args:
        eta: stochasticity in ``[0, 1]``.
        discrete: use the discrete chain's ``abar_i`` at snapped step times (DDPM checkpoints,
            diffusers' DDIMScheduler); default the continuous ``marginal_coeffs``.

    Returns:
        ``(x, x_mean)`` at ``ts[-1]``.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if discrete:
        ts = snap_to_steps(sde, ts)
    alpha, sigma = grid_coeffs(sde, ts, discrete=discrete)
    _, _, var_tilde, _ = posterior_coeffs(alpha, sigma)
    c = eta * torch.sqrt(var_tilde)
    c_eps = torch.sqrt((sigma[1:] ** 2 - c**2).clamp(min=0))
    dt = x_T.dtype
    x = x_mean = x_T
    for k in range(len(ts) - 1):
        t = ts[k].to(dt).expand(x.shape[0])
        eps = model(x, t)
        x0 = (x - sigma[k].to(dt) * eps) / alpha[k].to(dt)
        x_mean = alpha[k + 1].to(dt) * x0 + c_eps[k].to(dt) * eps  # Eq. (12) [Song21ddim]
        if eta > 0:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=dt)
            x = x_mean + c[k].to(dt) * z
        else:
            x = x_mean
        if callback is not None:
            callback(k, x, x_mean)
    return x, x_mean
