"""Noise schedules of the variance-preserving family and the time grids samplers walk.

A VP schedule is given by ``beta(t)`` and its integral ``B(t) = int_0^t beta(s) ds``; the
perturbation kernel then has ``log alpha_t = -B(t) / 2`` ([Song21] Eq. (29)).

Refs: [Song21] Appendix B; [Nichol21] Eq. (17).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from .errors import UserInputError


def check_finite(name: str, value: float) -> float:
    """``value`` as a float, or a one-line :class:`UserInputError` naming ``name`` if it is not a
    finite number (NaN passes every ``<`` check and inf every ``0 <`` check, so test first)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(number):
        raise UserInputError(f"{name} must be a finite number, got {value!r}")
    return number


class BetaSchedule(Protocol):
    """A continuous-time ``beta(t)`` with its integral and the inverse of that integral."""

    def beta(self, t: torch.Tensor) -> torch.Tensor: ...

    def integral(self, t: torch.Tensor) -> torch.Tensor: ...

    def inverse_integral(self, b: torch.Tensor) -> torch.Tensor: ...


class LinearBeta:
    """``beta(t) = beta_min + t (beta_max - beta_min)``: DDPM's linear schedule in the limit
    N -> inf.

    Refs: [Song21] Eq. (32) and Appendix B; [Ho20] Sec. 4.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        beta_min, beta_max = check_finite("beta_min", beta_min), check_finite("beta_max", beta_max)
        if not 0 < beta_min < beta_max:
            raise UserInputError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def inverse_integral(self, b: torch.Tensor) -> torch.Tensor:
        # Positive root of 0.5 d t^2 + beta_min t - b = 0, written to avoid cancellation.
        d = self.beta_max - self.beta_min
        return 2 * b / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * b))


class CosineBeta:
    """Nichol & Dhariwal's cosine schedule: ``abar(t) = f(t)/f(0)``,
    ``f(t) = cos^2((t+s)/(1+s) pi/2)``.

    ``beta(t) = -d log abar / dt`` diverges at t = 1, so use it with ``T < 1`` (0.9946 by default
    in :class:`~sde_gen.sde.VPSDE`, where ``abar`` is about 4e-5, as DPM-Solver does).

    Refs: [Nichol21] Eq. (17).
    """

    def __init__(self, s: float = 0.008) -> None:
        self.s = check_finite("s", s)
        if self.s < 0:  # abar(t) would rise on [0, -s]: a negative beta
            raise UserInputError(f"s must be >= 0, got {s!r}")
        self._log_f0 = 2 * math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))

    def _angle(self, t: torch.Tensor) -> torch.Tensor:
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return math.pi / (1 + self.s) * torch.tan(self._angle(t))

    def integral(self, t: torch.Tensor) -> torch.Tensor:
        return self._log_f0 - 2 * torch.log(torch.cos(self._angle(t)))

    def inverse_integral(self, b: torch.Tensor) -> torch.Tensor:
        angle = torch.arccos(torch.exp(0.5 * (self._log_f0 - b)))
        return angle * (2 / math.pi) * (1 + self.s) - self.s


class TableBeta:
    """A VP schedule given by a discrete chain's ``beta_i`` table (diffusers' ``betas``).

    The chain's step ``i`` (0-based) sits at ``t_i = (i + 1) T / N`` (``VPSDE.index_to_time``).
    ``B(t) = -log abar(t)`` is the monotone cubic (PCHIP, [Fritsch84]; scipy's
    ``PchipInterpolator``) through ``B(0) = 0`` and ``B(t_i) = -sum_{j <= i} log(1 - beta_j)``, so
    ``marginal_coeffs(t_i)`` is exactly ``(sqrt(abar_i), sqrt(1 - abar_i))`` of the table, and
    ``beta(t) = B'(t)`` is continuous and positive. (A piecewise-linear ``B`` would give the same
    knots, but its ``beta`` jumps at every step: an adaptive probability-flow solve then loses two
    orders of accuracy at the same tolerance, tests/test_likelihood.py.) Past ``T``, ``B`` is
    extended linearly.

    Args:
        betas: ``(N,)`` the chain's ``beta_i``, each in ``(0, 1)``; kept in float64.
        T: end time.

    Refs: [Ho20] Eq. (4); [Song21] Eq. (29); [Fritsch84].
    """

    def __init__(self, betas: torch.Tensor, T: float = 1.0) -> None:
        from scipy.interpolate import PchipInterpolator

        betas = torch.as_tensor(betas, dtype=torch.float64).flatten().cpu()
        if betas.numel() < 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise UserInputError("a beta table must be a non-empty list of numbers in (0, 1)")
        n, self.T = betas.numel(), check_finite("T", T)
        self.betas = betas
        self._knots_t = torch.arange(0, n + 1, dtype=torch.float64) * (self.T / n)
        self._knots_B = torch.cat([torch.zeros(1, dtype=torch.float64),
                                   torch.cumsum(-torch.log1p(-betas), 0)])
        if n == 1:  # two knots: the line through them
            slope = float(self._knots_B[1] / self._knots_t[1])
            coeffs = torch.tensor([[0.0], [0.0], [slope], [0.0]], dtype=torch.float64)
        else:
            pchip = PchipInterpolator(self._knots_t.numpy(), self._knots_B.numpy())
            coeffs = torch.from_numpy(pchip.c.copy())  # (4, n): s^3, s^2, s, 1 on each piece
        self._coeffs = coeffs
        self._end_slope = float(coeffs[2, -1] + 2 * coeffs[1, -1] * (self.T / n)
                                + 3 * coeffs[0, -1] * (self.T / n) ** 2)
        self._cache: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Knots and cubic coefficients on ``device`` (copied once per device)."""
        if device not in self._cache:
            self._cache[device] = (self._knots_t.to(device), self._knots_B.to(device),
                                   self._coeffs.to(device))
        return self._cache[device]

    def _piece(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(s, c, past)``: the offset of each ``t`` in its piece, that piece's ``(4, ...)``
        coefficients, and whether ``t`` is ``T`` or past it (float64)."""
        kt, _, c = self._tables(t.device)
        t64 = t.to(torch.float64)
        k = torch.searchsorted(kt, t64.detach().contiguous(), right=True).clamp(1, kt.numel() - 1)
        return t64 - kt[k - 1], c[:, k - 1], t64 >= self.T

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        s, c, past = self._piece(t)
        b = c[2] + s * (2 * c[1] + s * 3 * c[0])
        return torch.where(past, torch.full_like(b, self._end_slope), b).to(t.dtype)

    def integral(self, t: torch.Tensor) -> torch.Tensor:
        s, c, past = self._piece(t)
        b = c[3] + s * (c[2] + s * (c[1] + s * c[0]))  # equals B(t_i) exactly at a knot (s = 0)
        # B(T) at T
        beyond = float(self._knots_B[-1]) + (t.to(torch.float64) - self.T) * self._end_slope
        return torch.where(past, beyond, b).to(t.dtype)

    def inverse_integral(self, b: torch.Tensor) -> torch.Tensor:
        """``t`` with ``B(t) = b``: the piece by its knot values, then 60 bisections in it (B is
        increasing), exact to float64 round-off; past ``B(T)``, the linear extension."""
        kt, kb, c = self._tables(b.device)
        b64 = b.detach().to(torch.float64)
        k = torch.searchsorted(kb, b64.contiguous(), right=True).clamp(1, kb.numel() - 1)
        c, target = c[:, k - 1], b64 - kb[k - 1]
        lo, hi = torch.zeros_like(b64), (kt[k] - kt[k - 1])
        for _ in range(60):
            mid = (lo + hi) / 2
            above = mid * (c[2] + mid * (c[1] + mid * c[0])) > target
            lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
        t = torch.where(target == 0, kt[k - 1], kt[k - 1] + (lo + hi) / 2)  # a knot: exactly
        t = torch.where(b64 >= kb[-1], self.T + (b64 - kb[-1]) / self._end_slope, t)
        return t.to(b.dtype)


def scaled_linear_betas(beta_start: float, beta_end: float, n: int) -> torch.Tensor:
    """``linspace(sqrt(beta_start), sqrt(beta_end), n)^2`` (Stable Diffusion's
    ``scaled_linear``)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2


def cosine_betas(n: int, *, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's ``beta_i = min(1 - abar((i+1)/n) / abar(i/n), max_beta)`` with
    ``abar(u) = cos^2((u + s)/(1 + s) pi/2)`` (diffusers' ``squaredcos_cap_v2``).
    [Nichol21] Eq. (17)."""
    u = torch.arange(n + 1, dtype=torch.float64) / n
    abar = torch.cos((u + s) / (1 + s) * (math.pi / 2)) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def time_grid(
    steps: int,
    *,
    T: float = 1.0,
    t_min: float = 1e-3,
    spacing: str = "uniform",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A decreasing grid of ``steps + 1`` times from ``T`` to ``t_min``.

    Args:
        steps: number of intervals (>= 1).
        spacing: ``"uniform"`` in t, or ``"quadratic"`` (dense near ``t_min``, as DDIM's CIFAR-10
            runs, [Song21ddim] Appendix D.2).

    Returns:
        ``(steps + 1,)`` tensor with ``ts[0] = T`` and ``ts[-1] = t_min``.
    """
    if steps < 1:
        raise UserInputError(f"steps must be >= 1, got {steps}")
    if not 0 <= t_min < T:
        raise UserInputError(f"need 0 <= t_min < T, got t_min={t_min}, T={T}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if spacing == "uniform":
        ts = t_min + (T - t_min) * u
    elif spacing == "quadratic":
        ts = t_min + (T - t_min) * u**2
    else:
        raise UserInputError(f"unknown time spacing {spacing!r}; choose 'uniform' or 'quadratic'")
    return ts.to(dtype=dtype, device=device)
