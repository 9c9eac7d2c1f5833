"""The SDE interface and the reverse-time SDE: what every forward SDE of the package provides.

A forward SDE ``dx = f(t) x dt + g(t) dw`` with affine drift has Gaussian marginals
``x_t | x0 ~ N(alpha_t x0, sigma_t^2 I)``; :class:`SDE` is that interface (score_sde's, plus
``marginal_coeffs`` and their time derivatives, the log-SNR and its inverse, the prior and the
discrete chain), :class:`ReverseSDE` its reversal. The concrete SDEs are in :mod:`sde_gen.sde`
(VP, sub-VP, VE) and :mod:`sde_gen.flow_paths` (the flow-matching paths).

Shapes: ``x`` is ``(B, *D)`` (``(B, D)`` or ``(B, C, H, W)``); ``t`` is a float tensor ``(B,)`` of
continuous time in ``[0, T]``; per-example scalars (``diffusion``, ``alpha_t``, ``sigma_t``) are
``(B,)``.

Refs: [Song21] Sec. 3, Eqs. (6), (13), (34); [Song21] Appendix B-C.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable

import torch

from .errors import UserInputError
from .noise import Generator, randn
from .schedules import check_finite
from .tensor_utils import append_dims, sum_flat

__all__ = ["SDE", "ReverseSDE", "ScoreFn", "check_time", "check_time_range"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_time(x: torch.Tensor, t: torch.Tensor) -> None:
    if (not torch.is_tensor(t) or not t.is_floating_point() or t.ndim != 1
            or t.shape[0] != x.shape[0]):
        shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
        raise UserInputError(f"t must be a float tensor of shape ({x.shape[0]},), got {shape}")


def check_time_range(t: torch.Tensor, T: float) -> None:
    """Every ``t`` in ``[0, T]`` (NaN is outside); reads ``t`` on the host, so not for hot paths."""
    if bool(((t >= 0) & (t <= T)).all()):
        return
    nan = torch.isnan(t)
    rest = t[~nan]
    got = ["NaN"] if bool(nan.any()) else []
    if rest.numel():
        got.append(f"values in [{float(rest.min()):g}, {float(rest.max()):g}]")
    raise UserInputError(f"t must lie in [0, T={T}]; got {' and '.join(got)}")


def _check_steps(N: int) -> int:
    """``N`` as an int, or a one-line error unless it is a positive integer (inf, NaN, 2.5 fail)."""
    try:
        n = int(N)
    except (TypeError, ValueError, OverflowError):
        raise UserInputError(f"N must be a positive integer, got {N!r}") from None
    if n < 1 or n != N:
        raise UserInputError(f"N must be a positive integer, got {N!r}")
    return n


class SDE(ABC):
    """Abstract forward SDE with the interface of score_sde's ``sde_lib.SDE``.

    Args:
        N: number of discretization steps (DDPM's / SMLD's number of noise levels).
        T: end time.
    """

    prior_std: float = 1.0
    #: Default smallest time ``t_min`` of samplers (where they end) and likelihoods (where the
    #: ODE starts) ([Song21] App. C: 1e-3 for VP and sub-VP, 1e-5 for VE, whose ``sigma_min``
    #: already perturbs the data).
    default_t_min: float = 1e-3
    #: The default grid spacing of the few-step multistep solvers (unipc, ipndm, deis) on this
    #: SDE: ``"logsnr"`` (uniform in log-SNR, the SDE-agnostic choice) unless the SDE declares
    #: another; VP and sub-VP declare ``"quadratic"`` in t ([Song21ddim] App. D.2).
    few_step_spacing: str = "logsnr"
    #: The shift ``s`` of the ``shifted`` spacing, ``t -> s t / (1 + (s - 1) t)`` on ``t / T``
    #: (SD3's, [Esser24] Sec. 5.3.2; 1: uniform in ``t``).
    grid_shift: float = 1.0
    #: The discrete chain this SDE discretizes: ``"ddpm"`` (VP, sub-VP: a variance-preserving
    #: chain with DDPM's bound and learned variances) or ``"smld"`` (VE's noise ladder).
    chain: str = "ddpm"

    def __init__(self, N: int, T: float = 1.0) -> None:
        n, end = _check_steps(N), check_finite("T", T)
        if not end > 0:
            raise UserInputError(f"T must be positive, got {T!r}")
        self.N, self._T = n, end

    @property
    def T(self) -> float:
        """End time of the SDE."""
        return self._T

    def _table(
        self, name: str, device: torch.device, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """The CPU table ``self.<name>`` on ``device``, copied once per (device, dtype) and cached:
        a ``.to(device)`` inside a training step or sampler loop is a blocking copy every call."""
        cache = self.__dict__.setdefault("_device_tables", {})
        key = (name, torch.device(device), dtype)
        if key not in cache:
            table = getattr(self, name)
            cache[key] = table.to(device=device, dtype=dtype or table.dtype)
        return cache[key]

    @property
    def has_ddpm_chain(self) -> bool:
        """Whether DDPM's discrete chain (its bound, learned variances, ancestral steps) exists."""
        return self.chain == "ddpm"

    @property
    def pure_noise_at_T(self) -> bool:
        """Whether ``alpha_T = 0``: ``x_T`` is pure noise, the prior is exactly ``q_T``, and every
        formula that divides by ``alpha`` (``x0`` from eps, ``sigma / alpha``, the log-SNR, the
        drift ``f = d log alpha / dt``) is singular at ``T`` (the flow paths)."""
        alpha_T, _ = self.marginal_coeffs(torch.tensor([self.T], dtype=torch.float64))
        return bool(alpha_T[0] == 0)

    # -- the SDE itself ---------------------------------------------------------------------------
    @abstractmethod
    def drift_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``f(t)`` of the linear drift ``f(x, t) = f(t) x``, ``(B,)``."""

    @abstractmethod
    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """Diffusion coefficient ``g(t)``, ``(B,)``. [Song21] Eq. (5)."""

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift ``f(x, t)`` (shape of ``x``) and diffusion ``g(t)`` ``(B,)``. [Song21] Eq. (5)."""
        check_time(x, t)
        return append_dims(self.drift_coeff(t), x.ndim) * x, self.diffusion(t)

    @abstractmethod
    def marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha_t, sigma_t)``, each ``(B,)``, with ``x_t = alpha_t x0 + sigma_t eps``."""

    def marginal_prob(
        self, x: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``alpha_t x0`` (shape of ``x``) and std ``sigma_t`` ``(B,)`` of ``p_0t(x_t | x0)``.

        A user-facing entry point: it checks that every ``t`` lies in ``[0, T]`` (not NaN), which
        reads ``t`` on the host (a device sync). Internal code calls :meth:`marginal_coeffs`,
        which does not check.

        Raises:
            UserInputError: ``t`` is not a float ``(B,)`` tensor, or has values outside ``[0, T]``.
        """
        check_time(x, t)
        check_time_range(t, self.T)
        alpha_t, sigma_t = self.marginal_coeffs(t)
        return append_dims(alpha_t, x.ndim) * x, sigma_t

    def marginal_coeffs_derivative(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(d alpha_t / dt, d sigma_t / dt)``, each ``(B,)``.

        From the SDE itself: ``alpha' = f alpha`` and ``sigma' = (g^2 + 2 f sigma^2) / (2 sigma)``
        (``g^2 = d sigma^2 / dt - 2 f sigma^2``, [Song21] Eq. (33)); the flow paths, where ``f``
        and ``g`` diverge at ``T``, give them in closed form. The probability-flow drift is
        ``alpha' x0 + sigma' eps`` (:mod:`sde_gen.pf_ode`).
        """
        alpha_t, sigma_t = self.marginal_coeffs(t)
        f, g = self.drift_coeff(t), self.diffusion(t)
        return f * alpha_t, (g**2 + 2 * f * sigma_t**2) / (2 * sigma_t)

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """Half log signal-to-noise ratio ``lambda_t = log(alpha_t / sigma_t)``. [Lu22] Sec. 3.1."""
        alpha_t, sigma_t = self.marginal_coeffs(t)
        return torch.log(alpha_t) - torch.log(sigma_t)

    @abstractmethod
    def t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`log_snr` (exact for every SDE here)."""

    # -- prior ------------------------------------------------------------------------------------
    def prior_sampling(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        generator: Generator = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw ``x_T ~ N(0, prior_std^2 I)``; ``generator`` as in :func:`sde_gen.noise.randn`
        (an :class:`~sde_gen.noise.IndexedGenerator` gives each example its own stream)."""
        z = randn(tuple(shape), generator, device=device, dtype=dtype)
        return self.prior_std * z

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of the prior in nats, per example. Shapes: ``(B, *D) -> (B,)``."""
        d = z[0].numel()
        s2 = self.prior_std**2
        return -0.5 * d * math.log(2 * math.pi * s2) - sum_flat(z**2) / (2 * s2)

    # -- discretization ---------------------------------------------------------------------------
    def index_to_time(self, i: torch.Tensor) -> torch.Tensor:
        """Continuous time of discrete step index ``i`` in ``0..N-1`` (0-based). See subclasses."""
        return (i.to(torch.float64) + 1) * (self.T / self.N)

    def time_to_index(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`index_to_time`, rounded to the nearest step and clamped to
        ``[0, N)``."""
        i = torch.round(t.to(torch.float64) * (self.N / self.T)) - 1
        return i.clamp(0, self.N - 1).long()

    def check_discrete_chain(self) -> None:
        """Raise :class:`UserInputError` if the discrete chain is unusable (VP's linear chain with
        ``N <= beta_max``); a no-op here. Every use of the chain (:meth:`discrete_coeffs`,
        :meth:`discretize`) calls it first; it is pure Python (no device sync)."""

    def discrete_coeffs(self, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, sigma)`` of the discrete chain at 0-based step ``i``; float64."""
        self.check_discrete_chain()
        return self.marginal_coeffs(self.index_to_time(i))

    def discretize(
        self, x: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step ``x_{i+1} = x_i + f_i + G_i z_i`` of the discretized SDE.

        The default is Euler-Maruyama with ``dt = T/N``; VP and VE override it with the DDPM and
        SMLD chains. Refs: [Song21] Eq. (45) and Appendix E.
        """
        check_time(x, t)
        self.check_discrete_chain()
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE ([Song21] Eq. 6) or probability-flow ODE ([Song21] Eq. 13)."""
        return ReverseSDE(self, score_fn, probability_flow=probability_flow)


class ReverseSDE:
    """Reverse-time SDE of a forward :class:`SDE` given a score function ``score_fn(x, t)``.

    ``drift = f - g^2 score`` and ``diffusion = g`` ([Song21] Eq. 6); with ``probability_flow``
    the deterministic ODE ``drift = f - 1/2 g^2 score``, ``diffusion = 0`` ([Song21] Eq. 13). The
    drift is the ``dx/dt`` of the process run backwards in t (integrate from T down to 0).
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, *, probability_flow: bool = False) -> None:
        self.forward, self.score_fn, self.probability_flow = forward, score_fn, probability_flow
        self.N = forward.N

    @property
    def T(self) -> float:
        return self.forward.T

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        drift, diffusion = self.forward.sde(x, t)
        return self._combine(x, t, drift, diffusion)

    def discretize(
        self, x: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse of the forward chain: ``f - G^2 s`` and ``G`` ([Song21] Eq. 46, reverse
        diffusion)."""
        f, G = self.forward.discretize(x, t)
        return self._combine(x, t, f, G)

    def _combine(
        self, x: torch.Tensor, t: torch.Tensor, f: torch.Tensor, g: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weight = 0.5 if self.probability_flow else 1.0
        g2 = append_dims(g**2, x.ndim)
        drift = f - weight * g2 * self.score_fn(x, t)
        return drift, torch.zeros_like(g) if self.probability_flow else g


