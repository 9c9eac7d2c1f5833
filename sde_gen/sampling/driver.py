"""The one sampling driver: what :func:`~.sample.sample`, :func:`~.impute.impute` and the SMC
sampler share.

A run is checked completely before the first model call (the solver and its options against its
spec, the shape or the given ``x_T``, the grid, the solver's contract with the model), then
walked with the model wrapped once: counted (the reported NFE; the first output's shape checked),
and, for solvers that step on x0, clipped. The pieces:

- :func:`plan`: a :class:`SolverRun` (solver, complete options, grid, wrapped model);
- :func:`draw_prior`: ``x_T`` drawn or checked;
- :func:`time_grid_for`: the grid from ``steps`` / ``t_min`` / ``spacing`` or an explicit ``ts``;
- :class:`Progress`: the progress bar and the trajectory, as one per-step callback;
- :meth:`SolverRun.denoise`: Tweedie's final step at ``ts[-1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from ..chain import chain_times, check_t_min, grid_coeffs, snap_to_steps
from ..errors import UserInputError
from ..noise import Generator
from ..parameterization import CountingModel, EpsModel, eps_to_x0, model_prediction, predicts_x0
from ..sde import SDE
from .grids import check_grid, check_spacing, discrete_grid, make_grid
from .pure_start import starts_pure
from .result import Callback
from .solvers import SOLVERS
from .spec import SolverSpec
from .thresholding import clip_x0_model, process_x0

__all__ = ["Progress", "SolverRun", "check_device", "check_pure_start", "check_shape",
           "check_steps", "draw_prior", "plan", "solver_spec", "time_grid_for"]

#: dtypes a solver state may have.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def solver_spec(solver: object) -> SolverSpec:
    """The registered spec of ``solver``, or a one-line error naming the choices."""
    spec = SOLVERS.get(solver) if isinstance(solver, str) else None
    if spec is None:
        raise UserInputError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    return spec


def check_shape(shape: Any) -> tuple[int, ...]:
    """``shape`` as ``(B, *D)`` of positive ints, else a one-line error."""
    try:
        if any(isinstance(s, (float, str, bool)) for s in shape):
            raise TypeError
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise UserInputError(f"shape must be a tuple of ints (B, *D), got {shape!r}") from None
    if len(shape) < 2 or min(shape) < 1:
        raise UserInputError(f"shape must be (B, *D) with positive sizes, got {shape}")
    return shape


def check_steps(steps: object) -> int | None:
    """``steps`` if it is ``None`` or a positive int, else a one-line error."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise UserInputError(f"steps must be a positive integer, got {steps!r}")
    return steps


def _check_dtype(dtype: object) -> torch.dtype:
    if dtype not in FLOAT_DTYPES:
        raise UserInputError(f"dtype must be a real floating type "
                             f"({', '.join(str(d) for d in FLOAT_DTYPES)}), got {dtype}")
    return dtype  # type: ignore[return-value]


def check_device(device: torch.device | str | None) -> None:
    """A device that holds data (``meta`` does not), else a one-line error."""
    try:
        kind = torch.device(device).type if device is not None else "cpu"
    except (RuntimeError, TypeError):
        raise UserInputError(f"unknown device {device!r}") from None
    if kind == "meta":
        raise UserInputError("device 'meta' holds no data; sample on cpu or cuda")


