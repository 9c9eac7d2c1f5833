"""The flow-matching paths: Gaussian paths whose signal vanishes at ``T = 1``.

Rectified flow / flow matching ([Liu23], [Lipman23], [Esser24]) trains on the linear
interpolant ``x_t = (1 - t) x0 + t eps``; the trigonometric interpolant ``x_t = cos(pi t/2) x0 +
sin(pi t/2) eps`` ([Albergo23] Sec. 4; variance preserving) is its cosine sibling. Both are
members of the family every SDE here belongs to, ``x_t = alpha_t x0 + sigma_t eps``, with the
SDE view of any such path ([Song21] Eq. (33), [Kingma21] App.):

    f(t) = d log alpha_t / dt,        g(t)^2 = d sigma_t^2 / dt - 2 f(t) sigma_t^2.

Unlike VP and VE, ``alpha_T = 0``: the prior ``N(0, I)`` is ``q_T`` exactly (no prior-mismatch
term in the ODE likelihood), and ``f``, ``g^2``, the log-SNR (``-inf``) and ``sigma / alpha``
diverge at ``T``. The package never evaluates them there: the probability-flow drift is
``alpha' x0 + sigma' eps`` (finite), the solvers take the step from ``T`` in its
``(x0, eps)`` form (:mod:`sde_gen.sampling`), and a model sampled from ``T`` must predict x0
itself (:func:`sde_gen.parameterization.model_prediction`). Neither path has a discrete chain
(no DDPM bound, no ancestral chain, no ``discrete=True``).

Refs: [Liu23] rectified flow; [Lipman23] flow matching; [Esser24] Sec. 3.1 (SD3);
[Albergo23] stochastic interpolants, Sec. 4; [Song21] Eq. (33).
"""

from __future__ import annotations

import math

import torch

from .errors import UserInputError
from .schedules import check_finite
from .sde_base import SDE

__all__ = ["FlowSDE", "TrigFlowSDE"]


class _PurePath(SDE):
    """A Gaussian path on ``[0, 1]`` with ``alpha_1 = 0``, given by ``alpha_t``, ``sigma_t`` and
    their derivatives; the SDE coefficients follow from them."""

    default_t_min = 1e-3
    chain = "none"

    def __init__(self, N: int = 1000, *, shift: float = 1.0) -> None:
        super().__init__(N, 1.0)
        shift = check_finite("shift", shift)
        if not shift > 0:
            raise UserInputError(f"shift must be positive, got {shift!r}")
        self.grid_shift = float(shift)

    @property
    def few_step_spacing(self) -> str:  # type: ignore[override]
        """``karras`` (the best built-in spacing of unipc, ipndm and deis at 20 NFE on the flow
        paths' tuning mixtures, benchmarks/results/flow_paths.md), or ``shifted`` when the path
        carries a time shift (a diffusers folder's ``shift``)."""
        return "shifted" if self.grid_shift != 1.0 else "karras"

    def check_discrete_chain(self) -> None:
        raise UserInputError(f"the {self.path_name} path has no discrete chain (DDPM's or "
                             f"SMLD's); use the continuous coefficients (discrete=False, "
                             f"--continuous)")

    @property
    def path_name(self) -> str:
        return {"FlowSDE": "flow", "TrigFlowSDE": "trig"}.get(type(self).__name__,
                                                               type(self).__name__)

    def drift_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``f = alpha' / alpha`` (``-inf`` at ``T``)."""
        alpha_t, _ = self.marginal_coeffs(t)
        d_alpha, _ = self.marginal_coeffs_derivative(t)
        return d_alpha / alpha_t

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """``g = sqrt(2 sigma sigma' - 2 f sigma^2)`` (``inf`` at ``T``)."""
        alpha_t, sigma_t = self.marginal_coeffs(t)
        d_alpha, d_sigma = self.marginal_coeffs_derivative(t)
        return torch.sqrt(2 * sigma_t * d_sigma - 2 * d_alpha / alpha_t * sigma_t**2)


class FlowSDE(_PurePath):
    """The rectified-flow / flow-matching path ``alpha_t = 1 - t``, ``sigma_t = t`` on ``[0, 1]``.

    SDE view: ``f = -1/(1 - t)``, ``g^2 = 2t/(1 - t)``; log-SNR ``log((1 - t)/t)``. The velocity
    of the path, the flow-matching target, is ``d x_t / dt = eps - x0``.

    Args:
        N: the number of training timesteps a diffusers flow-matching folder counts (its
            timesteps are ``t N``); the default grids of the 1000-step solvers use ``N - 1``.
        shift: the time shift of its default grids (``shifted`` spacing, SD3's
            ``s t / (1 + (s - 1) t)``; a diffusers folder's ``shift``); 1 is uniform in ``t``.

    Refs: [Liu23]; [Lipman23] Eq. (20)-(23) (sigma_min = 0); [Esser24] Sec. 3.1.
    """

    def marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 1 - t, t

    def marginal_coeffs_derivative(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return -torch.ones_like(t), torch.ones_like(t)

    def t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Inverse of ``lambda = log((1 - t)/t)``: ``t = sigmoid(-lambda)``."""
        return torch.sigmoid(-lam)


class TrigFlowSDE(_PurePath):
    """The trigonometric path ``alpha_t = cos(pi t/2)``, ``sigma_t = sin(pi t/2)`` on ``[0, 1]``:
    variance preserving (``alpha^2 + sigma^2 = 1``) with ``alpha_1 = 0``.

    SDE view: ``f = -(pi/2) tan(pi t/2)``, ``g^2 = pi tan(pi t/2)``; log-SNR
    ``log cot(pi t/2)``.

    Refs: [Albergo23] Sec. 4; [Nichol21] Eq. (17) without its offset ``s``.
    """

    def marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angle = 0.5 * math.pi * t
        alpha = torch.cos(angle)
        return torch.where(t == 1, torch.zeros_like(alpha), alpha), torch.sin(angle)

    def marginal_coeffs_derivative(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angle = 0.5 * math.pi * t
        return -0.5 * math.pi * torch.sin(angle), 0.5 * math.pi * torch.cos(angle)

    def t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Inverse of ``lambda = log cot(pi t/2)``: ``t = (2/pi) arctan(e^{-lambda})``."""
        return torch.atan(torch.exp(-lam)) * (2 / math.pi)
