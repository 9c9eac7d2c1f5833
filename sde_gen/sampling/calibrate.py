"""Calibration: a deterministic fast solver's time grid learned for one model at a fixed NFE.

LD3 ([Tong25ld3]) in the package's terms. The teacher is the model's own probability-flow ODE,
solved tightly (dopri5, tol 1e-7) from ``B`` prior draws and denoised
(:func:`~.optimized_grid.reference_endpoints`); the student is the solver itself on a grid of
``K`` intervals, run with autograd, ending in the same Tweedie denoise at ``t_min``. The grid's
interior times are the parameters, backpropagated through every solver step and model call:

- **Parameterization** (LD3 Sec. 3.1, written for this package): the interior times are
  ``u_i = u_T + span * cumsum(w)_i`` in ``u = log-SNR`` (``-t`` on a path with ``alpha_T = 0``,
  where the log-SNR is ``-inf``, and on a tabulated chain, whose inverse log-SNR is a
  bisection), with gaps ``w = delta + (1 - K delta) softmax(theta)``; every trial grid is
  then strictly decreasing inside ``(t_min, T)`` with its ends fixed, and no gap is below
  ``delta = 1e-4`` of the span.
- **Soft loss** (LD3 Sec. 3.2, "soft teacher forcing"): the student may start from any ``x'``
  in a ball around its draw, ``||x' - x_T|| <= r sigma_T sqrt(D)``, and the loss is the mean L2
  distance of its endpoint from ``x'`` to the teacher's endpoint from ``x_T``; ``x'`` is learned
  with ``theta`` and projected back into the ball after each step. A few parameters cannot map
  every draw onto its teacher endpoint; the relaxation stops them from chasing that. On the
  exact mixtures (a few dimensions, ~10 parameters) it did not pay, so ``radius`` defaults to 0,
  LD3's hard loss.
- **Start**: the project's GITS grid (:func:`~.optimized_grid._gits_grid`, dynamic programming
  over 64 log-SNR candidates), or the solver's default grid where that is better on the
  validation draws.
- **Selection**: the grid kept is the one of least *hard* error (from ``x_T`` itself) on all
  the draws: the tuning draws and ``n_val`` validation draws that the gradient never sees (on
  the 12-D mixtures 128 validation draws alone were too noisy to choose between the start
  grids). The start is a candidate, so the result is never worse there than where it started.

- **Step scales** (ipndm; a few learned coefficients in the spirit of PAS [Wang25pas], which
  corrects the sampling direction instead): after :data:`SCALES_AFTER` of the budget, or once
  the grid alone stops improving, one factor per interval on the solver's increment joins the
  descent, from the best grid so far. They go into ``options["step_scales"]`` (a list of
  floats, saved with the grid) only when the grid they were learned with is the one selected.
  On the tuning mixtures (5 s) they gave 0.71x the held-out error of the grid alone at 10 NFE
  (geometric mean; 8-D flow 0.54x, 8-D VP 0.56x) and 0.96x at 20 NFE, where the budget leaves
  them few steps. A full ``(K, order)`` table of weight corrections gave 0.72x and 1.18x, and
  learning them from the first step instead of after the grid lost (1.09x and 4.1x).

- **Hard-draw mining** (opt-in, :func:`teacher`'s ``mine``): the teacher screens more prior
  draws by a cheap error proxy and also solves the hardest, weighted so that the loss and the
  selection stay unbiased estimates of the mean error over the prior (:func:`_mine`). Off by
  default: it did not lower the held-out error (:data:`MINE_POOL`).

The solver's update rule and its model calls stay those of ``sample``.

Refs: [Tong25ld3] Sec. 3 (LD3); [Chen24gits] (GITS, the start); [Wang25pas] (learned solver
coefficients).
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..chain import check_t_min, grid_coeffs
from ..errors import UserInputError
from ..noise import Generator
from ..parameterization import EpsModel, eps_to_x0
from ..sde import SDE
from .driver import check_shape, plan, solver_spec
from .grids import make_grid
from .optimized_grid import _gits_grid, gits_candidates, reference_endpoints, steps_for_nfe
from .pure_start import ddim_first_step, starts_pure

__all__ = ["CALIBRATABLE", "Calibration", "Teacher", "calibrate", "default_solver", "teacher"]

#: Solvers whose function is differentiable in its grid (autograd through every step), with
#: their fixed options. Their pure-noise first step is :func:`~.pure_start.ddim_first_step`.
CALIBRATABLE: dict[str, dict[str, Any]] = {"ipndm": {"order": 3}, "deis": {"order": 3},
                                           "dpm": {"order": 3}}
#: Relative radius ``r`` of the soft loss's ball, ``r sigma_T sqrt(D)``. Default 0 (the hard
#: loss): r = 0.01 and 0.05 lost to it on 9 of the 10 tuning cases at 10 NFE
#: (benchmarks/results/fast_samplers.md, "soft loss").
SOFT_RADIUS = 0.0
#: The smallest gap in ``u`` between two grid times, as a fraction of ``u``'s span.
MIN_GAP = 1e-4
#: Default budget (seconds) of one calibration, teacher solve included.
DEFAULT_BUDGET_S = 60.0
#: The most prior draws the gradient uses (the rest of a larger ``shape[0]`` is not drawn).
MAX_DRAWS = 512
#: Tuning draws per gradient step (taken in turn): more steps in the budget. On the tuning
#: mixtures (5 s) 64 gave 0.98x (10 NFE) and 0.89x (20 NFE) the held-out error of all 256.
BATCH = 64
#: Gradient steps between two validations (selection and ``patience``): a validation pass on
#: every draw costs about a third of a step; every 4th gave 0.98x (10 NFE) and 0.80x (20 NFE)
#: the held-out error of every step on the tuning mixtures.
VAL_EVERY = 4
#: ``step_scales`` (ipndm's learned per-interval factors) join the descent, from the best grid
#: so far, after this fraction of the budget (or of ``max_iterations``), or once the grid alone
#: stops improving; their Adam step size is :data:`SCALES_LR`.
SCALES_AFTER = 0.6
SCALES_LR = 0.002
#: Hard-draw mining (:func:`teacher`'s ``mine``, :func:`_mine`): screen ``mine`` times as many
#: prior draws as are solved, and also solve the top :data:`MINE_SHARE` of them by an error
#: proxy. Off by default (``1``): on the tuning mixtures (120 steps, error on 4000 held-out
#: draws; ``benchmarks.fast_samplers --calibrated-mining``) ``mine = 8`` gave 0.98x at 10 NFE
#: and 1.14x at 20 NFE the error without it (geometric means; unseen: 1.03x, 0.98x), at 2-3x
#: the teacher's cost. What it does do is estimate the mean error over the prior better: on
#: 8-D sub-VP the plain estimate of a calibrated grid's error was 0.0122, the stratified one
#: 0.0233, and 4000 held-out draws measured 0.0221.
MINE_POOL = 1
MINE_SHARE = 1 / 32
MINE_TOL = 1e-3
MINE_STEPS = 10
#: GITS' candidate intervals (the start grid's dynamic programme).
CANDIDATES = 64
#: Draws of the GITS cost (the first of the tuning draws).
GITS_DRAWS = 64


def default_solver(nfe: int) -> str:
    """The README's fast deterministic solver at ``nfe``: ``deis`` up to 5 NFE, else ``ipndm``."""
    return "deis" if nfe <= 5 else "ipndm"


