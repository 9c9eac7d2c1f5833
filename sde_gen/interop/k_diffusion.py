"""k-diffusion interop: our eps-models as EDM denoisers ``D(x; sigma)`` and back.

k-diffusion (and EDM) write every diffusion in the variance-exploding form of [Karras22] Eq. (4)
with ``s(t) = 1``: a state ``x`` whose noise level is ``sigma``, and a denoiser ``D(x; sigma)``
that estimates the clean data. Our SDEs have ``x_t = alpha_t x0 + sigma_t eps``; dividing by
``alpha_t`` gives exactly that form ([Karras22] Sec. 2 and Table 1, "scaling" ``s(t) = alpha_t``):

| k-diffusion      | here                                       |
| ---------------- | ------------------------------------------ |
| ``x``            | ``x_t / alpha_t`` (VE: ``x_t``)            |
| ``sigma``        | ``sigma_t / alpha_t = exp(-lambda_t)``     |
| ``D(x; sigma)``  | ``x0_hat = x - sigma eps(alpha_t x, t)``   |
| ``to_d(x, s, D)``| ``eps`` (``(x - D) / sigma``)              |

The probability-flow ODE of any of our SDEs in these variables is ``dx/dsigma = eps``
([Karras22] Eq. 4 with ``s = 1``), the VE probability-flow ODE; so k-diffusion's samplers on a
:class:`KarrasDenoiser` solve our ODE, and our samplers on :func:`from_denoiser`'s VE model
solve k-diffusion's. On matched grids (``sigma_k = sigma_{t_k} / alpha_{t_k}``) k-diffusion's
``sample_euler`` is our ``ddim`` (``eta = 0``, Euler in ``(x/alpha, sigma/alpha)``,
[Song21ddim] Eq. 14), ``sample_heun`` our ``heun`` ([Karras22] Alg. 1) and ``sample_dpmpp_2m``
our ``dpm`` with ``order=2, lower_order_final=False`` ([Lu22pp] Alg. 2), up to rounding
(tests/test_interop_kdiffusion.py). k-diffusion's grids end in ``sigma = 0``; its last step there
is the denoiser itself, which is our final Tweedie step (``sample(..., denoise=True)``) at the
grid's last positive ``sigma``.

This module does not import k-diffusion.

Refs: [Karras22] Sec. 2, Eq. (4), Table 1, Alg. 1, Eq. (5) (the ``rho`` grid); [Song21] Eq. (13);
[Song21ddim] Eq. (14); [Lu22pp] Alg. 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import UserInputError
from ..schedules import check_finite
from ..sde import SDE, VESDE
from ..tensor_utils import append_dims

__all__ = ["DenoiserEpsModel", "KarrasDenoiser", "from_denoiser"]

#: ``D(x, sigma) -> x0_hat``: k-diffusion's / EDM's denoiser, ``sigma`` a ``(B,)`` tensor.
Denoiser = Callable[..., torch.Tensor]

# Relative slack on the noise-level range: a float32 Karras grid (k-diffusion builds it in
# float32) misses its end points by a few 1e-7; such sigmas map to the end times exactly.
_RANGE_RTOL = 1e-5


def _work_dtype(device: torch.device) -> torch.dtype:
    """float64 for the sigma -> t inversion (MPS has no float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _batch_sigma(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sigma`` as a ``(B,)`` tensor on ``x``'s device, from a scalar or a ``(B,)`` tensor."""
    try:  # a Python number is read in float64, not torch's default float32
        s = torch.as_tensor(sigma, device=x.device,
                            dtype=None if torch.is_tensor(sigma) else _work_dtype(x.device))
    except (TypeError, ValueError, RuntimeError):
        raise UserInputError(f"sigma must be a number or a ({x.shape[0]},) tensor, got "
                             f"{type(sigma).__name__}") from None
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise UserInputError(f"sigma must be a scalar or of shape ({x.shape[0]},), "
                             f"got {tuple(s.shape)}")
    return s.to(_work_dtype(x.device))


def _check_sde(sde: Any) -> SDE:
    if not isinstance(sde, SDE):
        raise UserInputError(f"sde must be an sde_gen SDE (VPSDE, SubVPSDE, VESDE), "
                             f"got {type(sde).__name__}")
    return sde


class KarrasDenoiser(nn.Module):
    """k-diffusion's denoiser ``D(x, sigma)`` of an eps-model ``model(x_t, t)`` on ``sde``.

    ``sigma`` is the noise level of the scaled state ``x = x_t / alpha_t``, ``sigma = sigma_t /
    alpha_t`` ([Karras22] Table 1); it maps to our time by the SDE's exact inverse
    ``t = sde.t_from_log_snr(-log sigma)`` (in float64), the model is called at ``x_t = alpha_t
    x`` and ``D = x - sigma eps`` (Tweedie's formula ``(x_t - sigma_t eps) / alpha_t``). For VE,
    ``alpha_t = 1`` and ``x = x_t``. Pass it to any k-diffusion sampler with a grid inside
    ``[sigma_min, sigma_max]`` (plus k-diffusion's final 0, where no sampler calls ``D``), e.g.
    :meth:`sigmas`, and start from ``x_T / alpha_T``.

    An ``nn.Module``: a module ``model`` is registered (``.to``, ``.parameters``, ``.eval`` reach
    it); a plain callable is stored as is. Keyword arguments of a call (k-diffusion's
    ``extra_args``, e.g. class labels) are passed on to ``model``.

    Args:
        model: eps-model ``model(x_t, t) -> eps``, ``t`` a ``(B,)`` tensor of continuous time.
        sde: the SDE the model was trained on.

    Shapes: ``x: (B, *D)``, ``sigma``: ``(B,)`` or a scalar -> ``(B, *D)``.

    Raises:
        UserInputError: a non-callable model, a non-SDE, a path whose ``alpha_T = 0`` (its
            ``sigma_max`` is infinite), or (on a call) a sigma outside
            ``[sigma_0, sigma_max]`` (times ``[0, T]``), non-positive or NaN.

    Refs: [Karras22] Sec. 2, Eq. (4), Table 1; [Song21] Eq. (13).
    """

    def __init__(self, model: Callable[..., torch.Tensor], sde: SDE) -> None:
        super().__init__()
        if not callable(model):
            raise UserInputError(f"model must be callable as model(x, t) -> eps, got "
                                 f"{type(model).__name__}")
        self.model, self.sde = model, _check_sde(sde)
        if sde.pure_noise_at_T:
            raise UserInputError(f"k-diffusion's samplers walk sigma = sigma_t / alpha_t down from "
                                 f"a finite sigma_max, and this path's ({type(sde).__name__}) is "
                                 f"inf at T (alpha_T = 0): sample it with sde-gen's solvers, or "
                                 f"move the model to a VP or VE path (sde_gen.path_transfer)")
        t_ends = torch.tensor([0.0, sde.T], dtype=torch.float64)
        alpha, sigma = sde.marginal_coeffs(t_ends)
        s_0, s_T = (float(v) for v in sigma / alpha)
        if isinstance(sde, VESDE):  # exact end points, not exp(log) round trips
            s_0, s_T = sde.sigma_min, sde.sigma_max
        s_0 = s_0 if s_0 > 0 else 0.0  # the cosine VP's sigma_0 is NaN by rounding (B(0) < 0)
        self._sigma_0, self._sigma_max = s_0, s_T
        self._sigma_min = self._sigma_at(sde.default_t_min)

    def _sigma_at(self, t: float) -> float:
        alpha, sigma = self.sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64))
        return float(sigma / alpha)

    @property
    def sigma_min(self) -> float:
        """The noise level at ``sde.default_t_min``, our samplers' default end time (``1e-3`` for VP
        and sub-VP, noise-free at ``t = 0``; ``1e-5`` for VE, a hair above ``sde.sigma_min``).
        A call accepts any sigma of a time in ``[0, T]``: down to ``sde.sigma_min`` on VE, down
        to (not including) 0 on VP and sub-VP; but our samplers' grids must end above ``t = 0``,
        which a grid ending at :attr:`sigma_min` does."""
        return self._sigma_min

    @property
    def sigma_max(self) -> float:
        """The noise level at ``T``: ``sigma_T / alpha_T`` (VE: ``sde.sigma_max``)."""
        return self._sigma_max

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """k-diffusion's noise level of our times: ``sigma_t / alpha_t = exp(-lambda_t)``.

        Shapes: any -> same (float64)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        alpha, sigma = self.sde.marginal_coeffs(t)
        return sigma / alpha

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Our time of k-diffusion noise levels, ``t = sde.t_from_log_snr(-log sigma)``, checked
        against the SDE's range (times ``[0, T]``) and clamped into it (float32 grids miss the
        end points by rounding). Use it to run our samplers on a k-diffusion grid
        (``ts = kd.sigma_to_t(sigmas[:-1])`` without the final 0).

        Shapes: any -> same (float64, or float32 on MPS).

        Raises:
            UserInputError: a sigma outside the range, non-positive or NaN.
        """
        sigma = torch.as_tensor(sigma)
        s = sigma.to(_work_dtype(sigma.device))
        lo, hi = self._sigma_0 * (1 - _RANGE_RTOL), self._sigma_max * (1 + _RANGE_RTOL)
        ok = (s > 0) & (s >= lo) & (s <= hi)
        if not bool(ok.all()):
            bad = s[~ok]
            shown = "NaN" if bool(torch.isnan(bad).any()) else (
                f"values in [{float(bad.min()):g}, {float(bad.max()):g}]")
            low = f"{self._sigma_0:g}" if self._sigma_0 > 0 else "0 (exclusive)"
            raise UserInputError(f"sigma must lie in [{low}, {self._sigma_max:g}] (times [0, "
                                 f"{self.sde.T:g}] of {type(self.sde).__name__}); got {shown}")
        t = self.sde.t_from_log_snr(-torch.log(s))  # lambda_t = -log sigma [Karras22] Table 1
        return t.clamp(0.0, self.sde.T)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """``D(x, sigma) = x - sigma eps(alpha_t x, t)``, the data estimate ([Karras22] Eq. 3's
        minimizer; Tweedie). Shapes: ``x (B, *D)``, ``sigma (B,)`` or scalar -> ``(B, *D)``."""
        s = _batch_sigma(sigma, x)
        t = self.sigma_to_t(s)
        alpha_t = self.sde.marginal_coeffs(t)[0]
        x_t = append_dims(alpha_t.to(x.dtype), x.ndim) * x
        eps = self.model(x_t, t.to(x.dtype), **kwargs)
        return x - append_dims(s.to(x.dtype), x.ndim) * eps

    def sigmas(self, n: int, *, rho: float = 7.0) -> torch.Tensor:
        """k-diffusion's Karras grid from :attr:`sigma_max` to :attr:`sigma_min` with a final 0:
        ``get_sigmas_karras(n, sigma_min, sigma_max, rho)``, computed in float64.

        Returns:
            ``(n + 1,)`` float64: ``n`` decreasing noise levels, then 0.

        Refs: [Karras22] Eq. (5).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserInputError(f"n must be a positive integer, got {n!r}")
        rho = check_finite("rho", rho)
        if not rho > 0:
            raise UserInputError(f"rho must be positive, got {rho!r}")
        ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
        lo, hi = self.sigma_min ** (1 / rho), self.sigma_max ** (1 / rho)
        sigmas = (hi + ramp * (lo - hi)) ** rho  # Eq. (5) [Karras22]
        sigmas[0], sigmas[-1] = self.sigma_max, (self.sigma_min if n > 1 else self.sigma_max)
        return torch.cat([sigmas, sigmas.new_zeros(1)])

    def extra_repr(self) -> str:
        return (f"sde={type(self.sde).__name__}, sigma_min={self.sigma_min:.4g}, "
                f"sigma_max={self.sigma_max:.4g}")


class DenoiserEpsModel(nn.Module):
    """Our eps-model of a k-diffusion / EDM denoiser ``D(x, sigma)`` on a VE SDE.

    VE has ``alpha_t = 1`` and ``sigma_t = sde.sigma(t)``, so ``x_t`` is k-diffusion's ``x`` at
    ``sigma = sigma_t`` and ``eps = (x_t - D(x_t, sigma_t)) / sigma_t`` (k-diffusion's
    ``to_d``). Built by :func:`from_denoiser`. Keyword arguments of a call go on to ``D``.

    Shapes: ``x (B, *D)``, ``t (B,)`` -> ``(B, *D)``.

    Refs: [Karras22] Eq. (3)-(4), Table 1 (VE column).
    """

    def __init__(self, denoiser: Denoiser, sde: VESDE) -> None:
        super().__init__()
        self.denoiser, self.sde = denoiser, sde

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if not torch.is_tensor(t) or not t.is_floating_point() or t.shape != (x.shape[0],):
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise UserInputError(f"t must be a float tensor of shape ({x.shape[0]},), got {shape}")
        sigma_t = self.sde.marginal_coeffs(t)[1].to(x.dtype)
        x0 = self.denoiser(x, sigma_t, **kwargs)
        return (x - x0) / append_dims(sigma_t, x.ndim)  # eps = (x - D) / sigma [Karras22]

    def extra_repr(self) -> str:
        return f"sigma_min={self.sde.sigma_min:g}, sigma_max={self.sde.sigma_max:g}"


def from_denoiser(
    denoiser: Denoiser, sigma_min: float, sigma_max: float, *, N: int = 1000
) -> tuple[DenoiserEpsModel, VESDE]:
    """A k-diffusion / EDM denoiser ``D(x, sigma)`` as our ``(model, sde)``: a VE SDE with
    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` and the eps-model ``(x - D(x,
    sigma_t)) / sigma_t``, so every sampler of :func:`~sde_gen.sampling.sample` runs it.

    The VE probability-flow ODE is EDM's ``dx/dsigma = (x - D) / sigma`` ([Karras22] Eq. 4,
    ``s = 1``), so ``sample(model, sde, ..., "heun")`` is EDM's Alg. 1 on the same grid. The
    result has ``KarrasDenoiser(model, sde)(x, sigma) == D(x, sigma)`` up to rounding. A
    denoiser of a VP model (k-diffusion's ``VDenoiser``, ``DiscreteEpsDDPMDenoiser``, or a
    :class:`KarrasDenoiser` on VP) becomes the same ODE in ``(x/alpha, sigma/alpha)``.

    Args:
        denoiser: ``D(x, sigma) -> x0_hat`` with ``sigma`` a ``(B,)`` tensor of ``x``'s dtype.
        sigma_min, sigma_max: the noise levels at ``t = 0`` and ``t = T = 1``, ``0 < sigma_min <
            sigma_max`` (EDM: 0.002 and 80).
        N: the VE SDE's number of discrete noise levels (SMLD chain, ancestral/PC samplers).

    Returns:
        ``(model, sde)``: a :class:`DenoiserEpsModel` and its :class:`~sde_gen.sde.VESDE`.

    Raises:
        UserInputError: a non-callable denoiser, or sigmas that are not finite with
            ``0 < sigma_min < sigma_max``.

    Refs: [Karras22] Eq. (4), Table 1, Alg. 1; [Song21] Eq. (9), (30).
    """
    if not callable(denoiser):
        raise UserInputError(f"denoiser must be callable as D(x, sigma) -> x0, got "
                             f"{type(denoiser).__name__}")
    lo, hi = check_finite("sigma_min", sigma_min), check_finite("sigma_max", sigma_max)
    if not 0 < lo < hi or not math.isfinite(hi / lo):
        raise UserInputError(f"need 0 < sigma_min < sigma_max, got {sigma_min!r}, {sigma_max!r}")
    sde = VESDE(lo, hi, N=N)
    return DenoiserEpsModel(denoiser, sde), sde
