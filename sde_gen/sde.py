"""Forward SDEs ``dx = f(x, t) dt + g(t) dw`` with Gaussian perturbation kernels, and their
reversals.

Every SDE here has an affine drift, so ``x_t | x0 ~ N(alpha_t x0, sigma_t^2 I)``;
``marginal_coeffs`` returns ``(alpha_t, sigma_t)`` and the rest of the package is written in those
two numbers.

Shapes: ``x`` is ``(B, *D)`` (``(B, D)`` or ``(B, C, H, W)``); ``t`` is a float tensor ``(B,)`` of
continuous time in ``[0, T]``; per-example scalars (``diffusion``, ``alpha_t``, ``sigma_t``) are
``(B,)``.

Refs: [Song21] Sec. 3, Eqs. (6), (9), (11), (13), (34); [Ho20] Eq. (4); [Song21] Appendix B-C.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable

import torch

from .errors import UserInputError
from .noise import Generator, randn
from .schedules import BetaSchedule, CosineBeta, LinearBeta, TableBeta, check_finite
from .tensor_utils import append_dims, sum_flat

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_time(x: torch.Tensor, t: torch.Tensor) -> None:
    if (not torch.is_tensor(t) or not t.is_floating_point() or t.ndim != 1
            or t.shape[0] != x.shape[0]):
        shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
        raise UserInputError(f"t must be a float tensor of shape ({x.shape[0]},), got {shape}")


def _check_time_range(t: torch.Tensor, T: float) -> None:
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


def vp_min_chain_steps(beta_max: float = 20.0, schedule: str = "linear") -> int:
    """The smallest ``N`` whose VP DDPM chain is valid (every ``beta_i < 1``, so ``abar_i > 0``).

    The linear chain's largest step is ``beta_N = beta_max / N`` ([Ho20] Sec. 4), so ``N`` must
    exceed ``beta_max`` (21 at the default 20); the cosine chain clips at 0.999, so any ``N`` works.
    Pure Python, so :mod:`sde_gen.app.config` checks a config with it before building anything.
    """
    if schedule != "linear":
        return 1
    n = math.floor(beta_max) + 1
    return n if beta_max / n < 1 else n + 1  # beta_max a rounding below an integer


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

    # -- the SDE itself ---------------------------------------------------------------------------
    @abstractmethod
    def drift_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``f(t)`` of the linear drift ``f(x, t) = f(t) x``, ``(B,)``."""

    @abstractmethod
    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """Diffusion coefficient ``g(t)``, ``(B,)``. [Song21] Eq. (5)."""

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift ``f(x, t)`` (shape of ``x``) and diffusion ``g(t)`` ``(B,)``. [Song21] Eq. (5)."""
        _check_time(x, t)
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
        _check_time(x, t)
        _check_time_range(t, self.T)
        alpha_t, sigma_t = self.marginal_coeffs(t)
        return append_dims(alpha_t, x.ndim) * x, sigma_t

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
        _check_time(x, t)
        self.check_discrete_chain()
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE ([Song21] Eq. 6) or probability-flow ODE ([Song21] Eq. 13)."""
        return ReverseSDE(self, score_fn, probability_flow=probability_flow)