@dataclass(frozen=True)
class Calibration:
    """A learned grid and what it was measured to do.

    ``sample(model, sde, shape, cal.solver, ts=cal.ts, **cal.options)`` makes ``nfe`` model calls.

    Attributes:
        solver, options: the registered solver and its options (ipndm's learned
            ``step_scales`` among them when they were kept; JSON-serializable).
        ts: the learned grid, ``(K + 1,)`` float64, strictly decreasing from ``T`` to ``t_min``.
        nfe: model calls of one run on it, the final denoise included.
        start: where the descent started: ``"gits"`` or the solver's default spacing.
        error_start, error: mean endpoint error on the tuning and validation draws on the start
            grid and on ``ts`` (the hard error, from ``x_T`` itself; weighted by
            :attr:`Teacher.w` as an estimate of the mean over the prior).
        iterations: gradient steps taken; ``seconds``: wall time, the teacher solve included
            (not when it was given: :func:`~sde_gen.app.calibration.calibrate_run` adds its
            share).
        sde: :func:`~.grid_file.sde_signature` of the SDE it is for.
    """

    solver: str
    ts: torch.Tensor
    options: dict[str, Any]
    nfe: int
    start: str
    error_start: float
    error: float
    iterations: int
    seconds: float
    sde: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """Grid intervals (``sample --steps``)."""
        return len(self.ts) - 1


