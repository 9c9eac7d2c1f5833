"""tAB-DEIS: Adams-Bashforth on eps with Lagrange polynomials in t and exact integrator weights.

In ``y = x / alpha_t`` and ``sigma~ = sigma_t / alpha_t`` the probability-flow ODE of every SDE
here is ``dy/dsigma~ = eps(x, t)`` ([Song21ddim] Eq. 14; [Karras22] Eq. 4 with
``s(t) = alpha_t``), so over one grid interval ``t_k -> t_{k+1}``

    y_{k+1} = y_k + int_{sigma~_k}^{sigma~_{k+1}} eps(x, t(sigma~)) dsigma~.

DEIS's tAB variant ([Zhang23], "Fast Sampling of Diffusion Models with Exponential
Integrator", arXiv 2204.13902, Sec. 4) replaces ``eps`` along the path by the polynomial in ``t``
through the last ``q`` model outputs (``q = order``, lower on the first steps), so that with
``L_{k,j}`` its Lagrange basis

    y_{k+1} = y_k + sum_j C[k, j] eps_{k-j},
    C[k, j] = int_{t_k}^{t_{k+1}} L_{k,j}(tau) (dsigma~/dtau) dtau
            = int_{sigma~_k}^{sigma~_{k+1}} L_{k,j}(t(sigma~)) dsigma~.

The right-hand form needs no derivative of the schedule: ``t(sigma~)`` is
``sde.t_from_log_snr(-log sigma~)``, exact for every SDE here (polished by one Newton step,
:func:`time_from_log_snr`). The integral is taken in ``lambda = -log sigma~`` (the log-SNR),
where the integrand ``-e^{-lambda} L(t(lambda))`` is analytic in the strip
``|Im lambda| < pi/2`` for VP, sub-VP (linear and cosine) and VE, whatever the grid; in
``sigma~`` itself a coarse grid puts the logarithmic singularity at ``sigma~ = 0`` next to the
interval (VE at one step: ``[0.01, 50]``). Each interval is split into pieces at most
:data:`QUAD_WIDTH` long in ``lambda`` with :data:`QUAD_NODES` Gauss-Legendre nodes each, which
is exact to float64 rounding (checked against finer quadrature and against adaptive
quadrature in ``t`` by tests/test_multistep_solvers.py). The authors' code sums 10^4
left-Riemann points in ``t``, and diffusers keeps its closed-form weights in float32, which
degrade as the steps shrink.

The update is written for ``x = alpha y``: ``x_{k+1} = (alpha_{k+1}/alpha_k) x_k + alpha_{k+1}
sum_j C[k, j] eps_{k-j}``, so that a float32 state never holds ``y``, which is ``1/alpha_T``
(about 150 for VP) times larger than ``x`` at the start.

| symbol here | [Zhang23]         | meaning                                                |
| ----------- | ----------------- | ------------------------------------------------------ |
| C[k, j]     | C_ij (tAB-DEIS)   | weight of ``eps`` at grid time ``k - j`` on interval k |
| L_{k,j}     | prod_{k != j} ... | Lagrange basis in ``t`` through ``t_k, ..., t_{k-q+1}`` |
| sigma~      | rho               | [Karras22]'s noise level ``sigma(t) = sigma_t / alpha_t`` |

Refs: [Song21ddim] Eq. (14); [Karras22] Eq. (4); [Zhang23] Sec. 4.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import numpy as np
import torch

from ..chain import grid_coeffs
from ..noise import Generator
from ..parameterization import EpsModel
from ..sde import SDE
from .pure_start import continue_after_first, ddim_first_step, starts_pure
from .result import Callback
from .spec import Option, SolverSpec, x0_options

#: Gauss-Legendre nodes per piece and the longest piece in log-SNR. With the integrand analytic
#: in ``|Im lambda| < pi/2``, a piece of half-width 0.25 converges like 12.6^{-2n}: 1e-17 at n=8.
QUAD_NODES = 8
QUAD_WIDTH = 0.5


@lru_cache(maxsize=None)
def _gauss_legendre(n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return tuple(nodes.tolist()), tuple(weights.tolist())


def lagrange_basis(knots: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """The Lagrange basis through ``knots`` evaluated at ``tau``, row by row.

    ``L_j(tau) = prod_{m != j} (tau - knots_m) / (knots_j - knots_m)``.

    Shapes: ``knots: (R, q)``, ``tau: (R, M)`` -> ``(R, q, M)``.
    """
    q = knots.shape[1]
    rows = []
    for j in range(q):
        basis = torch.ones_like(tau)
        for m in range(q):
            if m != j:
                gap = knots[:, j : j + 1] - knots[:, m : m + 1]
                basis = basis * (tau - knots[:, m : m + 1]) / gap
        rows.append(basis)
    return torch.stack(rows, dim=1)


def lagrange_coefficients(
    log_snr: torch.Tensor,
    knots: torch.Tensor,
    tau_of_log_snr: Callable[[torch.Tensor], torch.Tensor],
    order: int,
    *,
    nodes: int = QUAD_NODES,
    width: float = QUAD_WIDTH,
) -> torch.Tensor:
    """The weights ``C[k, j] = int_{sigma~_k}^{sigma~_{k+1}} L_{k,j}(tau(sigma~)) dsigma~`` of a
    multistep rule.

    ``L_{k,j}`` is the Lagrange basis in the interpolation variable ``tau`` through its values at
    grid times ``k, k-1, ..., k-q+1`` (``q = min(order, k + 1)``: the first steps warm up with
    lower orders); ``sigma~ = e^{-lambda}``. Computed in float64 by composite Gauss-Legendre in
    ``lambda`` (``nodes`` per piece, pieces at most ``width`` long).

    Args:
        log_snr: ``lambda`` at the grid times, ``(K + 1,)`` float64.
        knots: ``tau`` at the grid times, ``(K + 1,)``: ``t`` for tAB-DEIS, ``sigma~`` for
            Adams-Bashforth in ``sigma~``.
        tau_of_log_snr: ``tau`` as a function of ``lambda`` (must agree with ``knots``), e.g.
            :func:`time_from_log_snr` for ``t``.
        order: the most model outputs an interval uses.

    Returns:
        ``(K, order)`` float64: row ``k`` weighs ``eps_k, eps_{k-1}, ...``; zero past ``q``.
    """
    lam = log_snr.to(torch.float64)
    knots = knots.to(torch.float64)
    n_steps = lam.shape[0] - 1
    x_gl, w_gl = (torch.tensor(v, dtype=torch.float64, device=lam.device)
                  for v in _gauss_legendre(nodes))
    pieces = max(1, math.ceil(float((lam[1:] - lam[:-1]).detach().abs().max()) / width))
    u = torch.linspace(0.0, 1.0, pieces + 1, dtype=torch.float64, device=lam.device)
    edges = lam[:-1, None] + (lam[1:] - lam[:-1])[:, None] * u  # (K, pieces + 1)
    half = 0.5 * (edges[:, 1:] - edges[:, :-1])  # (K, pieces)
    node_lam = (0.5 * (edges[:, 1:] + edges[:, :-1]))[..., None] + half[..., None] * x_gl
    # dsigma~ = -e^{-lambda} dlambda
    weight = (half[..., None] * w_gl * -torch.exp(-node_lam)).reshape(n_steps, -1)
    tau = tau_of_log_snr(node_lam.reshape(-1)).to(torch.float64).reshape(n_steps, -1)
    coeffs = torch.zeros(n_steps, order, dtype=torch.float64, device=lam.device)
    for q in range(1, order + 1):
        last = n_steps if q == order else min(q, n_steps)  # only row q - 1 warms up at q < order
        if last <= q - 1:
            break
        rows = torch.arange(q - 1, last, device=lam.device)
        idx = rows[:, None] - torch.arange(q, device=lam.device)  # k, k-1, ..., k-q+1
        basis = lagrange_basis(knots[idx], tau[rows])  # (R, q, M)
        coeffs[rows, :q] = torch.einsum("rqm,rm->rq", basis, weight[rows])
    return coeffs


def time_from_log_snr(sde: SDE, lam: torch.Tensor) -> torch.Tensor:
    """``t(lambda)`` in float64 to rounding: ``sde.t_from_log_snr`` and one Newton step on
    ``sde.log_snr(t) = lambda``.

    The closed-form inverses can lose digits where the schedule is flat in its own variable:
    sub-VP's goes through ``-2 log a`` with ``a = alpha_t`` near 1, which at ``t = 1e-3`` leaves
    ``t`` accurate to 4e-12 only, and the Lagrange basis amplifies that by ``t / (t_k - t_{k-1})``.
    The Newton step (slope by autograd through ``marginal_coeffs``) restores 1e-15.
    """
    lam = lam.to(torch.float64)
    t = sde.t_from_log_snr(lam).to(torch.float64).detach()
    with torch.enable_grad():
        t.requires_grad_(True)
        residual = sde.log_snr(t) - lam
        (slope,) = torch.autograd.grad(residual.sum(), t)
    return (t - residual / slope).detach()


def tab_coefficients(sde: SDE, ts: torch.Tensor, order: int) -> torch.Tensor:
    """tAB-DEIS weights ``C[k, j]`` on the grid ``ts`` (Lagrange basis in ``t``), ``(K, order)``
    float64: :func:`lagrange_coefficients` with ``tau = t(lambda)`` (:func:`time_from_log_snr`)."""
    lam = grid_coeffs(sde, ts).log_snr
    return lagrange_coefficients(lam, ts.to(torch.float64),
                                 lambda lam: time_from_log_snr(sde, lam), order)


def eps_multistep(
    model: EpsModel,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    alpha: torch.Tensor,
    coeffs: torch.Tensor,
    *,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Walk ``y_{k+1} = y_k + sum_j C[k, j] eps_{k-j}`` (``y = x / alpha``), one model call per
    interval, written for ``x``: ``x_{k+1} = (alpha_{k+1}/alpha_k) x_k + alpha_{k+1} sum_j ...``.

    Args:
        alpha: ``alpha_t`` at the grid times, ``(K + 1,)`` float64.
        coeffs: ``(K, order)`` float64 weights (zero where the history is shorter).

    Returns:
        ``(x, x)`` at ``ts[-1]``.
    """
    dtype = x_T.dtype
    alpha = alpha.to(torch.float64)
    ratio = (alpha[1:] / alpha[:-1]).to(dtype)
    weights = (alpha[1:, None] * coeffs.to(torch.float64)).to(dtype)
    tt = ts.to(dtype)
    order = coeffs.shape[1]
    x = x_T
    history: list[torch.Tensor] = []
    for k in range(len(ts) - 1):
        history = [model(x, tt[k].expand(x.shape[0]))] + history[: order - 1]
        x = ratio[k] * x
        for j, eps in enumerate(history):
            x = x + weights[k, j] * eps
        if callback is not None:
            callback(k, x, x)
    return x, x