class VPSDE(SDE):
    """Variance-preserving SDE ``dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw``: DDPM in continuous
    time.

    Discrete chain: DDPM's ``beta_i`` (``linspace(beta_min/N, beta_max/N, N)`` for the linear
    schedule, which is ``linspace(1e-4, 0.02, 1000)`` at the defaults). Step ``i`` (0-based, DDPM's
    ``i + 1``) sits at continuous time ``t_i = (i + 1) T / N`` (:meth:`index_to_time`), where the
    discrete ``abar_i`` matches ``exp(-int_0^t beta)`` to within a few 1e-3.

    Args:
        beta_min, beta_max: linear schedule end points (0.1, 20 reproduce DDPM).
        N: number of discrete steps.
        schedule: ``"linear"``, ``"cosine"`` ([Nichol21]) or ``"table"``: the discrete chain
            is ``betas`` exactly (float64; ``N = len(betas)``; ``beta_min``, ``beta_max`` are
            ignored) and the continuous marginal interpolates ``-log abar`` by a monotone
            cubic through the chain's step times (:class:`~sde_gen.schedules.TableBeta`), so it
            equals the chain at every ``t_i``. :func:`sde_gen.interop.load_diffusers` builds
            these.
        betas: the ``(N,)`` table of ``schedule="table"`` (each in ``(0, 1)``).
        T: end time; defaults to 1 for linear and table, 0.9946 for cosine (where ``beta`` stays
            finite).

    Any ``N`` gives a valid continuous SDE, but the linear chain needs ``N > beta_max``
    (:attr:`min_chain_steps`, so that every ``beta_i < 1``): on a shorter chain its uses
    (:meth:`discrete_coeffs`, :meth:`discretize`, the ``discrete_betas`` / ``alphas`` /
    ``alphas_cumprod`` tables) raise.

    Refs: [Song21] Eq. (11), (29); [Ho20] Eq. (4), Sec. 4.
    """

    few_step_spacing = "quadratic"

    def __init__(
        self,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        N: int = 1000,
        *,
        schedule: str = "linear",
        betas: torch.Tensor | None = None,
        T: float | None = None,
    ) -> None:
        schedules: dict[str, Callable[[], BetaSchedule]] = {
            "linear": lambda: LinearBeta(beta_min, beta_max),
            "cosine": lambda: CosineBeta(),
            "table": lambda: TableBeta(betas, self.T),
        }
        if schedule not in schedules:
            raise UserInputError(
                f"unknown VP schedule {schedule!r}; choose one of {sorted(schedules)}"
            )
        if (betas is not None) != (schedule == "table"):
            raise UserInputError("pass betas exactly when schedule='table'")
        if betas is not None:
            betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
            N = betas.numel()
        beta_min, beta_max = check_finite("beta_min", beta_min), check_finite("beta_max", beta_max)
        super().__init__(N, T if T is not None else (0.9946 if schedule == "cosine" else 1.0))
        self.beta_min, self.beta_max, self.schedule_name = beta_min, beta_max, schedule
        self.schedule = schedules[schedule]()
        betas = self._betas64 = self._discrete_betas()
        self._alphas_cumprod64 = torch.cumprod(1.0 - betas, 0)
        self._betas32, self._alphas32 = betas.float(), (1.0 - betas).float()
        self._alphas_cumprod32 = self._alphas_cumprod64.float()

    @property
    def min_chain_steps(self) -> int:
        """The smallest ``N`` with a valid DDPM chain here (:func:`vp_min_chain_steps`)."""
        return vp_min_chain_steps(self.beta_max, self.schedule_name)

    def check_discrete_chain(self) -> None:
        """Raise :class:`UserInputError` unless every DDPM ``beta_i < 1``: with ``N <= beta_max``
        the linear chain's ``abar_i`` reaches 0 or below and training, ancestral sampling and the
        bound turn NaN. Pure Python (no device sync). Refs: [Ho20] Sec. 4."""
        if self.N < self.min_chain_steps:
            raise UserInputError(
                f"VP's {self.N}-step DDPM chain has beta_i up to {self.beta_max / self.N:.3g} >= 1 "
                f"(beta_max/N); use N >= {self.min_chain_steps}")

    @property
    def discrete_betas(self) -> torch.Tensor:
        """DDPM's ``beta_i``, ``(N,)`` float32."""
        self.check_discrete_chain()
        return self._betas32

    @property
    def alphas(self) -> torch.Tensor:
        """DDPM's ``alpha_i = 1 - beta_i``, ``(N,)`` float32."""
        self.check_discrete_chain()
        return self._alphas32

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """DDPM's ``abar_i = prod_{j <= i} alpha_j``, ``(N,)`` float32."""
        self.check_discrete_chain()
        return self._alphas_cumprod32

    def _discrete_betas(self) -> torch.Tensor:
        if self.schedule_name == "table":  # the given chain, exactly
            return self.schedule.betas.clone()
        if self.schedule_name == "linear":  # [Ho20] Sec. 4
            return torch.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N,
                                  dtype=torch.float64)
        # [Nichol21] Eq. (17): beta_i = 1 - abar(t_i) / abar(t_{i-1}), clipped at 0.999.
        t = self.index_to_time(torch.arange(-1, self.N))
        log_abar = -self.schedule.integral(t)
        return (-torch.expm1(log_abar[1:] - log_abar[:-1])).clamp(max=0.999)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.schedule.beta(t)

    def drift_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * self.schedule.beta(t)  # Eq. (11) [Song21]

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.schedule.beta(t))

    def marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.schedule.integral(t)  # Eq. (29) [Song21]
        return torch.exp(-0.5 * b), torch.sqrt(-torch.expm1(-b))

    def discrete_coeffs(self, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sqrt(abar_i), sqrt(1 - abar_i))`` at 0-based step ``i``; float64. [Ho20] Eq. (4)."""
        self.check_discrete_chain()
        abar = self._table("_alphas_cumprod64", i.device)[i]
        return torch.sqrt(abar), torch.sqrt(1.0 - abar)

    def t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`log_snr`: ``e^{-B(t)} = sigmoid(2 lambda)``. [Lu22] Appendix."""
        return self.schedule.inverse_integral(torch.nn.functional.softplus(-2 * lam))

    def discretize(
        self, x: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DDPM's chain ``x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z``. [Ho20] Eq. (2)."""
        _check_time(x, t)
        self.check_discrete_chain()
        beta = self._table("_betas64", x.device, x.dtype)[self.time_to_index(t).to(x.device)]
        f = append_dims(torch.sqrt(1.0 - beta), x.ndim) * x - x
        return f, torch.sqrt(beta)


class SubVPSDE(SDE):
    """Sub-VP SDE ``dx = -1/2 beta x dt + sqrt(beta (1 - e^{-2 int beta})) dw``.

    Its marginal std ``1 - e^{-int beta}`` is below the VP one at every t. The discrete chain is
    Euler-Maruyama; discrete coefficients are the continuous ones at ``t_i = (i + 1) T / N``.

    Refs: [Song21] Eq. (17), (29).
    """

    few_step_spacing = "quadratic"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000) -> None:
        super().__init__(N, 1.0)
        self.schedule = LinearBeta(beta_min, beta_max)  # checks both: finite, 0 < min < max
        self.beta_min, self.beta_max = self.schedule.beta_min, self.schedule.beta_max

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.schedule.beta(t)

    def drift_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * self.schedule.beta(t)  # Eq. (17) [Song21]

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        discount = -torch.expm1(-2 * self.schedule.integral(t))
        return torch.sqrt(self.schedule.beta(t) * discount)

    def marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.schedule.integral(t)  # Eq. (29) [Song21]
        return torch.exp(-0.5 * b), -torch.expm1(-b)

    def t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`log_snr`: with ``a = e^{-B/2}``, ``a / (1 - a^2) = e^lambda``."""
        # a^2 e^l + a - e^l = 0  ->  a = 2 / (e^{-l} + sqrt(e^{-2l} + 4)), stable for any lambda.
        a = 2.0 / (torch.exp(-lam) + torch.sqrt(torch.exp(-2 * lam) + 4.0))
        return self.schedule.inverse_integral(-2 * torch.log(a))


class VESDE(SDE):
    """Variance-exploding SDE ``dx = sqrt(d[sigma^2(t)]/dt) dw``,
    ``sigma(t) = s_min (s_max/s_min)^t``.

    As in score_sde, ``marginal_coeffs`` gives ``sigma_t = sigma(t)``: the process starts from data
    already perturbed with ``N(0, sigma_min^2 I)`` (so ``q_0 = p_data * N(0, sigma_min^2)``), and
    the SDE carries it exactly to ``N(x0, sigma(t)^2 I)``. The discrete chain is SMLD's geometric
    noise ladder, step ``i`` at ``t_i = i T / (N - 1)`` so that ``sigma(t_i)`` equals it exactly.

    Refs: [Song21] Eq. (9), (30); [Song19] Sec. 4.2.
    """

    default_t_min = 1e-5
    chain = "smld"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000) -> None:
        sigma_min = check_finite("sigma_min", sigma_min)
        sigma_max = check_finite("sigma_max", sigma_max)
        if not 0 < sigma_min < sigma_max:
            raise UserInputError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        super().__init__(N, 1.0)
        if self.N < 2:
            raise UserInputError(f"VESDE needs N >= 2, got {N!r}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.prior_std = self.sigma_max
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self._sigmas64 = torch.exp(
            torch.linspace(math.log(sigma_min), math.log(sigma_max), self.N, dtype=torch.float64)
        )
        self.discrete_sigmas = self._sigmas64.float()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def drift_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(t)

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma(t) * math.sqrt(2 * self._log_ratio)  # Eq. (30) [Song21]

    def marginal_coeffs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones_like(t), self.sigma(t)

    def t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`log_snr`: ``sigma(t) = e^{-lambda}``."""
        return (-lam - math.log(self.sigma_min)) / self._log_ratio

    def index_to_time(self, i: torch.Tensor) -> torch.Tensor:
        """SMLD level ``i`` (0 = ``sigma_min``) sits at ``t = i T / (N - 1)``."""
        return i.to(torch.float64) * (self.T / (self.N - 1))

    def time_to_index(self, t: torch.Tensor) -> torch.Tensor:
        i = torch.round(t.to(torch.float64) * ((self.N - 1) / self.T))
        return i.clamp(0, self.N - 1).long()

    def discretize(
        self, x: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SMLD's chain ``x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z``. [Song21] Eq. (45)."""
        _check_time(x, t)
        self.check_discrete_chain()
        i = self.time_to_index(t).to(x.device)
        sigmas = self._table("_sigmas64", x.device, x.dtype)
        prev = torch.where(i == 0, torch.zeros_like(sigmas[i]), sigmas[(i - 1).clamp(min=0)])
        return torch.zeros_like(x), torch.sqrt(sigmas[i] ** 2 - prev**2)


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


#: The SDEs by config name (``sde.name``).
SDES: dict[str, type[SDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