@dataclass(frozen=True)
class Teacher:
    """The tight probability-flow solve that every calibration of one model and SDE shares.

    Attributes:
        x_T, x_val: the tuning and validation prior draws (the mined hard draws last).
        ref, ref_val: their teacher endpoints (dopri5 at tol 1e-7, denoised).
        traj: the teacher's states at :func:`~.optimized_grid.gits_candidates` from the first
            :data:`GITS_DRAWS` tuning draws (GITS' edge costs).
        t_min: the end time; ``seconds``: what the solve took, the screening included.
        w, w_val: each draw's weight in the stratified estimate of the mean error over the
            prior (together they sum to 1; ``None``: equal weights).
        screened: prior draws the mining ranked (0: none).
    """

    x_T: torch.Tensor
    x_val: torch.Tensor
    ref: torch.Tensor
    ref_val: torch.Tensor
    traj: torch.Tensor
    t_min: float
    seconds: float
    w: torch.Tensor | None = None
    w_val: torch.Tensor | None = None
    screened: int = 0

    def weights(self) -> torch.Tensor:
        """The weights of ``cat([x_T, x_val])``, summing to 1."""
        n = self.x_T.shape[0] + self.x_val.shape[0]
        if self.w is None:
            return torch.full((n,), 1 / n, dtype=torch.float64, device=self.x_T.device)
        return torch.cat([self.w, self.w_val])


