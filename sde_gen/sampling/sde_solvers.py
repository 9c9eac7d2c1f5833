"""Reverse-time SDE solvers on an explicit time grid.

Refs: [Song21] Eq. (6), Appendix G (Euler-Maruyama predictor).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..parameterization import score_fn
from ..sde import SDE
from ..tensor_utils import append_dims
from .result import EpsModel

Callback = Callable[[int, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def sample_em(
    model: EpsModel,
    sde: SDE,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler-Maruyama on the reverse SDE from ``ts[0]`` down to ``ts[-1]``.

    ``x_{k+1} = x_k - [f - g^2 s](x_k, t_k) h_k + g(t_k) sqrt(h_k) z_k`` with ``h_k = t_k - t_{k+1}``.

    Returns:
        ``(x, x_mean)``: the final state and its noise-free mean at the last step.
    """
    rsde = sde.reverse(score_fn(model, sde))
    x = x_mean = x_T
    for k in range(len(ts) - 1):
        t = ts[k].expand(x.shape[0])
        h = ts[k] - ts[k + 1]
        drift, diffusion = rsde.sde(x, t)  # Eq. (6) [Song21]
        x_mean = x - drift * h
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x_mean + append_dims(diffusion, x.ndim) * torch.sqrt(h) * z
        if callback is not None:
            callback(k, x, x_mean)
    return x, x_mean
