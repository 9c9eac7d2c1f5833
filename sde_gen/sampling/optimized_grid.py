"""Time grids optimized for one model and one deterministic solver at a fixed NFE.

The target is the model's own probability-flow ODE: from ``n`` prior draws, a tight-tolerance
dopri5 solve to ``t_min`` followed by the Tweedie denoise gives reference endpoints, and a grid's
error is the mean L2 distance of the solver's (denoised) samples from the same draws to them. No
exact score is needed, so this works for any trained model.

Two searches (``method``):

- ``"gits"``: dynamic programming over a fine candidate grid, uniform in log-SNR ([Chen24gits]
  Sec. 3-4). The teacher trajectory is the reference ODE solve read at every candidate time; the
  cost of an edge ``t_i -> t_j`` is the mean distance of one DDIM step from the teacher's state at
  ``t_i`` to the teacher's state at ``t_j`` (one model call per candidate, the steps themselves
  are closed-form), and the grid is the ``K``-edge path from ``T`` to ``t_min`` of least total cost.
  It is then refined as below with the solver itself, since a multistep solver's error is not the
  sum of DDIM's local errors.
- ``"descent"``: Powell's derivative-free descent on the log-SNR gaps between the grid times
  (softmax-parameterized, so every trial grid is valid), starting from the solver's default grid
  and measuring the solver's own endpoint error.

Errors are reported on the tuning draws and on held-out draws (another seed): a grid is fitted to
its draws, and the held-out error is the one to believe.

Refs: [Chen24gits] (GITS); [Sabour24ays] (Align Your Steps) for the motivation.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ..chain import check_t_min, grid_coeffs
from ..errors import UserInputError
from ..parameterization import EpsModel, eps_to_x0, model_prediction
from ..sde import SDE
from .driver import solver_spec
from .grid_file import OptimizedGrid, sde_signature
from .grids import check_spacing, make_grid
from .pure_start import starts_pure
from .sample import sample
from .solvers import SOLVERS

METHODS = ("gits", "descent")
#: Tolerances of the reference probability-flow solve (dopri5), 100x below the field's 1e-5.
REFERENCE_TOL = 1e-7


def steps_for_nfe(solver: str, nfe: int, options: dict[str, Any] | None = None) -> int:
    """Grid intervals of a ``solver`` run with ``nfe`` model calls, the final denoise included.

    Raises:
        UserInputError: an adaptive or stochastic solver, or an NFE no grid gives exactly.
    """
    spec = solver_spec(solver)
    opts = spec.resolve(solver, dict(options or {}))
    if spec.is_stochastic(opts):
        raise UserInputError(f"solver {solver!r} draws noise: a grid is optimized for a "
                             "deterministic solver (ddim with eta=0, dpm, heun, ...)")
    per_step = spec.calls_per_step(opts)
    if per_step is None:
        raise UserInputError(f"solver {solver!r} with these options decides its own steps "
                             "(adaptive); choose a fixed-step method")
    if nfe < 1 + per_step or (nfe - 1) % per_step:
        raise UserInputError(f"{solver} makes {per_step} model call(s) per interval plus one "
                             f"final denoise: nfe must be 1 + {per_step} k (k >= 1), got {nfe}")
    return (nfe - 1) // per_step


@torch.no_grad()
def reference_endpoints(model: EpsModel, sde: SDE, x_T: torch.Tensor, t_min: float,
                        ts: torch.Tensor | None = None):
    """The denoised tight-tolerance PF-ODE endpoints from ``x_T`` (and, with ``ts``, the
    trajectory at those times)."""
    grid = ts if ts is not None else torch.tensor([sde.T, t_min], dtype=torch.float64)
    res = sample(model, sde, None, "ode", x_T=x_T, ts=grid, rtol=REFERENCE_TOL,
                 atol=REFERENCE_TOL, return_trajectory=ts is not None)
    return res.x, res.trajectory


def endpoint_error(model: EpsModel, sde: SDE, x_T: torch.Tensor, ref: torch.Tensor, solver: str,
                   ts: torch.Tensor, options: dict[str, Any]) -> float:
    """Mean L2 distance of the solver's denoised samples on ``ts`` (from ``x_T``) to ``ref``."""
    x = sample(model, sde, None, solver, x_T=x_T, ts=ts, **options).x
    err = (x - ref).reshape(x.shape[0], -1).norm(dim=1).mean()
    return float(err) if torch.isfinite(err) else math.inf


