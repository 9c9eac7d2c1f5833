"""Time grids for samplers and the per-grid Gaussian coefficients they walk.

Every solver receives an explicit decreasing grid ``ts`` (``ts[0]`` = start, ``ts[-1]`` = end time
``eps``); this module is the only place that chooses one.

Refs: [Song21ddim] Appendix D.2 (quadratic); [Lu22] Sec. 3.4 (uniform log-SNR);
[Karras22] Eq. (5) (rho = 7 schedule).
"""

from __future__ import annotations

import torch

from ..schedules import time_grid
from ..sde import SDE, VESDE

SPACINGS = ("uniform", "quadratic", "logsnr", "karras")


def default_eps(sde: SDE) -> float:
    """End time: 1e-3 for VP/sub-VP (DDPM's first step, score_sde's default), 1e-5 for VE."""
    return 1e-5 if isinstance(sde, VESDE) else 1e-3


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
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    T = sde.T if T is None else T
    if spacing in ("uniform", "quadratic"):
        return time_grid(steps, T=T, eps=eps, spacing=spacing, dtype=dtype, device=device)
    ends = torch.tensor([T, eps], dtype=torch.float64)
    lam = sde.log_snr(ends)
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


def grid_coeffs(
    sde: SDE, ts: torch.Tensor, *, discrete: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha, sigma)`` at every grid time, float64, on ``ts``'s device.

    ``discrete=True`` takes the discrete chain's coefficients (DDPM's ``sqrt(abar_i)``) at the
    nearest step index.
    """
    t64 = ts.to(torch.float64)
    if not discrete:
        alpha, sigma = sde.marginal_coeffs(t64)
        return alpha.to(torch.float64), sigma.to(torch.float64)
    alpha, sigma = sde.discrete_coeffs(sde.time_to_index(t64))
    return alpha.to(torch.float64), sigma.to(torch.float64)


def snap_to_steps(sde: SDE, ts: torch.Tensor) -> torch.Tensor:
    """Move grid times onto the discrete chain's step times; reject grids that collapse."""
    snapped = sde.index_to_time(sde.time_to_index(ts)).to(ts.dtype)
    if (snapped[:-1] <= snapped[1:]).any():
        raise ValueError(
            f"{len(ts) - 1} intervals do not fit on the {sde.N}-step discrete chain; "
            f"use at most {sde.N - 1} steps or discrete=False"
        )
    return snapped