def draw_prior(sde: SDE, shape: Any, *, x_T: torch.Tensor | None = None,
               generator: Generator = None, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``x_T``: drawn from the prior (``shape``, ``dtype``, ``device``), or the given one checked
    (a non-empty real floating ``(B, *D)`` tensor of finite values; its dtype and device win).

    Raises:
        UserInputError: a bad shape or dtype, an ``x_T`` that is not a finite floating tensor,
            or one that disagrees with ``shape``.
    """
    if x_T is None:
        check_device(device)
        return sde.prior_sampling(check_shape(shape), generator=generator, device=device,
                                  dtype=_check_dtype(dtype))
    if not torch.is_tensor(x_T) or x_T.ndim < 2 or x_T.numel() == 0:
        got = tuple(x_T.shape) if torch.is_tensor(x_T) else type(x_T).__name__
        raise UserInputError(f"x_T must be a non-empty (B, *D) tensor, got {got}")
    if x_T.dtype not in FLOAT_DTYPES:
        raise UserInputError(f"x_T must be a real floating-point tensor, got {x_T.dtype}")
    check_device(x_T.device)
    if shape is not None and tuple(shape) != tuple(x_T.shape):
        raise UserInputError(f"shape {tuple(shape)} does not match x_T's {tuple(x_T.shape)}; "
                             f"pass None")
    if not bool(torch.isfinite(x_T).all()):
        raise UserInputError("x_T has NaN or infinite values")
    return x_T


def time_grid_for(
    sde: SDE,
    *,
    steps: int | None = None,
    t_min: float | None = None,
    spacing: str | None = None,
    ts: Any = None,
    default_steps: int | None,
    default_spacing: str,
    discrete: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The grid a run walks: ``ts`` checked (and snapped to the chain when ``discrete``), or
    ``steps`` intervals (default ``default_steps``; ``None``: ``N - 1``, or every chain step when
    ``discrete``) from ``T`` to ``t_min`` (default the SDE's) with ``spacing`` (default
    ``default_spacing``).

    Raises:
        UserInputError: ``ts`` together with ``steps``/``t_min``/``spacing``; a bad ``ts``,
            ``steps``, ``t_min`` or ``spacing``; more steps than fit on the chain.
    """
    if ts is not None:
        given = [k for k, v in (("steps", steps), ("t_min", t_min), ("spacing", spacing))
                 if v is not None]
        if given:
            raise UserInputError(f"pass either ts or {'/'.join(given)}, not both")
        ts = check_grid(sde, ts, discrete=discrete).to(device)
        return snap_to_steps(sde, ts) if discrete else ts
    t_end = check_t_min(sde, sde.default_t_min if t_min is None else t_min)
    check_steps(steps)
    spacing = check_spacing(default_spacing if spacing is None else spacing)
    n = default_steps if steps is None else steps
    if not discrete:
        return make_grid(sde, max(sde.N - 1, 1) if n is None else n, t_min=t_end,
                         spacing=spacing, device=device)
    if steps is None and n is not None and n >= len(chain_times(sde, t_end)) - 1:
        n = None  # a default longer than the chain between t_min and T: every chain step
    return discrete_grid(sde, n, t_min=t_end, spacing=spacing, device=device)


@dataclass
class SolverRun:
    """A checked solver run: the solver, its complete options, the grid and the wrapped model.

    Attributes:
        solver, spec: the registered name and its spec.
        options: every option of the solver, validated and completed with the defaults.
        sde, ts: the SDE and the grid (float64, decreasing; on the chain when ``discrete``).
        counted: the caller's model, counted (the NFE) and checked at its first call.
        generator: the source of all randomness.
    """

    solver: str
    spec: SolverSpec
    options: dict[str, Any]
    sde: SDE
    ts: torch.Tensor
    counted: CountingModel
    generator: Generator = None
    _model: Any = field(default=None, repr=False)

    @property
    def discrete(self) -> bool:
        return bool(self.options.get("discrete", False))

    @property
    def model(self) -> EpsModel:
        """What the solver function calls: ``counted``, with x0 clipping for the solvers that
        take it through the model (``SolverSpec.x0_by_model``)."""
        if self._model is None:
            self._model = self.counted
            if self.spec.x0_by_model:
                self._model = clip_x0_model(self.counted, self.sde,
                                            clip_sample=self.options.get("clip_sample"),
                                            threshold=self.options.get("threshold"))
        return self._model

    @property
    def solver_options(self) -> dict[str, Any]:
        """The keyword options the solver function receives."""
        if not self.spec.x0_by_model:
            return self.options
        return {k: v for k, v in self.options.items() if k not in ("clip_sample", "threshold")}

    def step(self, x: torch.Tensor, ts: torch.Tensor | None = None, *,
             callback: Callback | None = None,
             options: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The solver from ``ts[0]`` to ``ts[-1]`` (default the whole grid) on the state ``x``;
        ``options`` overrides some of the solver's options (impute's split PC steps)."""
        ts = self.ts if ts is None else ts
        opts = self.solver_options if options is None else {**self.solver_options, **options}
        return self.spec.fn(self.model, self.sde, x, ts, generator=self.generator,
                            callback=callback, **opts)

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """Tweedie's ``x0 = (x - sigma eps) / alpha`` at ``ts[-1]`` with the solver's own
        coefficients (one counted call; for VP DDPM's last step ``x_1 -> x_0``), clipped as the
        solver clips x0."""
        alpha, sigma = (c[-1].to(x.dtype) for c in grid_coeffs(self.sde, self.ts[-1:],
                                                               discrete=self.discrete))
        t = self.ts[-1].to(x.dtype).expand(x.shape[0])
        x0 = eps_to_x0(x, self.counted(x, t), alpha, sigma)
        return process_x0(x0, clip_sample=self.options.get("clip_sample"),
                          threshold=self.options.get("threshold"))


def check_pure_start(model: Any, sde: SDE, ts: torch.Tensor) -> None:
    """A grid that starts where ``alpha = 0`` (a flow path's ``T``) needs a model that gives its
    own x0 there (:func:`~sde_gen.parameterization.predicts_x0`): refused up front otherwise.

    Raises:
        UserInputError: naming the model and what to do.
    """
    if starts_pure(sde, ts) and not predicts_x0(model):
        model_prediction(model, None, None)  # raises its one-line explanation


def plan(
    model: EpsModel,
    sde: SDE,
    solver: str,
    options: Mapping[str, Any],
    *,
    steps: int | None = None,
    t_min: float | None = None,
    spacing: str | None = None,
    ts: Any = None,
    generator: Generator = None,
    device: torch.device | str | None = None,
) -> SolverRun:
    """Check a solver run and set it up (see the module docstring): the solver and its options,
    the grid (:func:`time_grid_for` with the solver's defaults) and the solver's contract with
    the model and grid (``SolverSpec.check``).

    Raises:
        UserInputError: an unknown solver, an option it does not take or a bad value, a bad
            grid, or a model the options do not fit.
    """
    spec = solver_spec(solver)
    opts = spec.resolve(solver, options)
    if opts.get("discrete"):
        sde.check_discrete_chain()  # the flow paths have none: one line, before any work
    grid = time_grid_for(sde, steps=steps, t_min=t_min, spacing=spacing, ts=ts,
                         default_steps=spec.steps, default_spacing=spec.spacing_for(sde),
                         discrete=bool(opts.get("discrete", False)), device=device)
    if spec.check is not None:
        spec.check(model, sde, grid, opts)
    if spec.model == "eps":  # a consistency model maps x_T itself (no x0 from eps at T)
        check_pure_start(model, sde, grid)
    return SolverRun(solver, spec, opts, sde, grid, CountingModel(model), generator)


class Progress:
    """A run's per-step callback: a progress bar over the grid's intervals and, when asked, the
    state at every grid time (the trajectory).

    Use as a context manager; :attr:`callback` is ``None`` when there is nothing to do.
    """

    def __init__(self, steps: int, *, desc: str, show: bool = False,
                 x_T: torch.Tensor | None = None) -> None:
        self.states: list[torch.Tensor] = [] if x_T is None else [x_T]
        self._keep = x_T is not None
        self._bar = None
        if show:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=steps, desc=desc, unit="step")

    @property
    def callback(self) -> Callback | None:
        return self._step if self._keep or self._bar is not None else None

    def _step(self, k: int, x: torch.Tensor, x_mean: torch.Tensor) -> None:
        if self._keep:
            self.states.append(x)
        if self._bar is not None:
            self._bar.update(1)

    def update(self) -> None:
        """One interval done (for loops that step the solver themselves)."""
        if self._bar is not None:
            self._bar.update(1)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def trajectory(self, solver: str, n_times: int) -> torch.Tensor | None:
        """The states at every grid time ``(n_times, B, *D)``, or ``None`` when not kept.

        Raises:
            RuntimeError: the solver reported another number of steps (a solver bug).
        """
        if not self._keep:
            return None
        if len(self.states) != n_times:
            raise RuntimeError(f"solver {solver!r} reported {len(self.states) - 1} of its "
                               f"{n_times - 1} steps")
        return torch.stack(self.states)
