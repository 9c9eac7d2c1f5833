"""Log-likelihood through the probability-flow ODE (instantaneous change of variables).

Along ``dx/dt = v(x, t) = f - 1/2 g^2 s`` ([Song21] Eq. 13), ``d log p_t(x(t))/dt = -div v``
([Chen18] Thm. 1), hence

    log p_{t_min}(x) = log p_T(z) + int_{t_min}^T div v(x(t), t) dt,    z = x(T),

integrated jointly with ``x`` as a torchdiffeq tuple state on the device ([Song21] Eq. 39).
``trace="exact"`` sums D autograd VJPs (low-dimensional data); ``trace="hutchinson"`` uses
``E[eps^T (dv/dx) eps]`` with Rademacher or Gaussian probes drawn once per solve
([Grathwohl19] Eq. 7), one VJP per probe.

Refs: [Song21] Appendix D.2, Eq. (39)-(40); [Chen18]; [Grathwohl19].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..chain import check_t_min
from ..errors import UserInputError
from ..noise import Generator, randint, randn
from ..parameterization import CountingModel, EpsModel, model_prediction, predicts_x0
from ..pf_ode import check_method, odeint_between, probability_flow
from ..sde import SDE
from ..tensor_utils import sum_flat

TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


@dataclass(frozen=True)
class LikelihoodResult:
    """Per-example log-likelihood and the latent.

    Attributes:
        logp: ``(B,)`` ``log p_{t_min}(x)`` in nats under the model.
        z: ``(B, *D)`` latent ``x(T)``.
        nfe: ODE function evaluations (model calls) of the solve.
        prior_logp: ``(B,)`` ``log p_T(z)``.
        delta_logp: ``(B,)`` the integral of the divergence.
    """

    logp: torch.Tensor
    z: torch.Tensor
    nfe: int
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor


def check_solve(sde: SDE, t_min: float, rtol: float, atol: float,
                method: str = "dopri5") -> None:
    """The data end ``t_min`` in ``(0, T)``, positive tolerances and a torchdiffeq method, as
    one-line errors (else torchdiffeq stops with ``underflow in dt 0.0``: the score is singular
    at t = 0 for VP).

    Raises:
        UserInputError: naming the bad value.
    """
    check_t_min(sde, t_min, what="t_min (the data end of the ODE)")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and tol > 0):
            raise UserInputError(f"need {name} > 0, got {tol!r}")
    check_method(method)


def check_reaches_T(model: EpsModel, sde: SDE) -> None:
    """The ODE runs to ``T``; where ``alpha_T = 0`` (a flow path) its drift there needs the
    model's own x0 (:func:`~sde_gen.parameterization.predicts_x0`): refused up front otherwise.

    Raises:
        UserInputError: naming the model.
    """
    if sde.pure_noise_at_T and not predicts_x0(model):
        model_prediction(model, None, None)  # raises its one-line explanation


def check_finite(x: torch.Tensor, name: str = "x") -> None:
    """One-line error for NaN or infinite data (torchdiffeq would fail with a bare
    ``AssertionError`` on its first step)."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise UserInputError(f"{name} must be a floating-point tensor, got "
                             f"{x.dtype if torch.is_tensor(x) else type(x).__name__}")
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1) if x.ndim else x.reshape(1, 1))
    if bad.any():
        rows = int(bad.any(dim=1).sum())
        raise UserInputError(f"{name} has {int(bad.sum())} NaN or infinite values in {rows} of "
                             f"its {bad.shape[0]} examples")


def _draw_probes(x: torch.Tensor, n_probes: int, probe: str,
                 generator: Generator) -> torch.Tensor:
    """``(n_probes, B, *D)`` Hutchinson probes; example ``i``'s come from its own stream with
    an :class:`~sde_gen.noise.IndexedGenerator`."""
    b, shape = x.shape[0], (x.shape[0] * n_probes, *x.shape[1:])
    if probe == "gaussian":
        v = randn(shape, generator, device=x.device, dtype=x.dtype)
    else:
        v = (2 * randint(2, shape, generator, device=x.device) - 1).to(x.dtype)
    return v.reshape(b, n_probes, *x.shape[1:]).transpose(0, 1)


