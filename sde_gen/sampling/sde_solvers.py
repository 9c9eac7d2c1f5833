"""Reverse-time SDE solvers on an explicit grid: Euler-Maruyama and predictor-corrector.

Refs: [Song21] Eq. (6), Alg. 2-4 and Appendix G.
"""

from __future__ import annotations

import torch

from ..errors import UserInputError
from ..parameterization import EpsModel, eps_to_score, eps_to_x0, score_fn
from ..sde import SDE
from ..tensor_utils import append_dims
from .grids import grid_coeffs
from .result import Callback
from .torchsde_backend import sample_torchsde

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral", "none")
CORRECTORS = ("langevin", "none")


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


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

    ``x_{k+1} = x_k - [f - g^2 s](x_k, t_k) h_k + g(t_k) sqrt(h_k) z_k``, ``h_k = t_k - t_{k+1}``.

    Returns:
        ``(x, x_mean)``: the final state and its noise-free mean at the last step.
    """
    rsde = sde.reverse(score_fn(model, sde))
    h = (ts[:-1] - ts[1:]).to(x_T.dtype)
    sqrt_h = torch.sqrt(h)
    x = x_mean = x_T
    for k in range(len(ts) - 1):
        drift, diffusion = rsde.sde(x, ts[k].to(x.dtype).expand(x.shape[0]))  # Eq. (6) [Song21]
        x_mean = x - drift * h[k]
        x = x_mean + append_dims(diffusion, x.ndim) * sqrt_h[k] * _noise(x, generator)
        if callback is not None:
            callback(k, x, x_mean)
    return x, x_mean


def langevin_step_size(
    score: torch.Tensor, z: torch.Tensor, snr: float, alpha_ratio: torch.Tensor
) -> torch.Tensor:
    """Step ``2 alpha_i (snr ||z|| / ||score||)^2`` ([Song21] Alg. 4 and 5), a 0-d tensor.

    As in score_sde, the norms are per-example norms averaged over the batch: a per-example
    ratio explodes wherever the score nearly vanishes (between the modes of a mixture).
    """
    flat = lambda v: v.reshape(v.shape[0], -1).norm(dim=1).mean()  # noqa: E731
    return 2 * alpha_ratio * (snr * flat(z) / flat(score).clamp(min=1e-30)) ** 2


@torch.no_grad()
def sample_pc(
    model: EpsModel,
    sde: SDE,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    *,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_corrector: int = 1,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictor-corrector sampling ([Song21] Alg. 1-3).

    At each grid time the corrector runs ``n_corrector`` Langevin steps targeting ``q_t``, then the
    predictor moves to the next time. Predictors on an interval ``t -> s`` with ``a = alpha_t /
    alpha_s`` and ``v = sigma_t^2 - a^2 sigma_s^2`` (the forward step ``x_t = a x_s + sqrt(v) z``):

    - ``reverse_diffusion``: ``x_s = x_t - (a - 1) x_t + v s(x_t) + sqrt(v) z`` ([Song21] Eq. 46;
      on the N-step grid ``a = sqrt(1 - beta_i)``, ``v = beta_i``: score_sde's predictor);
    - ``euler_maruyama``: :func:`sample_em`'s step;
    - ``ancestral``: DDPM's step (:mod:`ancestral`, ``beta`` variance);
    - ``none``: corrector only (the predictor is the identity move of time).

    Langevin uses ``alpha_i = a^2`` of the N-step chain (``1 - beta_i`` for VP, 1 for VE).

    Returns:
        ``(x, x_mean)`` at ``ts[-1]``.
    """
    if predictor not in PREDICTORS:
        raise UserInputError(f"unknown predictor {predictor!r}; choose one of {', '.join(PREDICTORS)}")
    if corrector not in CORRECTORS:
        raise UserInputError(f"unknown corrector {corrector!r}; choose one of {', '.join(CORRECTORS)}")
    if snr <= 0 or n_corrector < 0:
        raise UserInputError(f"need snr > 0 and n_corrector >= 0, got {snr}, {n_corrector}")
    dtype = x_T.dtype
    coeffs = grid_coeffs(sde, ts)
    c_x, c_x0, _, v = (c.to(dtype) for c in coeffs.posterior())
    a = (coeffs.alpha[:-1] / coeffs.alpha[1:]).to(dtype)
    # Langevin's alpha_i: the one-step signal ratio of the N-step chain at each grid time.
    prev = grid_coeffs(sde, (ts - sde.T / sde.N).clamp(min=0))
    alpha_ratio = ((coeffs.alpha / prev.alpha) ** 2).to(dtype)
    alpha, sigma = coeffs.alpha.to(dtype), coeffs.sigma.to(dtype)
    h = (ts[:-1] - ts[1:]).to(dtype)
    rsde = sde.reverse(score_fn(model, sde))
    x = x_mean = x_T
    for k in range(len(ts) - 1):
        t = ts[k].to(dtype).expand(x.shape[0])
        for _ in range(n_corrector if corrector == "langevin" else 0):
            score = eps_to_score(model(x, t), sigma[k])
            z = _noise(x, generator)
            step = langevin_step_size(score, z, snr, alpha_ratio[k])
            x_mean = x + step * score  # Alg. 4 [Song21]
            x = x_mean + torch.sqrt(2 * step) * z
        if predictor == "euler_maruyama":
            drift, diffusion = rsde.sde(x, t)
            x_mean = x - drift * h[k]
            x = x_mean + append_dims(diffusion, x.ndim) * torch.sqrt(h[k]) * _noise(x, generator)
        elif predictor != "none":
            eps = model(x, t)
            if predictor == "reverse_diffusion":  # Eq. (46) [Song21] on the grid's interval
                x_mean = (2 - a[k]) * x + v[k] * eps_to_score(eps, sigma[k])
            else:
                x_mean = c_x[k] * x + c_x0[k] * eps_to_x0(x, eps, alpha[k], sigma[k])
            x = x_mean + torch.sqrt(v[k]) * _noise(x, generator)
        if callback is not None:  # predictor "none": the state after the corrector
            callback(k, x, x_mean)
    return x, x_mean


@torch.no_grad()
def sample_sde(
    model: EpsModel,
    sde: SDE,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    *,
    method: str | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reverse SDE on ``ts``: :func:`sample_em` (``method=None``, the device-side loop) or
    :func:`~sde_gen.sampling.torchsde_backend.sample_torchsde` with a torchsde ``method``.

    Returns:
        ``(x, x_mean)`` at ``ts[-1]`` (``x_mean = x`` for torchsde, which exposes no mean).
    """
    if method is None:
        return sample_em(model, sde, x_T, ts, generator=generator, callback=callback)
    return sample_torchsde(model, sde, x_T, ts, method=method, generator=generator,
                           callback=callback)
