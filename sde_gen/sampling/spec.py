"""How a solver declares itself: its options and what the package needs to know about it.

Each solver module ends with a ``SPEC = SolverSpec(...)`` next to its function; the registry
(:data:`~.solvers.SOLVERS`) is a literal dict of those, and everything else is derived from the
spec: :func:`~.sample.sample` validates and completes the options once, before dispatch (the
solver functions trust their inputs, as torchsde's solvers trust ``check_contract``), the
``sde-gen sample`` flags and the README table are generated, and the tests take each solver's
expected NFE and convergence order from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from ..errors import UserInputError
from ..sde import SDE

SolverFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
#: ``check(model, sde, ts, options)``: the contract between a solver's options and the model or
#: grid it gets (a learned variance needs a model that learns it), raising UserInputError.
SolverCheck = Callable[[Any, SDE, torch.Tensor, Mapping[str, Any]], None]


def fmt(v: Any) -> str:
    """A number as messages and help write it (``1e-05``, ``0.5``, ``3``)."""
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Option:
    """One keyword option of a solver: its type, default and range, written once.

    Attributes:
        name: the keyword (``eta``); the CLI flag is ``--eta`` unless ``flag`` says otherwise.
        type: ``bool``, ``int``, ``float``, ``str``, or ``tuple``: a sequence of finite floats
            within ``min``/``max`` (learned coefficients; no command-line flag, see
            :func:`~.solvers.solver_flags`).
        default: the value ``sample()`` passes when the option is not given (``None`` allowed:
            "not set", e.g. ``sde``'s ``method=None`` for the built-in Euler-Maruyama loop).
        help: one line for ``--help`` and the README.
        choices: the allowed values, if they are a finite set.
        min, max: the allowed range, if numeric; ``min_open`` excludes ``min`` itself.
        noun: how error messages name the option (``"torchsde method"``); default ``name``.
        flag: the CLI declaration, e.g. ``"--discrete/--continuous"`` for a boolean pair.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    noun: str | None = None
    flag: str | None = None

    @property
    def range_text(self) -> str:
        """The range as written in messages and help: ``in [0, 1]``, ``> 0``, ``>= 0`` or ``""``."""
        if self.min is not None and self.max is not None:
            return f"in {'(' if self.min_open else '['}{fmt(self.min)}, {fmt(self.max)}]"
        if self.min is not None:
            return f"{'>' if self.min_open else '>='} {fmt(self.min)}"
        return f"<= {fmt(self.max)}" if self.max is not None else ""

    def check(self, value: Any) -> None:
        """Raise :class:`~sde_gen.errors.UserInputError` unless ``value`` is a valid setting."""
        noun = self.noun or self.name
        if value is None and self.default is None:
            return
        if self.type is tuple:
            items = list(value) if isinstance(value, (list, tuple)) else None
            if items is None or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                        for v in items):
                raise UserInputError(f"{noun} must be a list of numbers, got {value!r}")
            for v in items:
                Option(self.name, float, None, "", min=self.min, max=self.max,
                       min_open=self.min_open, noun=f"each of {noun}").check(v)
            return
        numeric = self.type in (int, float)
        accepted = {bool: bool, int: int, float: (int, float)}.get(self.type, self.type)
        ok = isinstance(value, accepted) and (self.type is bool or not isinstance(value, bool))
        if not ok:
            raise UserInputError(f"{noun} must be of type {self.type.__name__}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            if self.type is str:
                raise UserInputError(f"unknown {noun} {value!r}; choose one of "
                                     f"{', '.join(map(str, self.choices))}")
            raise UserInputError(f"{noun} must be {' or '.join(map(fmt, self.choices))}, "
                                 f"got {value!r}")
        if numeric and (self.min is not None or self.max is not None):
            inside = not math.isnan(value)
            if self.min is not None:
                inside = inside and (value > self.min if self.min_open else value >= self.min)
            if self.max is not None:
                inside = inside and value <= self.max
            if not inside:
                if self.min is not None and self.max is not None:
                    raise UserInputError(f"{noun} must be {self.range_text}, got {value!r}")
                raise UserInputError(f"need {noun} {self.range_text}, got {value!r}")

    def describe(self, *, default: bool = True) -> str:
        """``help`` with the choices or range and (``default=True``) the default, for ``--help``."""
        extra = [" | ".join(map(str, self.choices))] if self.choices else []
        extra += [self.range_text] if self.range_text else []
        if default and self.default is not None:
            extra.append(f"default {fmt(self.default)}")
        return f"{self.help} ({'; '.join(extra)})" if extra else self.help


def check_options(options: tuple[Option, ...], given: Mapping[str, Any], *,
                  owner: str) -> dict[str, Any]:
    """``given`` checked against ``options`` and completed with their defaults.

    Raises:
        UserInputError: an option ``owner`` (``"solver 'ddim'"``) does not take, or an invalid
            value.
    """
    names = tuple(o.name for o in options)
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise UserInputError(f"{owner} takes no option {', '.join(map(repr, unknown))}; it "
                             f"takes: {', '.join(names) or 'none'}")
    for o in options:
        if o.name in given:
            o.check(given[o.name])
    return {o.name: given.get(o.name, o.default) for o in options}


def x0_options() -> tuple[Option, Option]:
    """``clip_sample`` and ``threshold`` (:mod:`~.thresholding`) of the solvers that form x0."""
    return (
        Option("clip_sample", float, None, "clip the x0 prediction to [-c, c] before each step "
               "(diffusers' clip_sample, c = clip_sample_range; 0: off; default: the loaded "
               "diffusers scheduler's setting, else off)", min=0.0),
        Option("threshold", float, None, "dynamic thresholding of x0 (Saharia et al. 2022) at "
               "this quantile of |x0|, s_max = clip_sample (default: the loaded diffusers "
               "scheduler's setting, else off)", min=0.0, max=1.0, min_open=True),
    )


def discrete_option(default: bool) -> Option:
    """``discrete``: step on the discrete chain's coefficients or the continuous marginal."""
    return Option("discrete", bool, default, "DDPM's discrete abar_i at snapped step times "
                  "(DDPM checkpoints, diffusers' schedulers) instead of the continuous "
                  "marginal_coeffs", flag="--discrete/--continuous")


@dataclass(frozen=True)
class SolverSpec:
    """A solver of :func:`~sde_gen.sampling.sample` and everything the package says about it.

    Attributes:
        fn: ``fn(model, sde, x_T, ts, *, <options>, generator=None, callback=None)``, returning
            ``(x, x_mean)`` at ``ts[-1]``; it trusts its options (checked by :meth:`resolve`).
        summary: what it is, one line (the README table's "what").
        options: its keyword options; ``sample()`` accepts these and no others.
        steps: default grid intervals; ``None``: ``N - 1`` (every step of the N-step chain; on
            the discrete chain, every chain step from the one nearest ``t_min`` up to ``T``).
        spacing: default grid spacing (:data:`~sde_gen.sampling.grids.SPACINGS`), or ``None``:
            the SDE's own :attr:`~sde_gen.sde.SDE.few_step_spacing` (a spacing in ``t`` means a
            different grid on each SDE: quadratic in ``t`` suits VP, log-SNR suits VE).
        stochastic: whether it draws noise after the prior: ``True``, ``False``, or the name of
            a float option that adds noise when positive (DDIM's ``eta``).
        calls_per_step: model calls per grid interval for given (complete) options, ``None``
            where the method decides (adaptive ODE solvers, most torchsde methods).
        order: the global convergence order in the step size of a deterministic run with these
            options (``None``: adaptive, stochastic, or not a fixed order); the tests check it
            as the observed slope of the error against the steps.
        x0_by_model: its ``clip_sample``/``threshold`` options are applied by ``sample()``,
            which wraps the model (:func:`~.thresholding.clip_x0_model`; exact for a solver that
            steps on the x0 prediction), instead of by ``fn`` itself (``ancestral``, ``ddim``).
        check: the contract between the options and the model or grid, if any
            (:data:`SolverCheck`), run by ``sample()`` before the first model call.
        pure_start_calls: model calls of the first interval when the grid starts where
            ``alpha = 0`` (a flow path's ``T``), if the solver takes that step otherwise than
            its own (:mod:`.pure_start`: the reverse-SDE solvers take one posterior step).
        model: the kind of model it samples: ``"eps"`` (any eps-model, every solver but one)
            or ``"consistency"`` (a distilled consistency model, :mod:`sde_gen.consistency`,
            whose last step lands on ``t_min`` itself: no final denoise).
    """

    fn: SolverFn
    summary: str
    options: tuple[Option, ...] = ()
    steps: int | None = None
    spacing: str | None = "uniform"
    stochastic: bool | str = False
    calls_per_step: Callable[[Mapping[str, Any]], int | None] = lambda options: 1
    order: int | Callable[[Mapping[str, Any]], int | None] | None = None
    x0_by_model: bool = False
    check: SolverCheck | None = None
    pure_start_calls: int | None = None
    model: str = "eps"

    @property
    def final_denoise(self) -> bool:
        """Whether ``sample(denoise=True)`` ends with Tweedie's step (not for a consistency
        model, whose output is already the sample at ``t_min``)."""
        return self.model == "eps"

    def spacing_for(self, sde: SDE) -> str:
        """The default spacing of this solver on ``sde`` (see ``spacing``)."""
        return self.spacing if self.spacing is not None else sde.few_step_spacing

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def option(self, name: str) -> Option:
        """The option called ``name`` (``KeyError`` if the solver has none)."""
        return {o.name: o for o in self.options}[name]

    def defaults(self) -> dict[str, Any]:
        """Every option at its default."""
        return {o.name: o.default for o in self.options}

    @property
    def discrete_default(self) -> bool:
        """Whether the solver walks the discrete chain unless told otherwise."""
        return "discrete" in self.option_names and bool(self.option("discrete").default)

    def resolve(self, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` checked against this spec and completed with the defaults.

        Raises:
            UserInputError: an option the solver does not take, or an invalid value.
        """
        return check_options(self.options, options, owner=f"solver {name!r}")

    def is_stochastic(self, options: Mapping[str, Any] | None = None) -> bool:
        """Whether a run with these options draws noise after the prior."""
        if isinstance(self.stochastic, bool):
            return self.stochastic
        full = self.defaults() | dict(options or {})
        return float(full[self.stochastic]) > 0

    def nfe(self, steps: int, options: Mapping[str, Any] | None = None, *,
            denoise: bool = True, pure_start: bool = False) -> int | None:
        """Model calls of a ``steps``-interval run (``None`` where the method decides);
        ``pure_start``: the grid starts where ``alpha = 0`` (see ``pure_start_calls``)."""
        per_step = self.calls_per_step(self.defaults() | dict(options or {}))
        if per_step is None:
            return None
        denoise = denoise and self.final_denoise
        if pure_start and self.pure_start_calls is not None:
            return self.pure_start_calls + per_step * (steps - 1) + int(denoise)
        return per_step * steps + int(denoise)

    def convergence_order(self, options: Mapping[str, Any] | None = None) -> int | None:
        """:attr:`order` for these options (completed with the defaults)."""
        if self.order is None or isinstance(self.order, int):
            return self.order
        return self.order(self.defaults() | dict(options or {}))