def _gits_path(cost: torch.Tensor, k: int) -> list[int]:
    """The ``k``-edge path ``0 -> M`` of least total ``cost[i, j]`` (``i < j``), by DP."""
    m = cost.shape[0] - 1
    best = torch.full((k + 1, m + 1), math.inf, dtype=torch.float64)
    back = torch.zeros((k + 1, m + 1), dtype=torch.long)
    best[0, 0] = 0.0
    for e in range(1, k + 1):
        for j in range(1, m + 1):
            total = best[e - 1, :j] + cost[:j, j]
            i = int(torch.argmin(total))
            best[e, j], back[e, j] = total[i], i
    path = [m]
    for e in range(k, 0, -1):
        path.append(int(back[e, path[-1]]))
    return path[::-1]


@torch.no_grad()
def gits_candidates(sde: SDE, t_min: float, candidates: int,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """GITS' fine grid: ``candidates`` log-SNR-uniform intervals (on a flow path the first from
    ``T`` is of the uniform grid's length, :func:`~.grids.make_grid`)."""
    return make_grid(sde, candidates, t_min=t_min, spacing="logsnr", device=device)


def _gits_grid(model: EpsModel, sde: SDE, x_T: torch.Tensor, t_min: float, steps: int,
               candidates: int, traj: torch.Tensor | None = None) -> torch.Tensor:
    """GITS: the DDIM-cost DP over :func:`gits_candidates`; ``traj``: the teacher's states at
    those times from ``x_T`` if already solved for."""
    cand = gits_candidates(sde, t_min, candidates, device=x_T.device)
    pure = starts_pure(sde, cand)
    if traj is None:
        _, traj = reference_endpoints(model, sde, x_T, t_min, ts=cand)
    alpha, sigma = (c.to(x_T.dtype) for c in grid_coeffs(sde, cand))
    m = len(cand) - 1
    cost = torch.full((m + 1, m + 1), math.inf, dtype=torch.float64)
    flat = traj.reshape(m + 1, x_T.shape[0], -1)
    for i in range(m):
        x = traj[i]
        t = cand[i].to(x.dtype).expand(x.shape[0])
        if i == 0 and pure:  # alpha_T = 0: x0 from the model itself
            eps_hat, x0 = model_prediction(model, x, t)
        else:
            eps_hat = model(x, t)
            x0 = eps_to_x0(x, eps_hat, alpha[i], sigma[i])
        x0 = x0.reshape(x.shape[0], -1)
        e = eps_hat.reshape(x.shape[0], -1)
        for j in range(i + 1, m + 1):  # DDIM: x_j = alpha_j x0 + sigma_j eps
            step = alpha[j] * x0 + sigma[j] * e
            cost[i, j] = (step - flat[j]).norm(dim=1).mean().double()
    path = _gits_path(cost, steps)
    return cand[path].to(torch.float64)


def _descent(error, ts: torch.Tensor, sde: SDE, evals: int):
    """Powell's derivative-free descent (scipy) on the log-SNR gaps of ``ts``: the interior
    times are ``lambda_T + cumsum(softmax(theta)) (lambda_{t_min} - lambda_T)``, so every trial is
    a valid decreasing grid with the end points fixed; at most ``evals`` error evaluations. On a
    flow path (log-SNR ``-inf`` at ``T``) the gaps are in ``t`` instead."""
    from scipy.optimize import minimize

    if sde.pure_noise_at_T:
        def to_u(t: torch.Tensor) -> torch.Tensor:
            return -t

        def from_u(u: torch.Tensor) -> torch.Tensor:
            return -u
    else:
        to_u, from_u = sde.log_snr, sde.t_from_log_snr
    lam = to_u(ts.to(torch.float64))
    span = lam[-1] - lam[0]
    theta0 = torch.log((lam[1:] - lam[:-1]) / span).numpy()

    def grid(theta) -> torch.Tensor:
        w = torch.softmax(torch.as_tensor(theta, dtype=torch.float64), 0)
        lams = torch.cat([lam[:1], lam[0] + torch.cumsum(w, 0) * span])
        out = from_u(lams)
        out[0], out[-1] = ts[0], ts[-1]
        return out

    def objective(theta) -> float:
        cand = grid(theta)
        return error(cand) if bool((cand[1:] < cand[:-1]).all()) else math.inf

    if evals < 1 or len(ts) < 3:
        return ts
    res = minimize(objective, theta0, method="Powell",
                   options={"maxfev": evals, "xtol": 1e-3, "ftol": 1e-4})
    best = grid(res.x)
    return best if res.fun < error(ts) else ts


def optimize_grid(
    model: EpsModel,
    sde: SDE,
    shape: tuple[int, ...],
    solver: str = "dpm",
    nfe: int = 10,
    *,
    method: str = "gits",
    n: int = 256,
    n_heldout: int = 256,
    t_min: float | None = None,
    spacing: str | None = None,
    seed: int = 0,
    candidates: int = 64,
    evals: int = 200,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> OptimizedGrid:
    """The grid of ``nfe`` model calls (final denoise included) that minimizes ``solver``'s
    endpoint error for ``model`` (see the module docstring).

    Args:
        shape: per-example data shape ``D`` (the draws are ``(n, *D)``).
        method: ``"gits"`` (DP over ``candidates`` log-SNR intervals, then descent) or
            ``"descent"`` (descent from the solver's default grid).
        evals: the most solver runs the descent makes (each ``nfe`` model calls on ``n`` draws).
        n, n_heldout: prior draws to tune on and to report on (seeds ``seed``, ``seed + 1``).
        t_min: the end time (default the SDE's).
        spacing: the built-in spacing the search starts from and reports "before" with
            (default the solver's).
        **options: the solver's options (fixed while the grid is tuned).

    Raises:
        UserInputError: an unknown method, a stochastic or adaptive solver, an impossible NFE.
    """
    if method not in METHODS:
        raise UserInputError(f"unknown grid method {method!r}; choose one of {', '.join(METHODS)}")
    if n < 1 or n_heldout < 1 or candidates < 2 or evals < 0:
        raise UserInputError(f"need n, n_heldout >= 1, candidates >= 2 and evals >= 0, got "
                             f"{n}, {n_heldout}, {candidates}, {evals}")
    steps = steps_for_nfe(solver, nfe, options)
    if method == "gits" and steps >= candidates:
        raise UserInputError(f"gits picks the {steps} intervals of a {nfe}-NFE {solver} grid "
                             f"among {candidates} candidate intervals, so it needs fewer steps "
                             f"than candidates; use fewer NFE or search='descent'")
    if spacing is not None:
        check_spacing(spacing)
    spec = SOLVERS[solver]
    opts = spec.resolve(solver, options)
    if opts.get("discrete"):
        raise UserInputError("optimize a grid in continuous time (discrete=False): the "
                             "discrete chain snaps times to its steps")
    t_min = check_t_min(sde, sde.default_t_min if t_min is None else t_min)
    start = time.perf_counter()
    draws = [sde.prior_sampling((k, *shape), generator=torch.Generator(device=device or "cpu")
                                .manual_seed(seed + i), device=device, dtype=dtype)
             for i, k in enumerate((n, n_heldout))]
    refs = [reference_endpoints(model, sde, x, t_min)[0] for x in draws]

    def error(ts: torch.Tensor, which: int = 0) -> float:
        return endpoint_error(model, sde, draws[which], refs[which], solver,
                              ts.to(draws[which].device), opts)

    default = make_grid(sde, steps, t_min=t_min, spacing=spacing or spec.spacing_for(sde),
                        device=draws[0].device)
    init = _gits_grid(model, sde, draws[0], t_min, steps, candidates) if method == "gits" \
        else default
    if method == "gits" and error(init) > error(default):
        init = default  # DDIM's local costs misled a multistep solver: descend from its default
    ts = _descent(error, init, sde, evals)
    return OptimizedGrid(
        ts=ts.cpu(), solver=solver, options={k: v for k, v in options.items()},
        nfe=spec.nfe(steps, opts), error_before=error(default), error_after=error(ts),
        heldout_before=error(default, 1), heldout_after=error(ts, 1),
        seconds=time.perf_counter() - start, method=method, sde=sde_signature(sde))