def teacher(model: EpsModel, sde: SDE, shape: tuple[int, ...], *, n_val: int = 128,
            generator: Generator = None, t_min: float | None = None,
            device: torch.device | str | None = None,
            dtype: torch.dtype = torch.float32, mine: int = MINE_POOL) -> Teacher:
    """Draw ``min(B, MAX_DRAWS)`` tuning and ``n_val`` validation prior draws (``shape = (B,
    *D)``; ``generator`` default seed 0), mine hard draws (``mine`` > 1, :func:`_mine`), and
    solve the model's PF-ODE from all of them at once.

    Raises:
        UserInputError: a bad shape, ``n_val``, ``mine`` or ``t_min``.
    """
    _load_optim()
    clock = time.perf_counter()
    shape = check_shape(shape)
    for name, v in (("n_val", n_val), ("mine", mine)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserInputError(f"{name} must be a positive integer, got {v!r}")
    t_min = check_t_min(sde, sde.default_t_min if t_min is None else t_min)
    if generator is None:
        generator = torch.Generator(device=device or "cpu").manual_seed(0)
    n = min(shape[0], MAX_DRAWS)
    x_T = sde.prior_sampling((n, *shape[1:]), generator=generator, device=device, dtype=dtype)
    x_val = sde.prior_sampling((n_val, *shape[1:]), generator=generator, device=device,
                               dtype=dtype)
    w = w_val = None
    screened = 0
    if mine > 1:
        x_T, x_val, w, w_val, screened = _mine(model, sde, x_T, x_val, mine, t_min, generator)
    n, n_val = x_T.shape[0], x_val.shape[0]
    cand = gits_candidates(sde, t_min, CANDIDATES, device=x_T.device)
    ref, traj = reference_endpoints(model, sde, torch.cat([x_T, x_val]), t_min, ts=cand)
    ref, ref_val = ref.split([n, n_val])
    return Teacher(x_T, x_val, ref, ref_val, traj[:, :min(n, GITS_DRAWS)], t_min,
                   time.perf_counter() - clock, w, w_val, screened)


@torch.no_grad()
def _mine(model: EpsModel, sde: SDE, x_T: torch.Tensor, x_val: torch.Tensor, mine: int,
          t_min: float, generator: Generator):
    """Stratified sampling of the prior by a cheap error proxy (written for this package).

    A few prior draws near a decision boundary between modes carry most of a fast solver's mean
    error (on the unseen 12-D VE mixture, 3 of 500 draws: 85 % of it at 10 NFE), and ``B`` plain
    draws hold too few of them for the grid to learn to route them. The pool ``P``: the tuning
    and validation draws and ``(mine - 1)`` times as many more. Proxy: the distance between the
    endpoints of ipndm on its default :data:`MINE_STEPS`-step grid and of a loose adaptive solve
    (dopri5, :data:`MINE_TOL`). The hard stratum ``H``: the top :data:`MINE_SHARE` of ``P``; its
    new draws join the tuning and validation draws in their proportion. Weights: ``1 / |P|`` on
    each draw of ``H`` (all of ``H`` is solved), ``(|P| - |H|) / (|P| |E|)`` on each of the ``E``
    plain draws outside ``H``: the weighted mean error is an unbiased estimate of the mean over
    the prior.

    Returns: ``(x_T, x_val, w, w_val, |P|)``.
    """
    from .sample import sample

    n, n_val = x_T.shape[0], x_val.shape[0]
    extra = sde.prior_sampling(((mine - 1) * (n + n_val), *x_T.shape[1:]), generator=generator,
                               device=x_T.device, dtype=x_T.dtype)
    pool = torch.cat([x_T, x_val, extra])
    loose = sample(model, sde, None, "ode", x_T=pool, t_min=t_min, rtol=MINE_TOL,
                   atol=MINE_TOL).x
    coarse = sample(model, sde, None, "ipndm", x_T=pool, t_min=t_min, steps=MINE_STEPS,
                    order=3).x
    proxy = (coarse - loose).reshape(len(pool), -1).norm(dim=1)
    proxy = torch.where(torch.isfinite(proxy), proxy, torch.full_like(proxy, math.inf))
    h = max(1, round(MINE_SHARE * len(pool)))
    hard = torch.zeros(len(pool), dtype=torch.bool, device=pool.device)
    hard[proxy.topk(h).indices] = True
    new = torch.nonzero(hard[n + n_val:]).flatten() + n + n_val
    new = new[proxy[new].argsort(descending=True)]
    # every (n + n_val) / n_val-th new hard draw validates, the rest tune
    k = torch.arange(len(new), device=pool.device)
    to_val = (k + 1) * n_val // (n + n_val) > k * n_val // (n + n_val)
    w_hard = 1 / len(pool)
    w_easy = (len(pool) - h) / (len(pool) * max(int((~hard[:n + n_val]).sum()), 1))
    w = torch.full((n + n_val,), w_easy, dtype=torch.float64, device=pool.device)
    w[hard[:n + n_val]] = w_hard
    w = torch.cat([w, torch.full((len(new),), w_hard, dtype=torch.float64, device=w.device)])
    w_T, w_val = w[:n], w[n:n + n_val]
    w_T = torch.cat([w_T, w[n + n_val:][~to_val]])
    w_val = torch.cat([w_val, w[n + n_val:][to_val]])
    return (torch.cat([x_T, pool[new[~to_val]]]), torch.cat([x_val, pool[new[to_val]]]),
            w_T, w_val, len(pool))


def _check_budget(budget_s: object) -> float:
    if budget_s is None:
        return DEFAULT_BUDGET_S
    ok = isinstance(budget_s, (int, float)) and not isinstance(budget_s, bool)
    if not ok or not math.isfinite(budget_s) or budget_s <= 0:
        raise UserInputError(f"the calibration budget must be a positive number of seconds, got "
                             f"{budget_s!r}")
    return float(budget_s)


def check_calibration_input(solver: str | None, nfe: object, budget_s: object = None
                            ) -> tuple[str, int, float]:
    """``(solver, steps, budget)`` for a calibration, checked before any work.

    Raises:
        UserInputError: a solver that cannot be calibrated, an NFE it cannot make exactly, or a
            budget that is not a positive finite number.
    """
    if isinstance(nfe, bool) or not isinstance(nfe, int):
        raise UserInputError(f"nfe must be an integer, got {nfe!r}")
    solver = default_solver(nfe) if solver is None else solver
    solver_spec(solver)
    if solver not in CALIBRATABLE:
        raise UserInputError(f"solver {solver!r} cannot be calibrated; choose one of "
                             f"{', '.join(CALIBRATABLE)}")
    steps = steps_for_nfe(solver, nfe, CALIBRATABLE[solver])
    return solver, steps, _check_budget(budget_s)


def _u_map_t():
    return (lambda t: -t), (lambda u: -u)


def _u_map(sde: SDE):
    """``(to_u, from_u)``: log-SNR, or ``-t`` on a path whose log-SNR is ``-inf`` at ``T``."""
    if sde.pure_noise_at_T:
        return _u_map_t()
    return sde.log_snr, sde.t_from_log_snr


class _Grid:
    """The LD3 parameterization of a grid with fixed ends (module docstring)."""

    def __init__(self, sde: SDE, ts: torch.Tensor) -> None:
        self.to_u, self.from_u = _u_map(sde)
        self.ends = ts[[0, -1]].to(torch.float64)
        u = self.to_u(self.ends)
        if self.from_u(u[1:].clone().requires_grad_(True)).grad_fn is None:
            # an inverse without a gradient (a tabulated chain's bisection): gaps in t instead
            self.to_u, self.from_u = _u_map_t()
            u = self.to_u(self.ends)
        self.u0, self.span = u[0], u[1] - u[0]
        k = len(ts) - 1
        self.delta = MIN_GAP if k * MIN_GAP < 0.5 else 0.5 / k
        gaps = (self.to_u(ts.to(torch.float64)).diff() / self.span - self.delta)
        self.theta0 = torch.log(gaps.clamp(min=1e-12) / (1 - k * self.delta))

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        k = theta.shape[0]
        w = self.delta + (1 - k * self.delta) * torch.softmax(theta, 0)
        inner = self.from_u(self.u0 + self.span * torch.cumsum(w, 0)[:-1])
        return torch.cat([self.ends[:1], inner, self.ends[1:]])


def _student(fn, model: EpsModel, sde: SDE, x: torch.Tensor, ts: torch.Tensor,
             options: dict[str, Any]) -> torch.Tensor:
    """The solver on ``ts`` then Tweedie's denoise at ``ts[-1]``, differentiable in ``ts`` and
    ``x`` (what ``sample(..., ts=ts, **options).x`` computes, with autograd)."""
    if starts_pure(sde, ts):  # as the solvers do: the first step's finite limit, then the rest
        x = ddim_first_step(model, sde, x, ts)
        rest = ts[1:]
        if options.get("step_scales") is not None:  # the first step takes none (ipndm)
            options = {**options, "step_scales": options["step_scales"][1:]}
    else:
        rest = ts
    if len(rest) > 1:
        x, _ = fn(model, sde, x, rest, **options)
    alpha, sigma = (c[-1].to(x.dtype) for c in grid_coeffs(sde, ts[-1:]))
    return eps_to_x0(x, model(x, ts[-1].to(x.dtype).expand(x.shape[0])), alpha, sigma)


@functools.cache
def _load_optim() -> None:
    """Build one ``torch.optim.Adam``: its first construction imports ``torch._dynamo`` (1.5-4 s
    on a 2-core CPU), paid once per process before any calibration's clock starts."""
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def _adam(params: list[torch.Tensor], lrs: list[float]) -> torch.optim.Adam:
    """Adam ([Kingma15] Alg. 1) with one step size per tensor."""
    return torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)])


