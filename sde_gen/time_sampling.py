"""Training-time distributions for denoising score matching, with their importance weights.

The DSM objective is an integral over ``t in [t_eps, T]`` of ``w(t) L(t)``, estimated by drawing
``t`` from a proposal ``p(t)``. A sampler returns ``(t, r)`` with ``r`` the factor that keeps the
estimate of the *uniform-time* objective ``E_{U(t_eps, T)}[w(t) L(t)]`` unbiased:

- ``uniform``: ``t ~ U(t_eps, T)``, ``r = 1``;
- ``importance``: ``p(t)`` proportional to the likelihood weighting ``g(t)^2 / sigma_t^2``
  ([Song21mle] Sec. 5; [Huang21] Sec. 5), ``r = 1 / ((T - t_eps) p(t))``;
- ``lognormal``: EDM's ``ln(sigma_t / alpha_t) ~ N(P_mean, P_std^2)`` ([Karras22] Table 1),
  truncated to ``[t_eps, T]``. EDM does not reweight: the density is part of its weighting, so
  ``r = 1`` and the objective changes (documented, not an estimator of the uniform one).

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

TIME_SAMPLINGS = ("uniform", "importance", "lognormal")


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
        name: ``"uniform"``, ``"importance"`` or ``"lognormal"``.
        p_mean, p_std: EDM's log-normal parameters of ``ln(sigma_t / alpha_t)``.
    """

    name: str = "uniform"
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self) -> None:
        if self.name not in TIME_SAMPLINGS:
            raise UserInputError(f"unknown time sampling {self.name!r}; choose one of "
                             f"{', '.join(TIME_SAMPLINGS)}")
        if not self.p_std > 0:
            raise UserInputError(f"p_std must be positive, got {self.p_std}")

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
        u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
        if self.name == "uniform":
            t = t_eps + (sde.T - t_eps) * u
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
        if self.name == "uniform":
            return torch.full_like(t, 1.0 / (sde.T - t_eps))
        lo, hi = _lambda_range(sde, t_eps)
        dlam_dt = _dlambda_dt(sde, t)  # negative: lambda falls with t
        if self.name == "importance":
            return -dlam_dt / (hi - lo)
        # lognormal: the normal density of s = -lambda, times |ds/dt|, renormalized on [lo, hi].
        z = (-sde.log_snr(t) - self.p_mean) / self.p_std
        mass = (torch.special.ndtr(_as((-lo - self.p_mean) / self.p_std, t))
                - torch.special.ndtr(_as((-hi - self.p_mean) / self.p_std, t)))
        pdf = torch.exp(-0.5 * z**2) / (self.p_std * math.sqrt(2 * math.pi))
        return pdf * (-dlam_dt) / mass

    def factor(self, sde: SDE, t: torch.Tensor, *, t_eps: float = 1e-5) -> torch.Tensor:
        """``r(t)``: ``1 / ((T - t_eps) p(t))`` for ``importance``, else 1."""
        if self.name != "importance":
            return torch.ones_like(t)
        return 1.0 / ((sde.T - t_eps) * self.density(sde, t, t_eps=t_eps))


def _dlambda_dt(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """``d lambda / dt = -g^2 / (2 sigma_t^2)`` (module docstring). Shapes: ``(B,)``."""
    g = sde.diffusion(t)
    sigma_t = sde.marginal_coeffs(t)[1]
    return -0.5 * (g / sigma_t) ** 2
