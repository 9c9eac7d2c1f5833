"""Denoising score matching ([Song21] Eq. 7) written on the eps-model.

With ``x_t = alpha_t x0 + sigma_t z`` the score target is ``-z / sigma_t``, so

    lambda(t) || s_theta(x_t, t) + z / sigma_t ||^2 = lambda(t) / sigma_t^2 || eps_theta(x_t, t) - z ||^2.

A weighting is a function ``w(sde, t) -> (B,)`` returning ``lambda(t) / sigma_t^2``, the factor on
the eps-MSE: ``simple`` (``lambda = sigma^2``, DDPM's L_simple, [Ho20] Eq. 14) gives 1 and
``likelihood`` (``lambda = g^2``, [Song21mle] Thm. 1) gives ``g(t)^2 / sigma_t^2``.
"""

from __future__ import annotations

from typing import Callable

import torch

from .parameterization import EpsModel
from .sde import SDE
from .tensor_utils import append_dims, mean_flat, sum_flat

Weighting = Callable[[SDE, torch.Tensor], torch.Tensor]


def weight_simple(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """``lambda(t) = sigma_t^2``: unit weight on the eps-MSE. [Ho20] Eq. (14)."""
    return torch.ones_like(t)


def weight_likelihood(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """``lambda(t) = g(t)^2``: the bound on the KL / NLL. [Song21mle] Eq. (8)-(9)."""
    _, g = sde.sde(t.reshape(-1, 1), t)
    sigma_t = sde.marginal_coeffs(t)[1]
    return (g / sigma_t) ** 2


WEIGHTINGS: dict[str, Weighting] = {"simple": weight_simple, "likelihood": weight_likelihood}
REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"mean": mean_flat, "sum": sum_flat}


def sample_time(
    sde: SDE,
    batch: int,
    *,
    t_eps: float = 1e-5,
    discrete: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw training times and their kernel coefficients.

    Continuous: ``t ~ U(t_eps, T)`` and ``(alpha_t, sigma_t) = sde.marginal_coeffs(t)``. Discrete
    (DDPM's training, [Ho20] Alg. 1): ``i ~ U{0..N-1}``, ``t = sde.index_to_time(i)`` and the
    discrete chain's own coefficients (``sqrt(abar_i)``, ``sqrt(1 - abar_i)`` for VP).

    Returns:
        ``(t, alpha_t, sigma_t)``, each ``(B,)``.
    """
    if discrete:
        i = torch.randint(0, sde.N, (batch,), generator=generator, device=device)
        alpha_t, sigma_t = sde.discrete_coeffs(i)
        t = sde.index_to_time(i)
        return t.to(dtype), alpha_t.to(dtype), sigma_t.to(dtype)
    u = torch.rand(batch, generator=generator, device=device, dtype=dtype)
    t = t_eps + (sde.T - t_eps) * u
    alpha_t, sigma_t = sde.marginal_coeffs(t)
    return t, alpha_t, sigma_t


def dsm_loss(
    model: EpsModel,
    sde: SDE,
    x0: torch.Tensor,
    *,
    weighting: str | Weighting = "simple",
    t_eps: float = 1e-5,
    reduce: str = "mean",
    discrete: bool = False,
    generator: torch.Generator | None = None,
    shard: slice | None = None,
) -> torch.Tensor:
    """Denoising score-matching loss per example, unreduced over the batch.

    Args:
        model: eps-model ``model(x_t, t)``.
        sde: forward SDE.
        x0: clean data. Shapes: ``(B, *D)``.
        weighting: ``"simple"``, ``"likelihood"`` or a function ``w(sde, t) -> (B,)``.
        t_eps: smallest training time (continuous variant).
        reduce: ``"mean"`` or ``"sum"`` of the squared error over data dimensions.
        discrete: train on DDPM's N discrete steps instead of ``t ~ U(t_eps, T)``.
        generator: source of the times and noise.
        shard: evaluate only these rows. Times and noise are drawn for the whole batch first, so
            a global batch split over data-parallel ranks gives exactly the single-process draws.

    Returns:
        ``(B,)`` loss (``(len(shard),)`` with ``shard``). Refs: [Song21] Eq. (7); [Ho20] Alg. 1.
    """
    w = WEIGHTINGS.get(weighting) if isinstance(weighting, str) else weighting
    if w is None:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {sorted(WEIGHTINGS)}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; choose one of {sorted(REDUCTIONS)}")
    t, alpha_t, sigma_t = sample_time(
        sde, x0.shape[0], t_eps=t_eps, discrete=discrete, generator=generator,
        device=x0.device, dtype=x0.dtype,
    )
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if shard is not None:
        x0, z, t, alpha_t, sigma_t = x0[shard], z[shard], t[shard], alpha_t[shard], sigma_t[shard]
    x_t = append_dims(alpha_t, x0.ndim) * x0 + append_dims(sigma_t, x0.ndim) * z
    err = REDUCTIONS[reduce]((model(x_t, t) - z) ** 2)
    return w(sde, t) * err
