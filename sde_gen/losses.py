"""Denoising score matching ([Song21] Eq. 7) written on the eps-model.

With ``x_t = alpha_t x0 + sigma_t z`` the score target is ``-z / sigma_t``, so

    lambda(t) || s_theta(x_t, t) + z / sigma_t ||^2
        = lambda(t) / sigma_t^2 || eps_theta(x_t, t) - z ||^2.

A weighting is a function ``w(sde, t) -> (B,)`` returning ``lambda(t) / sigma_t^2``, the factor on
the eps-MSE, whatever the network predicts (the prediction target is a parameterization,
:class:`~sde_gen.parameterization.ScoreModel`; the weighting alone sets the objective). With
``SNR = alpha_t^2 / sigma_t^2`` and ``sigma = sigma_t / alpha_t``:

| name           | factor on the eps-MSE                       | source                           |
| -------------- | ------------------------------------------- | -------------------------------- |
| ``simple``     | 1                                           | DDPM's L_simple, [Ho20] Eq. (14) |
| ``likelihood`` | ``g(t)^2 / sigma_t^2``                      | [Song21mle] Thm. 1 (KL bound)    |
| ``min_snr``    | ``min(SNR, gamma) / SNR``                   | [Hang23] Eq. (9), eps-prediction |
| ``edm``        | ``(sigma^2 + s_d^2) / s_d^2``               | [Karras22] Eq. (8), Table 1      |
| ``velocity``   | ``((alpha sigma' - alpha' sigma)/alpha)^2`` | flow matching, [Lipman23] (23)   |

EDM's ``lambda(sigma) ||D - x0||^2`` is the eps-MSE times ``lambda sigma^2``, which is the row
above; it puts unit weight on the MSE of the preconditioned network output ``F``.

**The flow-matching objective** (``velocity``) is ``||v_theta - v||^2`` with the velocity of the
path ``v = alpha_t' x0 + sigma_t' eps`` (``= eps - x0`` on the flow path; [Lipman23] Eq. (23),
[Liu23] Eq. (1)). Both ``x_t = alpha x0 + sigma eps`` and ``x_t = alpha x0_theta + sigma
eps_theta`` hold, so ``x0_theta - x0 = -(sigma/alpha)(eps_theta - eps)`` and

    v_theta - v = alpha' (x0_theta - x0) + sigma' (eps_theta - eps)
                = ((alpha sigma' - alpha' sigma) / alpha) (eps_theta - eps):

the eps-DSM weighted by ``w(t) = ((alpha sigma' - alpha' sigma)/alpha)^2``, ``1/(1 - t)^2`` on
the flow path, where it is EDM's weight (``s_d = 1``, ``1/alpha^2``) over ``(1 - t)^2 + t^2``
(in ``[1/2, 1]``). It is computed in the first form, from the model's own ``(eps, x0)``
(:func:`eps_and_x0`), never as ``w`` times the eps-MSE: that form has no division by ``alpha``
and is finite at every ``t`` in ``[t_eps, T]``, ``T`` included, where the loss is its limit
``alpha_T'^2 ||x0_theta - x0||^2`` (``w = inf`` and the eps error is 0 there).

**Training times on a path with ``alpha_T = 0``** lie in ``[t_eps, T)``: :func:`sample_time`
rounds a draw that would become ``T`` in the training dtype down to the largest float below it,
so the eps-MSE weightings (``edm``, ``likelihood``), infinite at ``T``, stay finite.

Times come from a :class:`~sde_gen.time_sampling.TimeSampler` (uniform, importance-sampled or
EDM's log-normal) whose factor ``r(t)`` multiplies the loss.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from .errors import UserInputError
from .parameterization import EpsModel, ScoreModel, eps_to_x0, predicts_x0
from .sde import SDE
from .tensor_utils import append_dims, mean_flat, sum_flat
from .time_sampling import TimeSampler

Weighting = Callable[[SDE, torch.Tensor], torch.Tensor]


def weight_simple(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """``lambda(t) = sigma_t^2``: unit weight on the eps-MSE. [Ho20] Eq. (14)."""
    return torch.ones_like(t)


def weight_likelihood(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """``lambda(t) = g(t)^2``: the bound on the KL / NLL. [Song21mle] Eq. (8)-(9)."""
    g = sde.diffusion(t)
    sigma_t = sde.marginal_coeffs(t)[1]
    return (g / sigma_t) ** 2


def weight_min_snr(sde: SDE, t: torch.Tensor, *, gamma: float = 5.0) -> torch.Tensor:
    """``min(SNR, gamma) / SNR`` on the eps-MSE. [Hang23] Eq. (9)."""
    alpha_t, sigma_t = sde.marginal_coeffs(t)
    snr = (alpha_t / sigma_t) ** 2
    return torch.clamp(snr, max=gamma) / snr


def weight_edm(sde: SDE, t: torch.Tensor, *, sigma_data: float = 1.0) -> torch.Tensor:
    """``(sigma^2 + s_d^2) / s_d^2`` on the eps-MSE, ``sigma = sigma_t / alpha_t``.

    Refs: [Karras22] Eq. (8)."""
    alpha_t, sigma_t = sde.marginal_coeffs(t)
    return 1.0 + (sigma_t / (alpha_t * sigma_data)) ** 2


def weight_velocity(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """``((alpha sigma' - alpha' sigma) / alpha)^2``: the flow-matching loss ``||v_theta - v||^2``
    as a weight on the eps-MSE (module docstring; ``1/(1 - t)^2`` on flow, ``inf`` at ``T``).
    :func:`dsm_loss` computes that loss as a velocity error, not with this factor.

    Refs: [Lipman23] Eq. (23)."""
    alpha_t, sigma_t = sde.marginal_coeffs(t)
    d_alpha, d_sigma = sde.marginal_coeffs_derivative(t)
    return ((alpha_t * d_sigma - d_alpha * sigma_t) / alpha_t) ** 2


WEIGHTINGS: dict[str, Callable[..., torch.Tensor]] = {
    "simple": weight_simple,
    "likelihood": weight_likelihood,
    "min_snr": weight_min_snr,
    "edm": weight_edm,
    "velocity": weight_velocity,
}
REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"mean": mean_flat, "sum": sum_flat}


def make_weighting(name: str, *, gamma: float = 5.0, sigma_data: float = 1.0) -> Weighting:
    """The weighting ``name`` with its parameter bound (``gamma`` for min-SNR, ``s_d`` for EDM)."""
    if name not in WEIGHTINGS:
        raise UserInputError(f"unknown weighting {name!r}; choose one of {', '.join(WEIGHTINGS)}")
    if name == "min_snr":
        if not gamma > 0:
            raise UserInputError(f"min-SNR gamma must be positive, got {gamma}")
        return functools.partial(weight_min_snr, gamma=gamma)
    if name == "edm":
        if not sigma_data > 0:
            raise UserInputError(f"sigma_data must be positive, got {sigma_data}")
        return functools.partial(weight_edm, sigma_data=sigma_data)
    return WEIGHTINGS[name]


def sample_time(
    sde: SDE,
    batch: int,
    *,
    t_eps: float = 1e-5,
    discrete: bool = False,
    time_sampling: str | TimeSampler = "uniform",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw training times, their kernel coefficients and importance factors.

    Continuous: ``t`` from ``time_sampling`` (:class:`~sde_gen.time_sampling.TimeSampler`) and
    ``(alpha_t, sigma_t) = sde.marginal_coeffs(t)``. Discrete (DDPM's training, [Ho20] Alg. 1):
    ``i ~ U{0..N-1}``, ``t = sde.index_to_time(i)`` and the discrete chain's own coefficients
    (``sqrt(abar_i)``, ``sqrt(1 - abar_i)`` for VP); only uniform sampling applies there. On a
    path with ``alpha_T = 0`` the times lie below ``T`` in ``dtype`` (module docstring).

    Returns:
        ``(t, alpha_t, sigma_t, r)``, each ``(B,)``.
    """
    sampler = TimeSampler(time_sampling) if isinstance(time_sampling, str) else time_sampling
    if discrete:
        if sampler.name != "uniform":
            raise UserInputError("discrete training draws DDPM's steps uniformly; "
                             f"time_sampling={sampler.name!r} needs continuous time")
        i = torch.randint(0, sde.N, (batch,), generator=generator, device=device)
        alpha_t, sigma_t = sde.discrete_coeffs(i)
        t = sde.index_to_time(i)
        return t.to(dtype), alpha_t.to(dtype), sigma_t.to(dtype), torch.ones_like(t, dtype=dtype)
    t, r = sampler.sample(sde, batch, t_eps=t_eps, generator=generator, device=device,
                          dtype=torch.float64)
    if sde.pure_noise_at_T:  # times in [t_eps, T) in the training dtype (module docstring)
        below_T = torch.nextafter(torch.tensor(sde.T, dtype=dtype), torch.tensor(0, dtype=dtype))
        t = t.clamp(max=float(below_T))
    alpha_t, sigma_t = sde.marginal_coeffs(t)  # float64, then cast: exact at tiny t
    return t.to(dtype), alpha_t.to(dtype), sigma_t.to(dtype), r.to(dtype)


