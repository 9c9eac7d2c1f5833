"""Time grids for samplers and the per-grid Gaussian coefficients they walk.

Every solver receives an explicit decreasing grid ``ts`` (``ts[0]`` = start, ``ts[-1]`` = end time
``eps``); this module is the only place that chooses one, checks one (:func:`check_end_time`,
:func:`check_grid`) and tabulates its coefficients (:func:`grid_coeffs`, the one table per grid
that every solver walks, with the posterior of its intervals).

Refs: [Song21ddim] Appendix D.2 (quadratic); [Lu22] Sec. 3.4 (uniform log-SNR);
[Karras22] Eq. (5) (rho = 7 schedule); [Ho20] Eq. (7).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import UserInputError
from ..schedules import time_grid
from ..sde import SDE

SPACINGS = ("uniform", "quadratic", "logsnr", "karras")


def default_eps(sde: SDE) -> float:
    """End time: 1e-3 for VP/sub-VP (DDPM's first step, score_sde's default), 1e-5 for VE."""
    return sde.default_eps


def check_spacing(spacing: str) -> str:
    """``spacing`` if it is one of :data:`SPACINGS`, else :class:`UserInputError`."""
    if spacing not in SPACINGS:
        raise UserInputError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    return spacing


def make_grid(
    sde: SDE,
    steps: int,
    *,
    eps: float,
    spacing: str = "uniform",
    T: float | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Decreasing grid of ``steps + 1`` times from ``T`` (default ``sde.T``) to ``eps``.

    ``uniform`` / ``quadratic`` are in ``t``; ``logsnr`` is uniform in ``lambda = log(alpha/sigma)``
    (DPM-Solver's choice); ``karras`` spaces ``sigma/alpha`` with ``rho = 7`` (EDM's choice).
    """
    if int(steps) < 1:
        raise UserInputError(f"steps must be a positive integer, got {steps}")
    check_spacing(spacing)
    T = sde.T if T is None else T
    if spacing in ("uniform", "quadratic"):
        return time_grid(steps, T=T, eps=eps, spacing=spacing, dtype=dtype, device=device)
    ends = torch.tensor([T, eps], dtype=torch.float64)
    lam = sde.log_snr(ends)
    if not (0 <= eps < T and torch.isfinite(lam).all()):  # VP, sub-VP: lambda = inf at t = 0
        raise UserInputError(f"a {spacing} grid needs 0 <= eps < T and a finite log-SNR at eps, "
                             f"got eps={eps}, T={T}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if spacing == "logsnr":
        lams = lam[0] + (lam[1] - lam[0]) * u
    else:  # Karras rho = 7 in rho-space sigma/alpha = exp(-lambda)
        rho = 7.0
        s_max, s_min = torch.exp(-lam[0]), torch.exp(-lam[1])
        lams = -rho * torch.log(s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho)))
    ts = sde.t_from_log_snr(lams)
    ts[0], ts[-1] = T, eps  # exact end points (the inverse is accurate to rounding)
    return ts.to(dtype=dtype, device=device)


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
    def rho(self) -> torch.Tensor:
        """``sigma / alpha``, EDM's noise level ``sigma~(t)`` per grid time ([Karras22] Eq. 4)."""
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


def check_end_time(sde: SDE, eps: float, *, what: str = "eps (the end time)") -> float:
    """The end time ``eps`` as a float, which must lie in ``(0, T)``; every solver's one check.

    At ``t = 0`` VP and sub-VP have ``sigma = 0`` (the score, Tweedie's step and the log-SNR are
    singular) and at ``t >= T`` there is nothing to integrate (the log-SNR and Karras grids then
    run outside the schedule).

    Raises:
        UserInputError: ``eps`` is not a number in ``(0, T)``.
    """
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise UserInputError(f"{what} must be a number, got {eps!r}") from None
    if not 0 < value < sde.T:
        raise UserInputError(f"{what} must be in (0, T) = (0, {sde.T:g}), got {eps!r}")
    return value


