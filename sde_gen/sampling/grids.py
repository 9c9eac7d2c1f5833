"""Time grids: the only place that chooses the times a solver walks, and checks given ones.

Every solver receives an explicit decreasing grid ``ts`` (``ts[0]`` = start, ``ts[-1]`` = the
smallest time ``t_min``). The coefficients a solver reads at those times are in
:mod:`sde_gen.chain`.

Refs: [Song21ddim] Appendix D.2 (quadratic); [Lu22] Sec. 3.4 (uniform log-SNR);
[Karras22] Eq. (5) (rho = 7 schedule).
"""

from __future__ import annotations

import torch

from ..chain import chain_times, collapses
from ..errors import UserInputError
from ..schedules import time_grid
from ..sde import SDE

__all__ = ["SPACINGS", "check_grid", "check_spacing", "discrete_grid", "make_grid"]

SPACINGS = ("uniform", "quadratic", "logsnr", "karras", "shifted")
#: Karras et al.'s exponent of the noise-level grid ([Karras22] Eq. 5).
KARRAS_RHO = 7.0


def check_spacing(spacing: object) -> str:
    """``spacing`` if it is one of :data:`SPACINGS`, else :class:`UserInputError`."""
    if spacing not in SPACINGS:
        raise UserInputError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    return spacing  # type: ignore[return-value]


def make_grid(
    sde: SDE,
    steps: int,
    *,
    t_min: float,
    spacing: str = "uniform",
    T: float | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Decreasing grid of ``steps + 1`` times from ``T`` (default ``sde.T``) to ``t_min``.

    ``uniform`` / ``quadratic`` are in ``t``; ``logsnr`` is uniform in
    ``lambda = log(alpha/sigma)`` (DPM-Solver's choice); ``karras`` spaces ``sigma/alpha`` with
    ``rho = 7`` (EDM's choice); ``shifted`` is uniform in ``t`` mapped by SD3's time shift
    ``u -> s u / (1 + (s - 1) u)`` on ``u = t / T`` with ``s = sde.grid_shift`` (denser near
    ``T`` for ``s > 1``; [Esser24] Sec. 5.3.2). On a path whose ``alpha_T = 0`` (the flow
    paths) the log-SNR is ``-inf`` at ``T``: there ``logsnr`` and ``karras`` start with one
    interval of the uniform grid's length, ``T -> T - (T - t_min) / steps``, and space the
    remaining ``steps - 1`` from that time (``T`` stays the grid's first time).
    """
    if int(steps) < 1:
        raise UserInputError(f"steps must be a positive integer, got {steps}")
    check_spacing(spacing)
    T = sde.T if T is None else T
    if spacing in ("uniform", "quadratic"):
        return time_grid(steps, T=T, t_min=t_min, spacing=spacing, dtype=dtype, device=device)
    if spacing == "shifted":
        s = float(sde.grid_shift)
        u_min = (t_min / T) / (s - (s - 1) * (t_min / T))  # the shift's inverse at t_min
        u = time_grid(steps, T=1.0, t_min=u_min, dtype=torch.float64)
        ts = T * s * u / (1 + (s - 1) * u)
        ts[0], ts[-1] = T, t_min
        return ts.to(dtype=dtype, device=device)
    ends = torch.tensor([T, t_min], dtype=torch.float64)
    lam = sde.log_snr(ends)
    if bool(torch.isinf(lam[0]) & (lam[0] < 0)) and 0 < t_min < T:  # a pure-noise T
        if steps == 1:
            return torch.tensor([T, t_min], dtype=dtype, device=device)
        t_1 = T - (T - t_min) / steps
        rest = make_grid(sde, steps - 1, t_min=t_min, spacing=spacing, T=t_1,
                         dtype=torch.float64)
        return torch.cat([torch.tensor([T], dtype=torch.float64), rest]).to(dtype=dtype,
                                                                            device=device)
    if not (0 <= t_min < T and torch.isfinite(lam).all()):  # VP, sub-VP: lambda = inf at t = 0
        raise UserInputError(f"a {spacing} grid needs 0 <= t_min < T and a finite log-SNR at "
                             f"t_min, got t_min={t_min}, T={T}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if spacing == "logsnr":
        lams = lam[0] + (lam[1] - lam[0]) * u
    else:  # Eq. (5) [Karras22] in sigma~ = sigma/alpha = exp(-lambda)
        rho = KARRAS_RHO
        s_max, s_min = torch.exp(-lam[0]), torch.exp(-lam[1])
        lams = -rho * torch.log(s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho)))
    ts = sde.t_from_log_snr(lams)
    ts[0], ts[-1] = T, t_min  # exact end points (the inverse is accurate to rounding)
    return ts.to(dtype=dtype, device=device)


def check_grid(sde: SDE, ts: object, *, discrete: bool = False) -> torch.Tensor:
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
        raise UserInputError("the grid's end time ts[-1] must be > 0, as t_min must (sigma_t and "
                             "the score are singular at t = 0 for VP and sub-VP)")
    return ts


def discrete_grid(
    sde: SDE,
    steps: int | None,
    *,
    t_min: float,
    spacing: str = "uniform",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A decreasing grid on the discrete chain's step times from (near) ``t_min`` to ``T``.

    ``steps=None``: every chain step, :func:`~sde_gen.chain.chain_times`. Otherwise
    :func:`make_grid` between the same end steps, snapped to the nearest steps (DDPM's and
    diffusers' respacing): with uniform spacing any ``steps`` up to the chain's count fits.

    Raises:
        UserInputError: ``steps`` intervals collapse on the chain; the message gives the most that
            fit between ``t_min`` and ``T`` with this spacing.
    """
    check_spacing(spacing)
    chain = chain_times(sde, t_min, device=device)
    most = len(chain) - 1
    if most < 1:
        raise UserInputError(f"the {sde.N}-step discrete chain has no step between "
                             f"t_min={t_min:g} and T={sde.T:g}; use a smaller t_min or "
                             f"discrete=False")
    if steps is None:
        return chain

    t_low = float(chain[-1])  # the chain step nearest t_min: the grid's end once snapped

    def snapped(k: int) -> torch.Tensor:
        ts = make_grid(sde, k, t_min=t_low, spacing=spacing, device=device)
        return sde.index_to_time(sde.time_to_index(ts)).to(torch.float64)

    ts = snapped(steps)
    if collapses(ts):
        fits = next((k for k in range(min(steps - 1, most), 0, -1)
                     if not collapses(snapped(k))), 0)
        raise UserInputError(
            f"{steps} intervals do not fit on the {sde.N}-step discrete chain between "
            f"t_min={t_min:g} and T={sde.T:g} (it has {most} intervals there); with spacing "
            f"{spacing!r} use at most {fits} steps, or discrete=False"
        )
    return ts