def _divergence_fn(drift, trace: str, probes: torch.Tensor | None):
    """``func(t, (x, logp))`` returning ``(v, div v)`` for torchdiffeq."""

    def func(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        x = state[0]
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            v = drift(t, x)
            if trace == "exact":
                flat_v = v.reshape(v.shape[0], -1)
                div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
                for i in range(flat_v.shape[1]):
                    (gi,) = torch.autograd.grad(flat_v[:, i].sum(), x, retain_graph=True)
                    div = div + gi.reshape(gi.shape[0], -1)[:, i]
            else:
                div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
                for k in range(probes.shape[0]):
                    (vjp,) = torch.autograd.grad(v, x, probes[k], retain_graph=k + 1 < len(probes))
                    div = div + sum_flat(vjp * probes[k])
                div = div / probes.shape[0]
        return v.detach(), div.detach()

    return func


def log_likelihood(
    model: EpsModel,
    sde: SDE,
    x: torch.Tensor,
    *,
    trace: str = "hutchinson",
    probe: str = "rademacher",
    n_probes: int = 1,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_min: float = 1e-5,
    generator: Generator = None,
) -> LikelihoodResult:
    """Exact (up to ODE tolerance and the trace estimator) ``log p_{t_min}(x)`` under the model.

    Args:
        model: eps-model ``model(x, t)``.
        sde: forward SDE; its prior gives ``log p_T``.
        x: data ``(B, *D)`` in model units (for images: dequantized, see
            :func:`~sde_gen.scaling.dequantize`). Its dtype sets the solve's precision.
        trace: ``"exact"`` (D VJPs per evaluation) or ``"hutchinson"``.
        probe: ``"rademacher"`` or ``"gaussian"`` Hutchinson probes.
        n_probes: probes averaged per evaluation (drawn once per solve).
        method, rtol, atol: torchdiffeq solver and tolerances (``> 0``).
        t_min: start time of the integration (data end), in ``(0, T)``.
        generator: source of the probes (an :class:`~sde_gen.noise.IndexedGenerator` gives
            every example its own).

    Returns:
        :class:`LikelihoodResult`. Works under ``torch.no_grad()``.

    Raises:
        UserInputError: a bad option or data (NaN, not a batch), a model whose output does not
            have the input's shape.
        ODEDivergedError: the solve could not go on (a NaN or infinite model output).
    """
    if trace not in TRACES:
        raise UserInputError(f"unknown trace {trace!r}; choose one of {', '.join(TRACES)}")
    if probe not in PROBES:
        raise UserInputError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}")
    if n_probes < 1:
        raise UserInputError(f"n_probes must be >= 1, got {n_probes}")
    check_solve(sde, t_min, rtol, atol, method)
    check_reaches_T(model, sde)
    if not torch.is_tensor(x) or x.ndim < 2 or x.shape[0] < 1:
        raise UserInputError(f"x must be a non-empty batch (B, *D), got "
                             f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    check_finite(x)
    counted = CountingModel(model)
    probes = _draw_probes(x, n_probes, probe, generator) if trace == "hutchinson" else None
    func = _divergence_fn(probability_flow(counted, sde), trace, probes)
    t0 = torch.tensor(t_min, dtype=x.dtype, device=x.device)
    t1 = torch.tensor(sde.T, dtype=x.dtype, device=x.device)
    state = (x.detach(), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    z, delta = odeint_between(func, state, t0, t1, method=method, rtol=rtol, atol=atol)
    prior = sde.prior_logp(z)
    return LikelihoodResult(logp=prior + delta, z=z, nfe=counted.nfe, prior_logp=prior,
                            delta_logp=delta)


def _transport(model: EpsModel, sde: SDE, x: torch.Tensor, start: float, end: float, *,
               method: str, rtol: float, atol: float) -> torch.Tensor:
    """``x`` carried by the probability-flow ODE from time ``start`` to ``end``."""
    t0, t1 = (torch.tensor(v, dtype=x.dtype, device=x.device) for v in (start, end))
    return odeint_between(probability_flow(model, sde), x, t0, t1, method=method, rtol=rtol,
                          atol=atol)


@torch.no_grad()
def encode(
    model: EpsModel, sde: SDE, x: torch.Tensor, *, t_min: float = 1e-5, method: str = "dopri5",
    rtol: float = 1e-5, atol: float = 1e-5,
) -> torch.Tensor:
    """Latent ``z = x(T)`` of data ``x`` at ``t_min`` (in ``(0, T)``) through the PF-ODE."""
    check_solve(sde, t_min, rtol, atol, method)
    check_reaches_T(model, sde)
    check_finite(x)
    return _transport(model, sde, x, t_min, sde.T, method=method, rtol=rtol, atol=atol)


@torch.no_grad()
def decode(
    model: EpsModel, sde: SDE, z: torch.Tensor, *, t_min: float = 1e-5, method: str = "dopri5",
    rtol: float = 1e-5, atol: float = 1e-5,
) -> torch.Tensor:
    """Data ``x(t_min)`` of a latent ``z`` at ``T``: the inverse of :func:`encode`."""
    check_solve(sde, t_min, rtol, atol, method)
    check_reaches_T(model, sde)
    check_finite(z, "z")
    return _transport(model, sde, z, sde.T, t_min, method=method, rtol=rtol, atol=atol)


def slerp(z0: torch.Tensor, z1: torch.Tensor, weight: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latents (per example), ``weight`` in ``[0, 1]``.

    Keeps the norm typical of Gaussian latents, unlike linear interpolation.
    """
    a, b = z0.reshape(z0.shape[0], -1), z1.reshape(z1.shape[0], -1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-30)
    omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))[:, None]
    w = torch.as_tensor(weight, dtype=a.dtype, device=a.device)
    out = (torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / torch.sin(omega)
    return out.reshape(z0.shape)
