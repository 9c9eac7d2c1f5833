"""UniPC multistep (UniP predictor + UniC corrector) in log-SNR time, data prediction.

With ``lambda = log(alpha/sigma)``, ``h = lambda_s - lambda_t > 0`` for a grid step ``t -> s``
and ``D`` the denoiser ``x0_hat``, the probability-flow ODE's exact step is ([Lu22pp] Eq. 8)

    x_s = (sigma_s/sigma_t) x_t + alpha_s (1 - e^{-h}) D_t
          + alpha_s sum_{n >= 1} h^{n+1} phi_{n+1}(-h) D^{(n)}_t,

``phi_{n+1}(-h) = int_0^1 e^{-h(1-u)} u^n / n! du`` and ``D^{(n)}`` the n-th derivative in
``lambda``. UniP-p replaces the sum by ``alpha_s B(h) sum_m a_m (D_{t_m} - D_t) / r_m`` over the
p - 1 previous grid points ``t_m`` (``r_m = (lambda_{t_m} - lambda_t) / h < 0``), with ``a``
solving the order conditions ``sum_m a_m r_m^{n-1} = g_n / B(h)``, ``g_n = n! h phi_{n+1}(-h)``,
n = 1..p-1: order p. After the model call at the predicted point ``x~_s`` (which the next
predictor step needs anyway), UniC-p redoes the same step with the extra difference
``D(x~_s) - D_t`` at ``r = 1`` and the conditions up to n = p: order p + 1 ([Zhao23] Thm. 3.2),
at no extra model call. The stored ``D_s`` stays the one evaluated at ``x~_s``; the corrected
``x_s`` is the state the next step starts from. The last step is not corrected (that would take
one more call).

``B(h)`` carries the data-prediction sign here: ``bh1``: ``h``; ``bh2``: ``1 - e^{-h}`` (the
paper's ``h`` and ``e^h - 1`` taken at ``-h``, negated). UniP-2 and UniC-1 use ``a_1 = 1/2``, the
``h -> 0`` limit of the solved value, as the official code and diffusers do (UniP-2 bh2 is then
exactly DPM-Solver++(2M)); every other case solves the conditions exactly, in float64, where
``B(h)`` cancels (``B(h) a = R^{-1} g``).

| symbol here    | [Zhao23] (Alg. 1-2, data prediction) | meaning                               |
| -------------- | ------------------------------------ | ------------------------------------- |
| D[m]           | x_theta at t_{i-1-m}                 | denoised estimates, newest first      |
| r              | r_m                                  | log-SNR offsets of t_m, in units of h |
| rhs = g / B    | g_p(h) / B(h)                        | right-hand side of ``R_p a = ...``    |
| a_pred, a_corr | a_p (UniP), a_p^c (UniC)             | solved weights                        |
| c_pred, c_corr | alpha_s B(h) a_m / r_m               | weights of ``D[m] - D[0]``            |

Refs: [Zhao23] (arXiv 2302.04867) Alg. 1-2, Thm. 3.2, App. (data prediction, B(h));
[Lu22pp] Eq. 8.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import torch

from ..chain import grid_coeffs
from ..errors import UserInputError
from ..noise import Generator
from ..parameterization import EpsModel, eps_to_x0, model_prediction
from ..sde import SDE
from .pure_start import starts_pure
from .result import Callback
from .spec import Option, SolverSpec, x0_options

__all__ = ["FEW_STEPS", "SPEC", "VARIANTS", "sample_unipc"]

#: The B(h) choices of [Zhao23]: ``bh1`` B(h) = h, ``bh2`` B(h) = e^h - 1.
VARIANTS = ("bh1", "bh2")
#: ``lower_order_final`` lowers the order of the last steps on grids of fewer intervals than
#: this, per predictor order (order 1 has nothing to lower); chosen on the exact-score tuning
#: mixtures (benchmarks/results/fast_samplers.md).
FEW_STEPS = {2: 10, 3: 6}
_SERIES_TERMS = 25  # phi_n(-h) by its Taylor series below h = 1: the last term is < 1/25! = 6e-26


def _phis(h: torch.Tensor, n: int) -> list[torch.Tensor]:
    """``[phi_1(-h), ..., phi_n(-h)]``, float64, for ``h > 0`` (``(K,)`` each).

    The recursion ``phi_{j+1}(z) = (phi_j(z) - 1/j!)/z`` loses ``~log10(1/h)`` digits per order
    at small ``h`` (a 1000-step grid has ``h ~ 1e-2``); below ``h = 1`` the series
    ``phi_j(z) = sum_i z^i / (i + j)!`` is used instead. Large ``h`` is exact either way
    (``e^{-h}`` underflows to 0, nothing overflows).
    """
    safe = torch.where(h < 1, torch.ones_like(h), h)  # the recursion, where it is used
    rec = [-torch.expm1(-safe) / safe]
    for j in range(1, n):
        rec.append((1 / math.factorial(j) - rec[-1]) / safe)
    z = -h.clamp(max=1.0)  # the series, where it is used
    out = []
    for j in range(1, n + 1):
        series = sum(z**i / float(math.factorial(i + j)) for i in range(_SERIES_TERMS))
        out.append(torch.where(h < 1, series, rec[j - 1]))
    return out


class _Step(NamedTuple):
    """One interval's float64 coefficients: ``base = c_x x + c_0 D[0]``, then
    ``x~ = base + sum_m c_pred[m] (D[m+1] - D[0])`` and the corrected
    ``x = base + sum_m c_corr[m] (D[m+1] - D[0]) + c_corr[-1] (D_new - D[0])``."""

    c_x: float
    c_0: float
    c_pred: list[float]
    c_corr: list[float]


def _solve(r: list[float], rhs: list[float]) -> list[float]:
    """``a`` with ``sum_m a_m r_m^{n-1} = rhs_n``, n = 1..len(r) (a Vandermonde system)."""
    q = len(r)
    vander = torch.tensor([[rm ** (n - 1) for rm in r] for n in range(1, q + 1)],
                          dtype=torch.float64)
    return torch.linalg.solve(vander, torch.tensor(rhs, dtype=torch.float64)).tolist()


def _step_orders(n_steps: int, order: int, *, lower_order_final: bool = True) -> list[int]:
    """The predictor order of each interval: warm-up ``1, 2, ..`` up to ``order``; with
    ``lower_order_final`` and fewer than :data:`FEW_STEPS` intervals, at most ``n_steps - k`` at
    interval ``k`` (first order on the last step, second on the one before). The corrector
    applied to interval ``k`` has the same ``p`` (UniC-p, order p + 1)."""
    orders = [min(order, k + 1) for k in range(n_steps)]
    if lower_order_final and n_steps < FEW_STEPS.get(order, 0):
        orders = [min(q, n_steps - k) for k, q in enumerate(orders)]
    return orders


def _pure_first_step(alpha: torch.Tensor, sigma: torch.Tensor, variant: str) -> _Step:
    """Interval 0 from a pure-noise ``T`` (``alpha_0 = 0``, ``h = inf``) in its limit:
    ``c_x = sigma_1 / sigma_0``, ``c_0 = alpha_1 (1 - e^{-h}) -> alpha_1`` (DDIM's step), and
    UniC-1's ``alpha_1 B(h) / 2 -> alpha_1 / 2`` for ``bh2`` (``B = 1 - e^{-h}``): the corrected
    state ``x~_1 + alpha_1 (D_1 - D_0) / 2``, the trapezoid in x0. ``bh1``'s ``B = h`` diverges:
    no correction there."""
    a1, ratio = float(alpha[1]), float(sigma[1] / sigma[0])
    return _Step(ratio, a1, [], [0.5 * a1] if variant == "bh2" else [])


def _unipc_coeffs(
    log_snr: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    orders: list[int],
    *,
    variant: str = "bh2",
) -> list[_Step]:
    """Per-interval UniP / UniC coefficients of a grid, all in float64 (host scalars).

    Args:
        log_snr, alpha, sigma: ``(K + 1,)`` per grid time (any float dtype; used in float64).
        orders: the predictor order of each of the K intervals (:func:`_step_orders`).
        variant: ``bh1`` or ``bh2``.
    """
    lam = log_snr.detach().to("cpu", torch.float64)
    alpha = alpha.detach().to("cpu", torch.float64)
    sigma = sigma.detach().to("cpu", torch.float64)
    h = lam[1:] - lam[:-1]
    p_max = max(orders)
    phis = _phis(h, p_max + 1)
    g = [math.factorial(n) * h * phis[n] for n in range(1, p_max + 1)]  # g_n, n = 1..p_max
    big_b = h if variant == "bh1" else -torch.expm1(-h)  # B(h), data-prediction sign
    ratio = sigma[1:] / sigma[:-1]
    c_0 = alpha[1:] * -torch.expm1(-h)  # alpha_s (1 - e^{-h})
    steps = []
    for k, q in enumerate(orders):
        r = [float((lam[k - m] - lam[k]) / h[k]) for m in range(1, q)]
        rhs = [float(g[n - 1][k] / big_b[k]) for n in range(1, q + 1)]  # g_n / B(h)
        a_pred = [] if q == 1 else [0.5] if q == 2 else _solve(r, rhs[: q - 1])
        a_corr = [0.5] if q == 1 else _solve(r + [1.0], rhs)
        scale = float(alpha[k + 1] * big_b[k])
        steps.append(_Step(
            float(ratio[k]), float(c_0[k]),
            [scale * a / rm for a, rm in zip(a_pred, r)],
            [scale * a / rm for a, rm in zip(a_corr, r + [1.0])],
        ))
    return steps


@torch.no_grad()
def sample_unipc(
    model: EpsModel,
    sde: SDE,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    *,
    order: int = 2,
    variant: str = "bh2",
    unic: bool = True,
    lower_order_final: bool = True,
    generator: Generator = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """UniPC-p (UniP-p with UniC-p) from ``ts[0]`` to ``ts[-1]``, one model call per interval.

    Args:
        order: predictor order 1, 2 or 3 (default 2); the first steps warm up with lower
            orders. With ``unic`` each corrected step gains one order ([Zhao23] Thm. 3.2).
        variant: ``B(h)``: ``bh2`` (default, ``e^h - 1``) or ``bh1`` (``h``). It only matters
            where ``a_1 = 1/2`` is taken (UniP-2, UniC-1): elsewhere ``B(h) a`` is fixed by the
            order conditions, so order 3 differs between the two only on its warm-up steps.
        unic: apply the UniC corrector to every step but the last, reusing the model call at
            the predicted point; ``False`` leaves the bare UniP predictor.
        lower_order_final: with fewer intervals than :data:`FEW_STEPS` (6 for order 3, 10 for
            order 2), drop to first order on the last step and to second on the one before it.
            The rule counts intervals only: on grids that end with one long log-SNR step
            (uniform-in-t VP grids, diffusers' timesteps) order 3 on that step is poor at any
            step count; use the default grid there.
        generator: unused (deterministic solver).
        callback: ``callback(k, x, x)`` with the state at ``ts[k + 1]``, the corrected one
            where UniC applies (so it comes after the next model call; the last is the result).

    Returns:
        ``(x, x)`` at ``ts[-1]``.

    Shapes: ``x_T: (B, *D)``.

    Refs: [Zhao23] Alg. 1-2 and App. (data prediction); [Lu22pp] Eq. 8.
    """
    pure = starts_pure(sde, ts)  # alpha = 0 at ts[0]: the first step in its finite limit
    dtype = x_T.dtype
    alpha64, sigma64 = coeffs = grid_coeffs(sde, ts)
    lam = coeffs.log_snr
    n_steps = len(ts) - 1
    first = int(pure)  # from a pure T the multistep history starts at ts[1]
    orders = _step_orders(n_steps - first, order, lower_order_final=lower_order_final)
    steps = (_unipc_coeffs(lam[first:], alpha64[first:], sigma64[first:], orders,
                           variant=variant) if orders else [])
    if pure:
        steps.insert(0, _pure_first_step(alpha64, sigma64, variant))
    # to x's dtype and device in one transfer; per step, views (c_x, c_0, c_pred, c_corr)
    flat = torch.tensor([v for s in steps for v in (s.c_x, s.c_0, *s.c_pred, *s.c_corr)],
                        dtype=dtype, device=x_T.device)
    table, i = [], 0
    for s in steps:
        n_pred, n_corr = len(s.c_pred), len(s.c_corr)
        table.append((flat[i], flat[i + 1], flat[i + 2: i + 2 + n_pred],
                      flat[i + 2 + n_pred: i + 2 + n_pred + n_corr]))
        i += 2 + n_pred + n_corr
    alpha, sigma, tt = alpha64.to(dtype), sigma64.to(dtype), ts.to(dtype)
    x = x_T  # the state at ts[k]: x~_k until UniC corrects it
    base = x_T
    history: list[torch.Tensor] = []  # D at ts[k], ts[k-1], ...: newest first
    for k in range(n_steps):
        if pure and k == 0:  # x0 is 0/0 from eps where alpha = 0: the model's own
            _, d_new = model_prediction(model, x, tt[0].expand(x.shape[0]))
        else:
            eps = model(x, tt[k].expand(x.shape[0]))
            d_new = eps_to_x0(x, eps, alpha[k], sigma[k])  # at x~_k, kept as D_k
        if k > 0:
            if unic and len(table[k - 1][3]):  # UniC-p [Zhao23] on interval k - 1
                c_corr = table[k - 1][3]
                x = base + c_corr[-1] * (d_new - history[0])
                for m in range(len(c_corr) - 1):
                    x = x + c_corr[m] * (history[m + 1] - history[0])
            if callback is not None:
                callback(k - 1, x, x)
        history = [d_new] + history[: order - 1]
        c_x, c_0, c_pred, _ = table[k]
        base = c_x * x + c_0 * history[0]  # Eq. 8 [Lu22pp] to first order: DDIM
        x = base
        for m in range(len(c_pred)):  # UniP-p [Zhao23] Alg. 1-2
            x = x + c_pred[m] * (history[m + 1] - history[0])
    if callback is not None:
        callback(n_steps - 1, x, x)
    return x, x


def _check(model: Any, sde: SDE, ts: torch.Tensor, options: Mapping[str, Any]) -> None:
    """UniPC steps in log-SNR: every grid time needs ``sigma > 0`` (a finite log-SNR; a
    pure-noise start, log-SNR ``-inf``, is taken in its limit, :mod:`.pure_start`)."""
    lam = grid_coeffs(sde, ts).log_snr
    if not (torch.isfinite(lam[1:]).all() and (torch.isfinite(lam[0]) or lam[0] < 0)):
        raise UserInputError("UniPC needs a finite log-SNR at every grid time (sigma > 0); "
                             "end the grid above t = 0")


SPEC = SolverSpec(
    sample_unipc, "UniPC multistep predictor–corrector (UniP + UniC) in log-SNR time",
    options=(
        Option("order", int, 2, "multistep order of the predictor (UniC adds one)",
               choices=(1, 2, 3)),
        Option("variant", str, "bh2", "B(h): bh1 (h) or bh2 (e^h - 1)",
               choices=VARIANTS, noun="UniPC variant"),
        Option("unic", bool, True, "UniC corrector on every step but the last (no extra "
               "model call)"),
        Option("lower_order_final", bool, True, "with fewer than 6 intervals (order 3) or "
               "10 (order 2), lower the order on the last two steps"),
        *x0_options(),
    ),
    steps=19, spacing=None, x0_by_model=True, check=_check,
    order=lambda o: o["order"] + int(o["unic"]),  # [Zhao23] Thm. 3.2
)
