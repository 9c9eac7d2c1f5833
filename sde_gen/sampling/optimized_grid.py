"""Time grids optimized for one model and one deterministic solver at a fixed NFE.

The target is the model's own probability-flow ODE: from ``n`` prior draws, a tight-tolerance
dopri5 solve to ``eps`` followed by the Tweedie denoise gives reference endpoints, and a grid's
error is the mean L2 distance of the solver's (denoised) samples from the same draws to them. No
exact score is needed, so this works for any trained model.

Two searches (``method``):

- ``"gits"``: dynamic programming over a fine candidate grid, uniform in log-SNR ([Chen24gits]
  Sec. 3-4). The teacher trajectory is the reference ODE solve read at every candidate time; the
  cost of an edge ``t_i -> t_j`` is the mean distance of one DDIM step from the teacher's state at
  ``t_i`` to the teacher's state at ``t_j`` (one model call per candidate, the steps themselves
  are closed-form), and the grid is the ``K``-edge path from ``T`` to ``eps`` of least total cost.
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

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from ..parameterization import EpsModel, eps_to_x0
from ..sde import SDE
from .grids import check_end_time, check_grid, check_spacing, grid_coeffs, make_grid
from .sample import sample
from .solvers import SOLVERS

METHODS = ("gits", "descent")
#: Tolerances of the reference probability-flow solve (dopri5), 100x below the field's 1e-5.
REFERENCE_TOL = 1e-7
FORMAT = "sde-gen-grid"


def sde_signature(sde: SDE) -> dict[str, Any]:
    """What identifies an SDE's time axis: its class, end time and schedule parameters (a grid
    optimized for one SDE means nothing on another)."""
    keys = ("beta_min", "beta_max", "schedule_name", "sigma_min", "sigma_max")
    sig: dict[str, Any] = {"sde": type(sde).__name__, "T": float(sde.T)}
    sig.update({k: getattr(sde, k) for k in keys if hasattr(sde, k)})
    return sig


@dataclass(frozen=True)
class OptimizedGrid:
    """A grid and what it was measured to do.

    Attributes:
        ts: the grid, decreasing, ``(steps + 1,)`` float64.
        solver, options: the solver (and its options) it was optimized for.
        nfe: model calls of one run on it, the final denoise included.
        error_before, error_after: mean endpoint error on the tuning draws with the solver's
            default grid and with ``ts``.
        heldout_before, heldout_after: the same on held-out draws.
        seconds: wall time of the optimization; ``method``: ``gits`` or ``descent``.
        sde: :func:`sde_signature` of the SDE it is for.
    """

    ts: torch.Tensor
    solver: str
    options: dict[str, Any]
    nfe: int
    error_before: float
    error_after: float
    heldout_before: float
    heldout_after: float
    seconds: float
    method: str
    sde: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        """Write it as JSON (atomically)."""
        path = Path(path)
        if path.suffix.lower() != ".json":
            raise UserInputError(f"a grid file must be a .json path, got {path}")
        d = asdict(self) | {"ts": [float(t) for t in self.ts], "format": FORMAT}
        tmp = path.with_name(".tmp_" + path.name)
        try:
            tmp.write_text(json.dumps(d, indent=2, allow_nan=False) + "\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, sde: SDE | None = None) -> "OptimizedGrid":
        """Read a grid file; with ``sde``, also check that it was made for that SDE.

        Raises:
            UserInputError: a missing or malformed file, or one made for another SDE.
        """
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"grid file not found: {path}")
        try:
            d = json.loads(path.read_text())
            if not isinstance(d, dict) or d.get("format") != FORMAT:
                raise ValueError("not an sde-gen grid file")
            d.pop("format")
            d["ts"] = torch.tensor(d["ts"], dtype=torch.float64)
            grid = cls(**d)
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
            raise UserInputError(f"{path} is not a grid file from sde-gen optimize-grid "
                                 f"({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
                                 ) from None
        if sde is not None:
            want = sde_signature(sde)
            if grid.sde and grid.sde != want:
                diff = [k for k in sorted(set(want) | set(grid.sde))
                        if want.get(k) != grid.sde.get(k)]
                if grid.sde.get("sde") != want["sde"]:
                    diff = ["sde"]
                what = ", ".join(f"{k}: {grid.sde.get(k)} there, {want.get(k)} here"
                                 for k in diff)
                raise UserInputError(f"{path} was optimized for another SDE ({what})")
            check_grid(sde, grid.ts)
        return grid


def steps_for_nfe(solver: str, nfe: int, options: dict[str, Any] | None = None) -> int:
    """Grid intervals of a ``solver`` run with ``nfe`` model calls, the final denoise included.

    Raises:
        UserInputError: an adaptive or stochastic solver, or an NFE no grid gives exactly.
    """
    spec = SOLVERS.get(solver)
    if spec is None:
        raise UserInputError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
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
def reference_endpoints(model: EpsModel, sde: SDE, x_T: torch.Tensor, eps: float,
                        ts: torch.Tensor | None = None):
    """The denoised tight-tolerance PF-ODE endpoints from ``x_T`` (and, with ``ts``, the
    trajectory at those times)."""
    grid = ts if ts is not None else torch.tensor([sde.T, eps], dtype=torch.float64)
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
def _gits_grid(model: EpsModel, sde: SDE, x_T: torch.Tensor, eps: float, steps: int,
               candidates: int) -> torch.Tensor:
    """GITS: the DDIM-cost DP over ``candidates`` log-SNR-uniform intervals."""
    cand = make_grid(sde, candidates, eps=eps, spacing="logsnr", device=x_T.device)
    _, traj = reference_endpoints(model, sde, x_T, eps, ts=cand)
    alpha, sigma = (c.to(x_T.dtype) for c in grid_coeffs(sde, cand))
    m = len(cand) - 1
    cost = torch.full((m + 1, m + 1), math.inf, dtype=torch.float64)
    flat = traj.reshape(m + 1, x_T.shape[0], -1)
    for i in range(m):
        x = traj[i]
        eps_hat = model(x, cand[i].to(x.dtype).expand(x.shape[0]))
        x0 = eps_to_x0(x, eps_hat, alpha[i], sigma[i]).reshape(x.shape[0], -1)
        e = eps_hat.reshape(x.shape[0], -1)
        for j in range(i + 1, m + 1):  # DDIM: x_j = alpha_j x0 + sigma_j eps
            step = alpha[j] * x0 + sigma[j] * e
            cost[i, j] = (step - flat[j]).norm(dim=1).mean().double()
    path = _gits_path(cost, steps)
    return cand[path].to(torch.float64)


def _descent(error, ts: torch.Tensor, sde: SDE, evals: int):
    """Powell's derivative-free descent (scipy) on the log-SNR gaps of ``ts``: the interior
    times are ``lambda_T + cumsum(softmax(theta)) (lambda_eps - lambda_T)``, so every trial is
    a valid decreasing grid with the end points fixed; at most ``evals`` error evaluations."""
    from scipy.optimize import minimize

    lam = sde.log_snr(ts.to(torch.float64))
    span = lam[-1] - lam[0]
    theta0 = torch.log((lam[1:] - lam[:-1]) / span).numpy()

    def grid(theta) -> torch.Tensor:
        w = torch.softmax(torch.as_tensor(theta, dtype=torch.float64), 0)
        lams = torch.cat([lam[:1], lam[0] + torch.cumsum(w, 0) * span])
        out = sde.t_from_log_snr(lams)
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
    eps: float | None = None,
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
        eps: the end time (default the SDE's).
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
    if spacing is not None:
        check_spacing(spacing)
    spec = SOLVERS[solver]
    opts = spec.resolve(solver, options)
    if opts.get("discrete"):
        raise UserInputError("optimize a grid in continuous time (discrete=False): the "
                             "discrete chain snaps times to its steps")
    eps = check_end_time(sde, sde.default_eps if eps is None else eps)
    start = time.perf_counter()
    draws = [sde.prior_sampling((k, *shape), generator=torch.Generator(device=device or "cpu")
                                .manual_seed(seed + i), device=device, dtype=dtype)
             for i, k in enumerate((n, n_heldout))]
    refs = [reference_endpoints(model, sde, x, eps)[0] for x in draws]

    def error(ts: torch.Tensor, which: int = 0) -> float:
        return endpoint_error(model, sde, draws[which], refs[which], solver,
                              ts.to(draws[which].device), opts)

    default = make_grid(sde, steps, eps=eps, spacing=spacing or spec.spacing_for(sde),
                        device=draws[0].device)
    init = _gits_grid(model, sde, draws[0], eps, steps, candidates) if method == "gits" \
        else default
    if method == "gits" and error(init) > error(default):
        init = default  # DDIM's local costs misled a multistep solver: descend from its default
    ts = _descent(error, init, sde, evals)
    return OptimizedGrid(
        ts=ts.cpu(), solver=solver, options={k: v for k, v in options.items()},
        nfe=spec.nfe(steps, opts), error_before=error(default), error_after=error(ts),
        heldout_before=error(default, 1), heldout_after=error(ts, 1),
        seconds=time.perf_counter() - start, method=method, sde=sde_signature(sde))