def _unwrap(model: object) -> object:
    """The module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while isinstance(model, nn.Module) and (hasattr(model, "module")
                                            or hasattr(model, "_orig_mod")):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def eps_and_x0(
    model: EpsModel, x_t: torch.Tensor, t: torch.Tensor, alpha_t: torch.Tensor,
    sigma_t: torch.Tensor, y: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eps_theta, x0_theta)`` from one model call: a :class:`ScoreModel` (or a DDP /
    ``torch.compile`` wrapper of one, called through ``forward(..., with_x0=True)`` so that the
    wrapper sees it) or a model with ``predict`` gives both; a plain eps-model gives eps, and x0
    by Tweedie's formula (finite below ``T``). Shapes: ``(B, *D)`` each."""
    args = (x_t, t) if y is None else (x_t, t, y)
    base = _unwrap(model)
    if isinstance(base, ScoreModel):
        return model(*args, with_x0=True)
    if predicts_x0(base):
        return base.predict(*args)
    eps = model(*args)
    return eps, eps_to_x0(x_t, eps, alpha_t, sigma_t)


def dsm_loss(
    model: EpsModel,
    sde: SDE,
    x0: torch.Tensor,
    *,
    weighting: str | Weighting = "simple",
    time_sampling: str | TimeSampler = "uniform",
    t_eps: float = 1e-5,
    reduce: str = "mean",
    discrete: bool = False,
    generator: torch.Generator | None = None,
    shard: slice | None = None,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoising score-matching loss per example, unreduced over the batch.

    Args:
        model: eps-model ``model(x_t, t)``; with labels ``y``, ``model(x_t, t, y)``.
        sde: forward SDE.
        x0: clean data. Shapes: ``(B, *D)``.
        weighting: a name of :data:`WEIGHTINGS` (default parameters; see :func:`make_weighting`)
            or a function ``w(sde, t) -> (B,)``; ``"velocity"`` (:func:`weight_velocity`) is the
            flow-matching loss ``||v_theta - v||^2``, computed from ``(eps_theta, x0_theta)``
            (module docstring).
        time_sampling: a name of :data:`~sde_gen.time_sampling.TIME_SAMPLINGS` or a
            ``TimeSampler``.
        t_eps: smallest training time (continuous variant).
        reduce: ``"mean"`` or ``"sum"`` of the squared error over data dimensions.
        discrete: train on DDPM's N discrete steps instead of continuous time.
        generator: source of the times and noise.
        shard: evaluate only these rows. Times and noise are drawn for the whole batch first, so
            a global batch split over data-parallel ranks gives exactly the single-process draws.
        y: class labels of ``x0`` for a class-conditional model (``(B,)`` int64, the null label
            where dropped, [Ho22] Alg. 1); ``None`` calls ``model(x_t, t)``. They change no draw.

    Returns:
        ``(B,)`` loss (``(len(shard),)`` with ``shard``). Refs: [Song21] Eq. (7); [Ho20] Alg. 1;
        [Lipman23] Eq. (23).
    """
    w = make_weighting(weighting) if isinstance(weighting, str) else weighting
    if reduce not in REDUCTIONS:
        raise UserInputError(f"unknown reduce {reduce!r}; choose one of {sorted(REDUCTIONS)}")
    t, alpha_t, sigma_t, r = sample_time(
        sde, x0.shape[0], t_eps=t_eps, discrete=discrete, time_sampling=time_sampling,
        generator=generator, device=x0.device, dtype=x0.dtype,
    )
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if shard is not None:
        x0, z, t, alpha_t, sigma_t, r = (v[shard] for v in (x0, z, t, alpha_t, sigma_t, r))
        y = None if y is None else y[shard]
    x_t = append_dims(alpha_t, x0.ndim) * x0 + append_dims(sigma_t, x0.ndim) * z
    if w is weight_velocity:  # v_theta - v = alpha' (x0_theta - x0) + sigma' (eps_theta - eps)
        eps, x0_hat = eps_and_x0(model, x_t, t, alpha_t, sigma_t, y)
        d_alpha, d_sigma = (append_dims(c.to(x0.dtype), x0.ndim)
                            for c in sde.marginal_coeffs_derivative(t.to(torch.float64)))
        return r * REDUCTIONS[reduce]((d_alpha * (x0_hat - x0) + d_sigma * (eps - z)) ** 2)
    eps = model(x_t, t) if y is None else model(x_t, t, y)
    err = REDUCTIONS[reduce]((eps - z) ** 2)
    return w(sde, t) * r * err
