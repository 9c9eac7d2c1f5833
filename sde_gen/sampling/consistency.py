"""Multistep consistency sampling ([Song23cm] Alg. 1) of a distilled consistency model.

With ``f`` the model's consistency function (:mod:`sde_gen.consistency`) and the grid
``T = tau_0 > tau_1 > ... > tau_{K-1} > tau_K = t_min`` (``K`` model calls):

    x = f(x_T, T);  for k = 1 .. K-1:  x_tau = (alpha_tau / alpha_min) x + c_k z,
                                       x = f(x_tau, tau_k)

with ``c_k^2 = sigma_tau^2 - (alpha_tau / alpha_min)^2 sigma_min^2``: the exact forward kernel
from ``t_min`` to ``tau_k`` on any path ([Song23cm] Alg. 1 line 5 is its VE form,
``x + sqrt(tau^2 - eps^2) z``). ``x`` is the sample at ``t_min``; there is no final denoise.

Refs: [Song23cm] Alg. 1.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from ..chain import grid_coeffs
from ..errors import UserInputError
from ..noise import Generator, randn
from ..parameterization import model_name
from ..sde import SDE
from .result import Callback
from .spec import SolverSpec

__all__ = ["SPEC", "sample_consistency"]


@torch.no_grad()
def sample_consistency(
    model: Any,
    sde: SDE,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    *,
    generator: Generator = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multistep consistency sampling from ``ts[0]`` (= ``T``) to ``ts[-1]`` (= the model's
    ``t_min``), one call of ``model.consistency`` per interval.

    Returns:
        ``(x, x_mean)`` at ``ts[-1]`` (equal: the last step adds no noise).
    """
    alpha, sigma = grid_coeffs(sde, ts)
    dtype, b = x_T.dtype, x_T.shape[0]
    scale = alpha / alpha[-1]  # the forward kernel t_min -> tau: mean factor
    noise = torch.sqrt((sigma**2 - (scale * sigma[-1]) ** 2).clamp(min=0))
    x = x_T
    for k in range(len(ts) - 1):
        x0 = model.consistency(x, ts[k].to(dtype).expand(b))
        if k == len(ts) - 2:
            x = x_mean = x0
        else:  # re-noise to ts[k + 1], [Song23cm] Alg. 1 line 5
            x_mean = scale[k + 1].to(dtype) * x0
            x = x_mean + noise[k + 1].to(dtype) * randn(x.shape, generator, device=x.device,
                                                         dtype=dtype)
        if callback is not None:
            callback(k, x, x_mean)
    return x, x_mean


def check_consistency(model: Any, sde: SDE, ts: torch.Tensor, options: Mapping[str, Any]) -> None:
    """A distilled consistency model, a grid from ``T`` and ending at the model's ``t_min``.

    Raises:
        UserInputError: any of the three is not so.
    """
    if not getattr(model, "is_consistency_model", False):
        raise UserInputError(f"solver 'consistency' samples a distilled consistency model (sde-gen "
                             f"distill --method consistency); model {model_name(model)} is not "
                             f"one: use another solver")
    if float(ts[0]) != sde.T:
        raise UserInputError(f"solver 'consistency' starts from the prior at T={sde.T:g}; the "
                             f"grid starts at {float(ts[0]):g}")
    t_min = float(model.t_min)
    if not math.isclose(float(ts[-1]), t_min, rel_tol=1e-9):
        raise UserInputError(f"this consistency model was distilled to t_min={t_min:g} "
                             f"(f(x, t_min) = x); the grid ends at {float(ts[-1]):g}: leave "
                             f"t_min unset or pass {t_min:g}")


SPEC = SolverSpec(
    sample_consistency, "multistep consistency sampling, Song et al. 2023 Alg. 1 (a run "
    "distilled by `sde-gen distill`; no final denoise)",
    steps=1, spacing="karras", stochastic=True, check=check_consistency, model="consistency",
)