@torch.no_grad()
def sample_deis(
    model: EpsModel,
    sde: SDE,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    *,
    order: int = 3,
    generator: Generator = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """tAB-DEIS from ``ts[0]`` to ``ts[-1]``, one model call per interval.

    Args:
        order: 3 (default), 2 or 1: how many model outputs the polynomial in ``t`` goes through;
            the first steps warm up with lower orders. Order 1 is DDIM (eta = 0).

    Returns:
        ``(x, x)`` at ``ts[-1]``.

    Shapes: ``x_T: (B, *D)``.

    Refs: [Zhang23] Sec. 4 (tAB-DEIS); [Song21ddim] Eq. (14).
    """
    if starts_pure(sde, ts):  # alpha = 0 at ts[0]: the first step's finite limit
        x = ddim_first_step(model, sde, x_T, ts)
        return continue_after_first(x, x, ts, callback, lambda x, ts, cb: sample_deis(
            model, sde, x, ts, order=order, callback=cb))
    weights = tab_coefficients(sde, ts, order)
    return eps_multistep(model, x_T, ts, grid_coeffs(sde, ts).alpha, weights, callback=callback)


SPEC = SolverSpec(
    sample_deis, "tAB-DEIS: eps extrapolated in t, exact exponential-integrator weights",
    options=(Option("order", int, 3, "multistep order", choices=(1, 2, 3)), *x0_options()),
    steps=19, spacing=None, x0_by_model=True, order=lambda o: o["order"],
)
