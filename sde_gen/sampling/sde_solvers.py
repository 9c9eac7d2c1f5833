"""Reverse-time SDE solvers on an explicit grid: Euler-Maruyama and predictor-corrector.

Refs: [Song21] Eq. (6), Alg. 2-4 and Appendix G.
"""

from __future__ import annotations

import torch

from ..chain import grid_coeffs
from ..noise import Generator, randn
from ..parameterization import EpsModel, eps_to_score, eps_to_x0, score_fn
from ..sde import SDE
from ..tensor_utils import append_dims
from .pure_start import continue_after_first, posterior_first_step, starts_pure
from .result import Callback
from .spec import Option, SolverSpec
from .torchsde_backend import METHODS as TORCHSDE_METHODS
from .torchsde_backend import sample_torchsde

__all__ = ["CORRECTORS", "PC_SPEC", "PREDICTORS", "SDE_SPEC", "langevin_step_size", "sample_em",
           "sample_pc", "sample_sde"]

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral", "none")
CORRECTORS = ("langevin", "none")


def _noise(x: torch.Tensor, generator: Generator) -> torch.Tensor:
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


@torch.no_grad()
def sample_em(
    model: EpsModel,
    sde: SDE,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    *,
    generator: Generator = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler-Maruyama on the reverse SDE from ``ts[0]`` down to ``ts[-1]``.

    ``x_{k+1} = x_k - [f - g^2 s](x_k, t_k) h_k + g(t_k) sqrt(h_k) z_k``, ``h_k = t_k - t_{k+1}``.

    Returns:
        ``(x, x_mean)``: the final state and its noise-free mean at the last step.
    """
    if starts_pure(sde, ts):  # alpha = 0 at ts[0]: f and g diverge; DDPM's posterior step
        x, x_mean = posterior_first_step(model, sde, x_T, ts, generator)
        return continue_after_first(x, x_mean, ts, callback, lambda x, ts, cb: sample_em(
            model, sde, x, ts, generator=generator, callback=cb))
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
    generator: Generator = None,
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
    if starts_pure(sde, ts):  # alpha = 0 at ts[0]: f and g diverge; DDPM's posterior step
        x, x_mean = posterior_first_step(model, sde, x_T, ts, generator)
        return continue_after_first(x, x_mean, ts, callback, lambda x, ts, cb: sample_pc(
            model, sde, x, ts, predictor=predictor, corrector=corrector,
            snr=snr, n_corrector=n_corrector, generator=generator, callback=cb))
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
    generator: Generator = None,
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


#: Model calls per step of the ``sde`` methods (None: the loop; not listed: the method decides).
_SDE_CALLS = {None: 1, "euler": 1, "milstein": 1, "euler_heun": 1, "midpoint": 2, "heun": 2}

SDE_SPEC = SolverSpec(
    sample_sde, "reverse SDE: Euler–Maruyama device loop, or any torchsde method",
    options=(
        Option("method", str, None, "a torchsde method instead of the built-in "
               "Euler-Maruyama loop", choices=TORCHSDE_METHODS, noun="torchsde method"),
    ),
    steps=None, stochastic=True, pure_start_calls=1,
    calls_per_step=lambda o: _SDE_CALLS.get(o["method"]),
)

PC_SPEC = SolverSpec(
    sample_pc, "predictor–corrector, Song et al. Alg. 2/3",
    options=(
        Option("predictor", str, "reverse_diffusion", "the predictor step",
               choices=PREDICTORS),
        Option("corrector", str, "langevin", "the corrector step", choices=CORRECTORS),
        Option("snr", float, 0.16, "Langevin signal-to-noise ratio", min=0.0,
               min_open=True),
        Option("n_corrector", int, 1, "corrector steps per grid time", min=0),
    ),
    steps=None, stochastic=True, pure_start_calls=1,
    calls_per_step=lambda o: (int(o["predictor"] != "none")
                              + (o["n_corrector"] if o["corrector"] == "langevin" else 0)),
)
