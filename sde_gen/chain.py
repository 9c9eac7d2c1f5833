"""Gaussian coefficients on a time grid, and the discrete chain's step times.

Every SDE here has ``x_t = alpha_t x0 + sigma_t eps``; a grid ``t_0 > t_1 > ... > t_K`` is walked
through one table of ``(alpha, sigma)`` at its times (:class:`GridCoeffs`), from which the
log-SNR, EDM's noise level and the Gaussian posterior of every interval follow. Samplers, DDPM's
variational bound and the hybrid loss all read this one table; ``discrete=True`` takes the
discrete chain's coefficients (DDPM's ``sqrt(abar_i)``, SMLD's ``sigma_i``) at the nearest step.

Refs: [Ho20] Eq. (4), (6)-(7); [Nichol21] Sec. 4 (respaced chains); [Lu22] Sec. 3.1 (log-SNR);
[Karras22] Eq. (4) (noise level).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .errors import UserInputError
from .sde import SDE

__all__ = ["GridCoeffs", "Posterior", "chain_times", "check_t_min", "grid_coeffs",
           "posterior_coeffs", "snap_to_steps"]


class Posterior(NamedTuple):
    """Per-interval coefficients of ``q(x_s | x_t, x0)`` for a grid step ``t -> s``, each ``(K,)``.

    With ``a = alpha_t / alpha_s``: mean ``c_x x_t + c_x0 x0`` ([Ho20] Eq. 7), posterior variance
    ``var_tilde = v sigma_s^2 / sigma_t^2`` and forward transition variance
    ``v = sigma_t^2 - a^2 sigma_s^2`` (DDPM's ``beta_t`` on the N-step grid).
    """

    c_x: torch.Tensor
    c_x0: torch.Tensor
    var_tilde: torch.Tensor
    v: torch.Tensor


def posterior_coeffs(alpha: torch.Tensor, sigma: torch.Tensor) -> Posterior:
    """:class:`Posterior` of the K intervals of a grid whose ``(alpha, sigma)`` are ``(K + 1,)``.

    Refs: [Ho20] Eq. (6)-(7); [Nichol21] Sec. 4 (respaced grids).
    """
    a_t, a_s, s_t, s_s = alpha[:-1], alpha[1:], sigma[:-1], sigma[1:]
    a = a_t / a_s
    v = s_t**2 - a**2 * s_s**2
    return Posterior(a * s_s**2 / s_t**2, a_s * v / s_t**2, v * s_s**2 / s_t**2, v)


class GridCoeffs(NamedTuple):
    """The coefficient table of one grid: ``x_t = alpha x0 + sigma eps`` at every grid time.

    float64, ``(K + 1,)`` each, on the grid's device; it unpacks as ``alpha, sigma``. Solvers read
    every derived quantity (log-SNR, EDM's noise level, the posterior) from this one table.
    """

    alpha: torch.Tensor
    sigma: torch.Tensor

    @property
    def log_snr(self) -> torch.Tensor:
        """``lambda = log(alpha / sigma)`` per grid time ([Lu22] Sec. 3.1)."""
        return torch.log(self.alpha) - torch.log(self.sigma)

    @property
    def sigma_tilde(self) -> torch.Tensor:
        """``sigma / alpha``, EDM's noise level ``sigma(t)`` ([Karras22] Eq. 4; DEIS's ``rho``)
        per grid time."""
        return self.sigma / self.alpha

    def posterior(self) -> Posterior:
        """:func:`posterior_coeffs` of this grid's intervals."""
        return posterior_coeffs(self.alpha, self.sigma)


def grid_coeffs(sde: SDE, ts: torch.Tensor, *, discrete: bool = False) -> GridCoeffs:
    """The :class:`GridCoeffs` ``(alpha, sigma)`` at every grid time, float64, on ``ts``'s device.

    ``discrete=True`` takes the discrete chain's coefficients (DDPM's ``sqrt(abar_i)``) at the
    nearest step index.
    """
    t64 = ts.to(torch.float64)
    if not discrete:
        alpha, sigma = sde.marginal_coeffs(t64)
    else:
        alpha, sigma = sde.discrete_coeffs(sde.time_to_index(t64))
    return GridCoeffs(alpha.to(torch.float64), sigma.to(torch.float64))


def check_t_min(sde: SDE, t_min: object, *, what: str = "t_min (the end time)") -> float:
    """The smallest time of a solve, ``t_min``, as a float in ``(0, T)``: where sampling ends and
    the likelihood's ODE starts. Every solver's one check.

    At ``t = 0`` VP and sub-VP have ``sigma = 0`` (the score, Tweedie's step and the log-SNR are
    singular) and at ``t >= T`` there is nothing to integrate (the log-SNR and Karras grids then
    run outside the schedule).

    Raises:
        UserInputError: ``t_min`` is not a number in ``(0, T)``.
    """
    if isinstance(t_min, bool):
        raise UserInputError(f"{what} must be a number, got {t_min!r}")
    try:
        value = float(t_min)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise UserInputError(f"{what} must be a number, got {t_min!r}") from None
    if not 0 < value < sde.T:
        raise UserInputError(f"{what} must be in (0, T) = (0, {sde.T:g}), got {t_min!r}")
    return value


def chain_times(sde: SDE, t_min: float, *,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Every step time of the discrete chain from the step nearest ``t_min`` up to ``T``,
    decreasing.

    The default grid of solvers on the discrete chain, for any ``N``: for VP with N = 1000 and
    t_min = 1e-3 these are DDPM's 1000 steps (999 intervals); with t_min = 1e-2 its 991 steps from
    t = 0.01; with N = 100 its 100 steps (the lowest at t = 0.01, the one nearest 1e-3); for VE
    (levels at ``t = i / (N - 1)``) and t_min = 1e-3 the levels 1..N-1. The nearest step is the
    snapping rule of every discrete grid, so for VE's default t_min = 1e-5 the lowest level
    (``sigma_min``, at t = 0) is included, as in SMLD.
    """
    hi, lo = sde.time_to_index(torch.tensor([sde.T, t_min], dtype=torch.float64)).tolist()
    return sde.index_to_time(torch.arange(hi, lo - 1, -1)).to(device=device, dtype=torch.float64)


def collapses(snapped: torch.Tensor) -> bool:
    """Whether two neighbouring times of a snapped grid fell on the same chain step."""
    return bool((snapped[:-1] <= snapped[1:]).any())


def snap_to_steps(sde: SDE, ts: torch.Tensor) -> torch.Tensor:
    """Move grid times onto the discrete chain's step times; reject grids that collapse.

    Raises:
        UserInputError: two times snap to the same step (naming them and the chain's length).
    """
    snapped = sde.index_to_time(sde.time_to_index(ts)).to(ts.dtype)
    if collapses(snapped):
        k = int((snapped[:-1] <= snapped[1:]).nonzero()[0])
        raise UserInputError(
            f"{len(ts) - 1} intervals do not fit on the {sde.N}-step discrete chain: ts[{k}] = "
            f"{float(ts[k]):g} and ts[{k + 1}] = {float(ts[k + 1]):g} snap to the same step; "
            f"space the times at least one chain step apart or use discrete=False"
        )
    return snapped