def _step(adam: torch.optim.Adam, params: list[torch.Tensor], grads) -> None:
    for p, g in zip(params, grads):
        p.grad = g
    adam.step()


def _distance(x: torch.Tensor, ref: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The ``w``-weighted mean L2 distance of the rows of ``x`` and ``ref``."""
    e = (x - ref).reshape(x.shape[0], -1).norm(dim=1)
    return (e * w.to(e.dtype)).sum() / w.sum().to(e.dtype)


def calibrate(
    model: EpsModel,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    nfe: int,
    solver: str | None = None,
    budget_s: float | None = None,
    generator: Generator = None,
    t_min: float | None = None,
    n_val: int = 128,
    radius: float = SOFT_RADIUS,
    lr: float = 0.05,
    max_iterations: int = 300,
    patience: int = 40,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    given_teacher: Teacher | None = None,
    step_scales: bool = True,
) -> Calibration:
    """Learn the time grid of ``solver`` at ``nfe`` model calls for ``model`` (LD3, see the
    module docstring).

    Args:
        model: eps-model ``model(x, t)``, differentiable in ``x`` (and ideally in ``t``).
        shape: ``(B, *D)``: ``B`` prior draws to calibrate on (at most :data:`MAX_DRAWS` are
            used), of shape ``D``; the same ``shape`` as the ``sample`` calls it is for.
        nfe: model calls per sample, the final denoise included.
        solver: a key of :data:`CALIBRATABLE` (default :func:`default_solver`).
        budget_s: wall-clock seconds for the whole calibration, teacher solves included
            (default :data:`DEFAULT_BUDGET_S`); the descent stops when it is spent.
        generator: source of the prior draws (default seed 0).
        t_min: the end time (default the SDE's).
        n_val: validation draws (drawn after the tuning draws; the grid is selected on these and
            the tuning draws).
        radius: ``r`` of the soft loss's ball ``r sigma_T sqrt(D)`` (0: LD3's hard loss).
        lr: Adam's step size on the grid logits (the ball's points take ``lr r sigma_T``).
        max_iterations, patience: at most this many gradient steps; stop after ``patience``
            validations (one every :data:`VAL_EVERY` steps) without a better error.
        given_teacher: a :func:`teacher` solve to reuse (several NFEs of one model); its draws
            and end time then replace ``shape[0]``, ``generator``, ``t_min`` and ``n_val``.
        step_scales: for a solver with a ``step_scales`` option (ipndm), learn it too in the
            second phase of the descent (:data:`SCALES_AFTER`); kept only where it lowers the
            error on all the draws.

    Returns:
        :class:`Calibration`.

    Raises:
        UserInputError: a solver that cannot be calibrated, an NFE it cannot make exactly, a
            budget that is not a positive number, a bad shape or ``t_min``.

    Shapes: draws ``(B, *D)``.

    Refs: [Tong25ld3] Sec. 3.
    """
    _load_optim()
    start_clock = time.perf_counter()
    solver, steps, budget = check_calibration_input(solver, nfe, budget_s)
    if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius >= 0):
        raise UserInputError(f"radius must be a finite number >= 0, got {radius!r}")
    if given_teacher is None:
        given_teacher = teacher(model, sde, shape, n_val=n_val, generator=generator,
                                t_min=t_min, device=device, dtype=dtype)
    tch = given_teacher
    t_min, x_T, x_val, ref, ref_val = tch.t_min, tch.x_T, tch.x_val, tch.ref, tch.ref_val
    n = x_T.shape[0]
    options = dict(CALIBRATABLE[solver])
    spec = solver_spec(solver)
    fn = inspect.unwrap(spec.fn)  # the solver function without its no_grad decorator

    x_all, ref_all = torch.cat([x_T, x_val]), torch.cat([ref, ref_val])
    w_all = tch.weights().to(x_all.device)
    # mined hard draws come last: a fixed shuffled order spreads them over the minibatches
    order = (torch.arange(n) if tch.w is None
             else torch.randperm(n, generator=torch.Generator().manual_seed(0))).to(x_all.device)

    @torch.no_grad()
    def val_error(ts: torch.Tensor, opts: dict[str, Any] = options) -> float:
        # the hard error on every draw (less noise), weighted as the prior's mean
        e = _distance(_student(fn, model, sde, x_all, ts.to(x_all.device), opts), ref_all,
                      w_all)
        return float(e) if torch.isfinite(e) else math.inf

    default = make_grid(sde, steps, t_min=t_min, spacing=spec.spacing_for(sde))
    candidates = [(spec.spacing_for(sde), default)]
    if 2 <= steps < CANDIDATES:
        gits = _gits_grid(model, sde, x_T[:tch.traj.shape[1]], t_min, steps, CANDIDATES,
                          traj=tch.traj).cpu()
        candidates.append(("gits", gits))
    scored = [(val_error(ts), name, ts) for name, ts in candidates]
    err_start, start, ts0 = min(scored, key=lambda s: s[0])
    best_err, best_ts, it = err_start, ts0, 0
    plan(model, sde, solver, options, ts=ts0)  # the grid and options pass sample()'s checks
    learn_scales = step_scales and "step_scales" in spec.option_names
    if steps >= 2:
        grid = _Grid(sde, ts0)
        theta = grid.theta0.clone().requires_grad_(True)
        sigma_T = float(grid_coeffs(sde, ts0[:1]).sigma[0])
        ball = radius * sigma_T * math.sqrt(x_T[0].numel())
        x_soft = x_T.clone().requires_grad_(ball > 0)
        params = [theta] + ([x_soft] if ball > 0 else [])
        adam = _adam(params, [lr, lr * ball / math.sqrt(x_T[0].numel())][:len(params)])
        scales = None  # phase 2: (K,) step scales, learned with the grid from the best grid
        best_theta, best_scales = theta.detach().clone(), None
        rows_per_step = min(BATCH, n)
        since_best = 0
        while it < max_iterations:
            late = (time.perf_counter() - start_clock > SCALES_AFTER * budget
                    or it >= SCALES_AFTER * max_iterations)
            if learn_scales and scales is None and (since_best >= patience or late):
                with torch.no_grad():
                    theta.copy_(best_theta)
                scales = torch.ones(steps, dtype=torch.float64, requires_grad=True)
                params = [theta, scales] + ([x_soft] if ball > 0 else [])
                adam = _adam(params, [lr, SCALES_LR, lr * ball / math.sqrt(x_T[0].numel())
                                      ][:len(params)])
                since_best = 0
            if since_best >= patience or time.perf_counter() - start_clock > budget:
                break
            opts = options if scales is None else {**options, "step_scales": scales}
            # a minibatch of the tuning draws, in turn
            rows = order[torch.arange(it * rows_per_step, (it + 1) * rows_per_step) % n]
            loss = _distance(_student(fn, model, sde, x_soft[rows], grid(theta).to(x_T.device),
                                      opts), ref[rows], w_all[rows])
            if not torch.isfinite(loss):
                break
            # the model's own parameters get no .grad: only theta (and x') are differentiated
            _step(adam, params, torch.autograd.grad(loss, params))
            it += 1
            with torch.no_grad():
                if scales is not None:  # inside step_scales' range, far from a sign flip
                    scales.clamp_(0.5, 2.0)
                if ball > 0:  # project x' back into the ball around x_T
                    d = x_soft - x_T
                    norm = d.reshape(n, -1).norm(dim=1).clamp(min=ball)
                    x_soft.copy_(x_T + d * (ball / norm).reshape(-1, *[1] * (d.ndim - 1)))
            if it % VAL_EVERY:
                continue
            with torch.no_grad():
                ts = grid(theta).detach()
                e = val_error(ts, opts)
            if e < best_err:
                best_err, best_ts, since_best = e, ts, 0
                best_theta = theta.detach().clone()
                best_scales = None if scales is None else scales.detach().clone()
            else:
                since_best += 1
    if best_scales is not None:
        options = {**options, "step_scales": [float(v) for v in best_scales]}
    return Calibration(solver=solver, ts=best_ts.detach().cpu().to(torch.float64),
                       options=options, nfe=spec.nfe(steps, options), start=start,
                       error_start=err_start, error=best_err, iterations=it,
                       seconds=time.perf_counter() - start_clock, sde=_signature(sde))


def _signature(sde: SDE) -> dict[str, Any]:
    from .grid_file import sde_signature

    return sde_signature(sde)
