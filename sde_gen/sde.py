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
from typing import Callable

import torch

from .errors import UserInputError
from .flow_paths import FlowSDE, TrigFlowSDE
from .schedules import BetaSchedule, CosineBeta, LinearBeta, TableBeta, check_finite
from .sde_base import SDE, ReverseSDE, ScoreFn, check_time
from .tensor_utils import append_dims

__all__ = ["SDE", "SDES", "FlowSDE", "ReverseSDE", "ScoreFn", "SubVPSDE", "TrigFlowSDE", "VESDE",
           "VPSDE", "vp_min_chain_steps"]


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
        check_time(x, t)
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
        check_time(x, t)
        self.check_discrete_chain()
        i = self.time_to_index(t).to(x.device)
        sigmas = self._table("_sigmas64", x.device, x.dtype)
        prev = torch.where(i == 0, torch.zeros_like(sigmas[i]), sigmas[(i - 1).clamp(min=0)])
        return torch.zeros_like(x), torch.sqrt(sigmas[i] ** 2 - prev**2)


#: The SDEs by config name (``sde.name``).
SDES: dict[str, type[SDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "flow": FlowSDE,
                              "trig": TrigFlowSDE}
