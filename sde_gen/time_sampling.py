"""Training-time distributions for denoising score matching, with their importance weights.

The DSM objective is an integral over ``t in [t_eps, T]`` of ``w(t) L(t)``, estimated by drawing
``t`` from a proposal ``p(t)``. A sampler returns ``(t, r)`` with ``r`` the factor that keeps the
estimate of the *uniform-time* objective ``E_{U(t_eps, T)}[w(t) L(t)]`` unbiased:

- ``uniform``: ``t ~ U(t_eps, T)``, ``r = 1``;
- ``importance``: ``p(t)`` proportional to the likelihood weighting ``g(t)^2 / sigma_t^2``
  ([Song21mle] Sec. 5; [Huang21] Sec. 5), ``r = 1 / ((T - t_eps) p(t))``;
- ``lognormal``: EDM's ``ln(sigma_t / alpha_t) ~ N(P_mean, P_std^2)`` ([Karras22] Table 1),
  truncated to ``[t_eps, T]``. EDM does not reweight: the density is part of its weighting, so
  ``r = 1`` and the objective changes (documented, not an estimator of the uniform one);
- ``logit_normal``: SD3's ``t = T sigmoid(m + s n)``, ``n ~ N(0, 1)`` ([Esser24] Sec. 3.1),
  truncated to ``[t_eps, T]``; like ``lognormal``, ``r = 1``.

**Time shift** (``shift``, uniform and logit-normal only): ``t/T -> shift (t/T) / (1 + (shift - 1)
t/T)`` ([Esser24] Sec. 5.3.2), applied to the draws and to the density by the change of
variables, the base density truncated so that the shifted times stay in ``[t_eps, T]``. Since
``logit(shift x / (1 + (shift - 1) x)) = logit(x) + ln(shift)``, a shifted logit-normal is the
logit-normal with ``m + ln(shift)``: that is how it is drawn.

**Paths with ``alpha_T = 0``** (flow, trig). The log-SNR is ``-inf`` at ``T`` but finite below,
so ``lognormal`` is exact there (``sigma/alpha`` is finite on ``[t_eps, T)``; ``T`` itself has
density 0). ``importance`` is refused: its density ``g^2/sigma^2`` (``2/(t(1 - t))`` on flow) is
not integrable at ``T``, so there is no proposal to normalize, and a cut-off ``T - delta`` would
make the "unbiased" factor depend on an arbitrary ``delta``.

**Why the importance density is uniform in log-SNR.** For every SDE here (affine drift
``f(t) x``), the kernel variance obeys ``d sigma_t^2 / dt = 2 f sigma_t^2 + g^2`` and
``d log alpha_t / dt = f``, so ``d log SNR / dt = -g(t)^2 / sigma_t^2`` with
``SNR = alpha_t^2 / sigma_t^2`` ([Kingma21] Eq. 14 in continuous time). The likelihood weighting
is therefore ``-2 d lambda / dt`` (``lambda = log(alpha/sigma)``, :meth:`~sde_gen.sde.SDE.log_snr`)
and ``p(t) ∝ g^2/sigma^2`` is ``lambda ~ U(lambda(T), lambda(t_eps))`` mapped through
:meth:`~sde_gen.sde.SDE.t_from_log_snr`: exact for VP, sub-VP and VE, no quadrature.

Refs: [Song21mle] Eq. (8)-(9) and Sec. 5; [Kingma21] Sec. 3-4; [Karras22] Table 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import UserInputError
from .sde import SDE

TIME_SAMPLINGS = ("uniform", "importance", "lognormal", "logit_normal")
#: The samplers a time shift applies to.
SHIFTABLE = ("uniform", "logit_normal")


def _as(x: float, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


def _lambda_range(sde: SDE, t_eps: float) -> tuple[float, float]:
    """``(lambda(T), lambda(t_eps))``, float64 scalars."""
    ends = torch.tensor([sde.T, t_eps], dtype=torch.float64)
    lo, hi = sde.log_snr(ends).tolist()
    return lo, hi


@dataclass(frozen=True)
class TimeSampler:
    """Draws training times ``t in [t_eps, T]`` and their importance factors.

    Args:
        name: one of :data:`TIME_SAMPLINGS`.
        p_mean, p_std: EDM's log-normal parameters of ``ln(sigma_t / alpha_t)``.
        logit_mean, logit_std: SD3's logit-normal ``m`` and ``s`` of ``logit(t/T)``.
        shift: SD3's time shift (``uniform`` and ``logit_normal``; 1: none).
    """

    name: str = "uniform"
    p_mean: float = -1.2
    p_std: float = 1.2
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in TIME_SAMPLINGS:
            raise UserInputError(f"unknown time sampling {self.name!r}; choose one of "
                             f"{', '.join(TIME_SAMPLINGS)}")
        for key in ("p_std", "logit_std", "shift"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise UserInputError(f"{key} must be positive and finite, got {value}")
        if self.shift != 1 and self.name not in SHIFTABLE:
            raise UserInputError(f"a time shift applies to {' and '.join(SHIFTABLE)} time "
                                 f"sampling, not {self.name!r}")

    def check_sde(self, sde: SDE) -> None:
        """Refuse ``importance`` on a path with ``alpha_T = 0`` (module docstring)."""
        if self.name == "importance" and sde.pure_noise_at_T:
            raise UserInputError("importance time sampling (density g^2/sigma^2, uniform in "
                                 "log-SNR) is not normalizable on a path with alpha_T = 0 "
                                 "(2/(t(1 - t)) on flow): use uniform, lognormal or logit_normal")

    def sample(
        self,
        sde: SDE,
        batch: int,
        *,
        t_eps: float = 1e-5,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, r)``, each ``(B,)``: times and the factor ``r`` on the per-example loss."""
        if not 0 <= t_eps < sde.T:
            raise UserInputError(f"need 0 <= t_eps < T, got t_eps={t_eps}, T={sde.T}")
        self.check_sde(sde)
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        if self.name == "uniform" and self.shift == 1:
            t = t_eps + (sde.T - t_eps) * u
        elif self.name == "uniform":  # x = t/T: uniform on [h^-1(x_eps), 1], then shifted
            lo = _unshift(t_eps / sde.T, self.shift)
            t = sde.T * _shift(lo + (1 - lo) * u, self.shift)
        elif self.name == "logit_normal":  # [Esser24] Sec. 3.1, by the inverse upper-tail CDF
            mu, ell_eps = self._logit_mean, _logit(t_eps / sde.T)
            upper = torch.special.ndtr(_as((mu - ell_eps) / self.logit_std, u))  # P(ell > ell_eps)
            ell = mu - self.logit_std * torch.special.ndtri(upper * (1 - u))
            t = sde.T * torch.sigmoid(ell)
        elif self.name == "importance":
            lo, hi = _lambda_range(sde, t_eps)
            t = sde.t_from_log_snr(lo + (hi - lo) * u)
        else:
            # Truncated normal in ln(sigma/alpha) = -lambda by its inverse CDF.
            lo, hi = _lambda_range(sde, t_eps)
            a = torch.special.ndtr(_as((-hi - self.p_mean) / self.p_std, u))
            b = torch.special.ndtr(_as((-lo - self.p_mean) / self.p_std, u))
            log_sigma = self.p_mean + self.p_std * torch.special.ndtri(a + (b - a) * u)
            t = sde.t_from_log_snr(-log_sigma)
        t = t.clamp(t_eps, sde.T)  # round-off of the inverse maps only
        return t.to(dtype), self.factor(sde, t, t_eps=t_eps).to(dtype)

    def density(self, sde: SDE, t: torch.Tensor, *, t_eps: float = 1e-5) -> torch.Tensor:
        """The proposal density ``p(t)`` on ``[t_eps, T]`` (integrates to one). Shapes: ``(B,)``."""
        t = t.to(torch.float64)
        self.check_sde(sde)
        if self.name == "uniform" and self.shift == 1:
            return torch.full_like(t, 1.0 / (sde.T - t_eps))
        x = t / sde.T
        if self.name == "uniform":  # p(x) = h^-1'(x) / (1 - h^-1(x_eps))
            s = self.shift
            lo = _unshift(t_eps / sde.T, s)
            return s / (s - (s - 1) * x) ** 2 / ((1 - lo) * sde.T)
        if self.name == "logit_normal":  # normal density of logit(x) times d logit(x)/dt
            mu, ell_eps = self._logit_mean, _logit(t_eps / sde.T)
            mass = torch.special.ndtr(_as((mu - ell_eps) / self.logit_std, t))
            inside = (x > 0) & (x < 1)  # the density vanishes at x = 0 and 1 (its limits)
            xc = torch.where(inside, x, torch.full_like(x, 0.5))
            z = (torch.log(xc) - torch.log1p(-xc) - mu) / self.logit_std
            pdf = torch.exp(-0.5 * z**2) / (self.logit_std * math.sqrt(2 * math.pi))
            return torch.where(inside, pdf / (mass * xc * (1 - xc) * sde.T), torch.zeros_like(x))
        lo, hi = _lambda_range(sde, t_eps)
        dlam_dt = _dlambda_dt(sde, t)  # negative: lambda falls with t
        if self.name == "importance":
            return -dlam_dt / (hi - lo)
        # lognormal: the normal density of s = -lambda, times |ds/dt|, renormalized on [lo, hi].
        z = (-sde.log_snr(t) - self.p_mean) / self.p_std
        mass = (torch.special.ndtr(_as((-lo - self.p_mean) / self.p_std, t))
                - torch.special.ndtr(_as((-hi - self.p_mean) / self.p_std, t)))
        pdf = torch.exp(-0.5 * z**2) / (self.p_std * math.sqrt(2 * math.pi))
        # At T of a flow path sigma/alpha = inf: the density's limit there is 0 (not 0 * inf).
        return torch.where(torch.isinf(z), torch.zeros_like(t), pdf * (-dlam_dt) / mass)

    @property
    def _logit_mean(self) -> float:
        """``m + ln(shift)``: the shifted logit-normal's mean (module docstring)."""
        return self.logit_mean + math.log(self.shift)

    def factor(self, sde: SDE, t: torch.Tensor, *, t_eps: float = 1e-5) -> torch.Tensor:
        """``r(t)``: ``1 / ((T - t_eps) p(t))`` for ``importance``, else 1 (``lognormal``,
        ``logit_normal`` and a shift change the objective, as in EDM and SD3)."""
        if self.name != "importance":
            return torch.ones_like(t)
        return 1.0 / ((sde.T - t_eps) * self.density(sde, t, t_eps=t_eps))


def _shift(x: torch.Tensor | float, s: float):
    """SD3's shift ``s x / (1 + (s - 1) x)`` of ``x = t/T``. [Esser24] Sec. 5.3.2."""
    return s * x / (1 + (s - 1) * x)


def _unshift(x: torch.Tensor | float, s: float):
    """Inverse of :func:`_shift`: the shift by ``1/s``."""
    return x / (s - (s - 1) * x)


def _logit(x: float) -> float:
    """``log(x / (1 - x))`` for ``x in [0, 1)`` (``-inf`` at 0)."""
    return -math.inf if x == 0 else math.log(x) - math.log1p(-x)


def _dlambda_dt(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """``d lambda / dt = -g^2 / (2 sigma_t^2)`` (module docstring). Shapes: ``(B,)``."""
    g = sde.diffusion(t)
    sigma_t = sde.marginal_coeffs(t)[1]
    return -0.5 * (g / sigma_t) ** 2