def check_grid(sde: SDE, ts: torch.Tensor, *, discrete: bool = False) -> torch.Tensor:
    """An explicit grid, checked, as float64: one interval at least, finite, strictly decreasing,
    inside ``[0, T]``, and ending above 0 unless it lies on the discrete chain (VE's lowest level
    sits at ``t = 0``).

    Raises:
        UserInputError: naming the first problem found.
    """
    try:
        ts = torch.as_tensor(ts, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise UserInputError(f"ts must be a 1-D tensor of times, got {type(ts).__name__}") from None
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise UserInputError(f"ts must be a 1-D grid of at least 2 times (one interval), "
                             f"got shape {tuple(ts.shape)}")
    finite = torch.isfinite(ts)
    if not finite.all():
        k = int((~finite).nonzero()[0])
        raise UserInputError(f"ts has a non-finite time (NaN or inf): ts[{k}] = {float(ts[k])}")
    rising = ts[1:] >= ts[:-1]
    if rising.any():
        k = int(rising.nonzero()[0])
        raise UserInputError(f"ts must be strictly decreasing (start time first, end time last), "
                             f"got ts[{k}] = {float(ts[k]):g} then "
                             f"ts[{k + 1}] = {float(ts[k + 1]):g}")
    if ts[0] > sde.T or ts[-1] < 0:
        raise UserInputError(f"ts must lie in [0, T] = [0, {sde.T:g}], got times from "
                             f"{float(ts[-1]):g} to {float(ts[0]):g}")
    if not discrete and ts[-1] <= 0:
        raise UserInputError("the grid's end time ts[-1] must be > 0, as eps must (sigma_t and "
                             "the score are singular at t = 0 for VP and sub-VP)")
    return ts


def chain_times(sde: SDE, eps: float, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Every step time of the discrete chain from the step nearest ``eps`` up to ``T``, decreasing.

    The default grid of solvers on the discrete chain, for any ``N``: for VP with N = 1000 and
    eps = 1e-3 these are DDPM's 1000 steps (999 intervals); with eps = 1e-2 its 991 steps from
    t = 0.01; with N = 100 its 100 steps (the lowest at t = 0.01, the one nearest eps = 1e-3);
    for VE (levels at ``t = i / (N - 1)``) and eps = 1e-3 the levels 1..N-1. The nearest step is
    the snapping rule of every discrete grid, so for VE's default eps = 1e-5 the lowest level
    (``sigma_min``, at t = 0) is included, as in SMLD.
    """
    hi, lo = sde.time_to_index(torch.tensor([sde.T, eps], dtype=torch.float64)).tolist()
    return sde.index_to_time(torch.arange(hi, lo - 1, -1)).to(device=device, dtype=torch.float64)


def _collapses(snapped: torch.Tensor) -> bool:
    return bool((snapped[:-1] <= snapped[1:]).any())


def snap_to_steps(sde: SDE, ts: torch.Tensor) -> torch.Tensor:
    """Move grid times onto the discrete chain's step times; reject grids that collapse."""
    snapped = sde.index_to_time(sde.time_to_index(ts)).to(ts.dtype)
    if _collapses(snapped):
        k = int((snapped[:-1] <= snapped[1:]).nonzero()[0])
        raise UserInputError(
            f"{len(ts) - 1} intervals do not fit on the {sde.N}-step discrete chain: ts[{k}] = "
            f"{float(ts[k]):g} and ts[{k + 1}] = {float(ts[k + 1]):g} snap to the same step; space "
            f"the times at least one chain step apart or use discrete=False"
        )
    return snapped


def discrete_grid(
    sde: SDE,
    steps: int | None,
    *,
    eps: float,
    spacing: str = "uniform",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A decreasing grid on the discrete chain's step times from (near) ``eps`` to ``T``.

    ``steps=None``: every chain step, :func:`chain_times`. Otherwise :func:`make_grid` between
    the same end steps, snapped to the nearest steps (DDPM's and diffusers' respacing): with
    uniform spacing any ``steps`` up to the chain's count fits.

    Raises:
        UserInputError: ``steps`` intervals collapse on the chain; the message gives the most that
            fit between ``eps`` and ``T`` with this spacing.
    """
    check_spacing(spacing)
    chain = chain_times(sde, eps, device=device)
    most = len(chain) - 1
    if most < 1:
        raise UserInputError(f"the {sde.N}-step discrete chain has no step between eps={eps:g} and "
                             f"T={sde.T:g}; use a smaller eps or discrete=False")
    if steps is None:
        return chain

    t_low = float(chain[-1])  # the chain step nearest eps: the grid's end once snapped

    def snapped(k: int) -> torch.Tensor:
        ts = make_grid(sde, k, eps=t_low, spacing=spacing, device=device)
        return sde.index_to_time(sde.time_to_index(ts)).to(torch.float64)

    ts = snapped(steps)
    if _collapses(ts):
        fits = next((k for k in range(min(steps - 1, most), 0, -1)
                     if not _collapses(snapped(k))), 0)
        raise UserInputError(
            f"{steps} intervals do not fit on the {sde.N}-step discrete chain between "
            f"eps={eps:g} and T={sde.T:g} (it has {most} intervals there); with spacing "
            f"{spacing!r} use at most {fits} steps, or discrete=False"
        )
    return ts
