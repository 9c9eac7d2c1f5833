"""The solver registry: every solver of :func:`~sde_gen.sampling.sample` in one literal table.

Each :data:`SOLVERS` entry is a :class:`SolverSpec`: the function, its options (name, type,
default, range or choices, help), the default grid (intervals and spacing), whether it draws
noise, and how many model calls it makes per grid interval. Everything else is derived from it:
``sample()`` validates and fills in the options, the ``sde-gen sample`` command builds its solver
flags and their help, :func:`solver_table` writes the README's solver table (a test keeps the two
equal), and the tests and benchmarks parametrize over it. Adding a solver is one entry here plus
its function ``fn(model, sde, x_T, ts, *, <options>, generator=None, callback=None)``, which
returns ``(x, x_mean)`` at ``ts[-1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from ..errors import UserInputError
from ..sde import SDE, SDES
from .ancestral import VARIANCES, sample_ancestral
from .ddim import sample_ddim
from .deis import sample_deis
from .dpm import VARIANTS as DPM_VARIANTS, sample_dpm
from .ipndm import sample_ipndm
from .ode import ADAPTIVE, FIXED, sample_heun, sample_ode
from .sde_solvers import CORRECTORS, PREDICTORS, sample_pc, sample_sde
from .torchsde_backend import METHODS as TORCHSDE_METHODS
from .unipc import VARIANTS as UNIPC_VARIANTS, sample_unipc

SolverFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Option:
    """One keyword option of a solver.

    Attributes:
        name: the keyword (``eta``); the CLI flag is ``--eta`` unless ``flag`` says otherwise.
        type: ``bool``, ``int``, ``float`` or ``str``.
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
            return f"in {'(' if self.min_open else '['}{_fmt(self.min)}, {_fmt(self.max)}]"
        if self.min is not None:
            return f"{'>' if self.min_open else '>='} {_fmt(self.min)}"
        return f"<= {_fmt(self.max)}" if self.max is not None else ""

    def check(self, value: Any) -> None:
        """Raise :class:`~sde_gen.errors.UserInputError` unless ``value`` is a valid setting."""
        noun = self.noun or self.name
        if value is None and self.default is None:
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
            raise UserInputError(f"{noun} must be {' or '.join(map(_fmt, self.choices))}, "
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
            extra.append(f"default {_fmt(self.default)}")
        return f"{self.help} ({'; '.join(extra)})" if extra else self.help


@dataclass(frozen=True)
class SolverSpec:
    """A solver of :func:`~sde_gen.sampling.sample` and everything the package says about it.

    Attributes:
        fn: ``fn(model, sde, x_T, ts, *, <options>, generator=None, callback=None)``, returning
            ``(x, x_mean)`` at ``ts[-1]``.
        summary: what it is, one line (the README table's "what").
        options: its keyword options; ``sample()`` accepts these and no others.
        steps: default grid intervals; ``None``: ``N - 1`` (every step of the N-step chain; on
            the discrete chain, every chain step from the one nearest ``eps`` up to ``T``).
        spacing: default grid spacing (:data:`~sde_gen.sampling.grids.SPACINGS`), or one per
            SDE: a mapping from the names of :data:`~sde_gen.sde.SDES` (``vp``, ``subvp``,
            ``ve``) to spacings, read with :meth:`spacing_for` (a spacing in ``t`` means a
            different grid on each SDE: quadratic in ``t`` suits VP, log-SNR suits VE).
        stochastic: whether it draws noise after the prior: ``True``, ``False``, or the name of
            a float option that adds noise when positive (DDIM's ``eta``).
        calls_per_step: model calls per grid interval for given (complete) options, ``None``
            where the method decides (adaptive ODE solvers, most torchsde methods).
        x0_by_model: its ``clip_sample``/``threshold`` options are applied by ``sample()``,
            which wraps the model (:func:`~.thresholding.clip_x0_model`; exact for a solver that
            steps on the x0 prediction), instead of by ``fn`` itself (``ancestral``, ``ddim``).
    """

    fn: SolverFn
    summary: str
    options: tuple[Option, ...] = ()
    steps: int | None = None
    spacing: str | Mapping[str, str] = "uniform"
    stochastic: bool | str = False
    calls_per_step: Callable[[dict[str, Any]], int | None] = lambda options: 1
    x0_by_model: bool = False

    def spacing_for(self, sde: SDE) -> str:
        """The default spacing of this solver on ``sde`` (see ``spacing``)."""
        if isinstance(self.spacing, str):
            return self.spacing
        name = next((k for k, cls in SDES.items() if type(sde) is cls), None)
        if name is None:  # a subclass or a user's SDE: the first registered base class
            name = next((k for k, cls in SDES.items() if isinstance(sde, cls)), None)
        return self.spacing.get(name, self.spacing.get("default", "logsnr"))

    @property
    def spacings(self) -> tuple[str, ...]:
        """Every spacing this solver may default to."""
        return (self.spacing,) if isinstance(self.spacing, str) else tuple(self.spacing.values())

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def option(self, name: str) -> Option:
        """The option called ``name`` (``KeyError`` if the solver has none)."""
        return {o.name: o for o in self.options}[name]

    @property
    def discrete_default(self) -> bool:
        """Whether the solver walks the discrete chain unless told otherwise."""
        return "discrete" in self.option_names and bool(self.option("discrete").default)

    def resolve(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` checked against this spec and completed with the defaults.

        Raises:
            UserInputError: an option the solver does not take, or an invalid value.
        """
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            raise UserInputError(f"solver {name!r} takes no option {', '.join(map(repr, unknown))}"
                                 f"; it takes: {', '.join(self.option_names) or 'none'}")
        for o in self.options:
            if o.name in options:
                o.check(options[o.name])
        return {o.name: options.get(o.name, o.default) for o in self.options}

    def is_stochastic(self, options: dict[str, Any] | None = None) -> bool:
        """Whether a run with these options draws noise after the prior."""
        if isinstance(self.stochastic, bool):
            return self.stochastic
        opts = options or {}
        return float(opts.get(self.stochastic, self.option(self.stochastic).default)) > 0

    def nfe(self, steps: int, options: dict[str, Any] | None = None, *,
            denoise: bool = True) -> int | None:
        """Model calls of a ``steps``-interval run (``None`` where the method decides)."""
        full = {o.name: o.default for o in self.options} | dict(options or {})
        per_step = self.calls_per_step(full)
        return None if per_step is None else per_step * steps + int(denoise)


def _x0_options() -> tuple[Option, Option]:
    """``clip_sample`` and ``threshold`` (:mod:`~.thresholding`) of the solvers that form x0."""
    return (
        Option("clip_sample", float, None, "clip the x0 prediction to [-c, c] before each step "
               "(diffusers' clip_sample, c = clip_sample_range; 0: off; default: the loaded "
               "diffusers scheduler's setting, else off)", min=0.0),
        Option("threshold", float, None, "dynamic thresholding of x0 (Saharia et al. 2022) at "
               "this quantile of |x0|, s_max = clip_sample (default: the loaded diffusers "
               "scheduler's setting, else off)", min=0.0, max=1.0, min_open=True),
    )


def _discrete(default: bool) -> Option:
    return Option("discrete", bool, default, "DDPM's discrete abar_i at snapped step times "
                  "(DDPM checkpoints, diffusers' schedulers) instead of the continuous "
                  "marginal_coeffs", flag="--discrete/--continuous")


#: Model calls per step of the fixed-step torchdiffeq methods (the rest: the method decides).
_ODE_STAGES = {"euler": 1, "midpoint": 2, "rk4": 4}
#: Model calls per step of the ``sde`` methods (None: the loop; not listed: the method decides).
_SDE_CALLS = {None: 1, "euler": 1, "milstein": 1, "euler_heun": 1, "midpoint": 2, "heun": 2}

#: Quadratic in t for VP and sub-VP (DDIM's CIFAR grid, [Song21ddim] App. D.2), log-SNR for VE
#: (where t is linear in log sigma): the best built-in spacing of unipc, ipndm and deis at 5-20
#: NFE on the tuning mixtures of benchmarks/results/fast_samplers.md, by 1.5-3x on VP.
QUADRATIC_IN_T = {"vp": "quadratic", "subvp": "quadratic", "ve": "logsnr"}

#: The solvers, by the name ``sample()`` and ``sde-gen sample --solver`` take.
SOLVERS: dict[str, SolverSpec] = {
    "ancestral": SolverSpec(
        sample_ancestral,
        "DDPM Alg. 2 (posterior of the forward kernel; SMLD ancestral for VE)",
        options=(
            Option("variance", str, "beta", "reverse variance: beta (sigma_t^2 = beta_t), "
                   "beta_tilde, or learned (a model trained with model.learn_variance=true)",
                   choices=VARIANCES),
            _discrete(True),
            *_x0_options(),
        ),
        steps=None, stochastic=True,
    ),
    "ddim": SolverSpec(
        sample_ddim, "DDIM Eq. 12 on any grid; σ-space form for VE",
        options=(
            Option("eta", float, 0.0, "stochasticity: 0 is deterministic, 1 is ancestral with "
                   "beta~", min=0.0, max=1.0),
            _discrete(False),
            *_x0_options(),
        ),
        steps=49, stochastic="eta",
    ),
    "sde": SolverSpec(
        sample_sde, "reverse SDE: Euler–Maruyama device loop, or any torchsde method",
        options=(
            Option("method", str, None, "a torchsde method instead of the built-in "
                   "Euler-Maruyama loop", choices=TORCHSDE_METHODS, noun="torchsde method"),
        ),
        steps=None, stochastic=True,
        calls_per_step=lambda o: _SDE_CALLS.get(o["method"]),
    ),
    "pc": SolverSpec(
        sample_pc, "predictor–corrector, Song et al. Alg. 2/3",
        options=(
            Option("predictor", str, "reverse_diffusion", "the predictor step",
                   choices=PREDICTORS),
            Option("corrector", str, "langevin", "the corrector step", choices=CORRECTORS),
            Option("snr", float, 0.16, "Langevin signal-to-noise ratio", min=0.0,
                   min_open=True),
            Option("n_corrector", int, 1, "corrector steps per grid time", min=0),
        ),
        steps=None, stochastic=True,
        calls_per_step=lambda o: (int(o["predictor"] != "none")
                                  + (o["n_corrector"] if o["corrector"] == "langevin" else 0)),
    ),
    "ode": SolverSpec(
        sample_ode, "probability-flow ODE via torchdiffeq",
        options=(
            Option("method", str, "dopri5", "a torchdiffeq method; adaptive ones step on their "
                   "own between the grid's end points, fixed-step ones walk the grid",
                   choices=ADAPTIVE + FIXED, noun="ODE method"),
            Option("rtol", float, 1e-5, "relative tolerance of adaptive methods", min=0.0,
                   min_open=True),
            Option("atol", float, 1e-5, "absolute tolerance of adaptive methods", min=0.0,
                   min_open=True),
        ),
        steps=100,
        calls_per_step=lambda o: _ODE_STAGES.get(o["method"]),
    ),
    "dpm": SolverSpec(
        sample_dpm, "DPM-Solver++ multistep in log-SNR time",
        options=(
            Option("order", int, 3, "multistep order", choices=(2, 3)),
            Option("lower_order_final", bool, True, "with fewer than 7 intervals, lower the "
                   "order on the last two steps"),
            Option("variant", str, "standard", "3M's second-difference weight: standard "
                   "(DPM-Solver++, diffusers, k-diffusion; formally 2nd order) or taylor3 "
                   "(truly 3rd order)", choices=DPM_VARIANTS, noun="DPM-Solver++ variant"),
            *_x0_options(),
        ),
        steps=19, spacing="logsnr", x0_by_model=True,
    ),
    "heun": SolverSpec(
        sample_heun, "Heun on the PF-ODE in (x/α, σ/α) = EDM Alg. 1",
        options=_x0_options(),
        steps=19, spacing="karras", calls_per_step=lambda o: 2, x0_by_model=True,
    ),
    "unipc": SolverSpec(
        sample_unipc, "UniPC multistep predictor–corrector (UniP + UniC) in log-SNR time",
        options=(
            Option("order", int, 2, "multistep order of the predictor (UniC adds one)",
                   choices=(1, 2, 3)),
            Option("variant", str, "bh2", "B(h): bh1 (h) or bh2 (e^h - 1)",
                   choices=UNIPC_VARIANTS, noun="UniPC variant"),
            Option("unic", bool, True, "UniC corrector on every step but the last (no extra "
                   "model call)"),
            Option("lower_order_final", bool, True, "with fewer than 6 intervals (order 3) or "
                   "10 (order 2), lower the order on the last two steps"),
            *_x0_options(),
        ),
        steps=19, spacing=QUADRATIC_IN_T, x0_by_model=True,
    ),
    "ipndm": SolverSpec(
        sample_ipndm, "iPNDM: Adams–Bashforth on eps in σ/α (DEIS paper, App.)",
        options=(
            Option("order", int, 3, "Adams–Bashforth order", choices=(1, 2, 3, 4)),
            Option("variable_step", bool, False, "Adams–Bashforth weights for the grid's "
                   "unequal steps in σ/α instead of the fixed equal-step ones"),
            *_x0_options(),
        ),
        steps=19, spacing=QUADRATIC_IN_T, x0_by_model=True,
    ),
    "deis": SolverSpec(
        sample_deis, "tAB-DEIS: eps extrapolated in t, exact exponential-integrator weights",
        options=(Option("order", int, 3, "multistep order", choices=(1, 2, 3)),
                 *_x0_options()),
        steps=19, spacing=QUADRATIC_IN_T, x0_by_model=True,
    ),
}


@dataclass(frozen=True)
class Flag:
    """One command-line flag shared by the solvers that take an option of its name.

    Attributes:
        name: the option's keyword; ``decls`` the flag declaration (``--eta``).
        type: the value's Python type; ``min``/``max`` the range all those solvers agree on.
        help: per-solver descriptions, ``"ddim: ...; ancestral: ..."``.
        solvers: the solvers that take it.
    """

    name: str
    decls: str
    type: type
    help: str
    solvers: tuple[str, ...]
    min: float | None = None
    max: float | None = None


def solver_flags() -> list[Flag]:
    """The command-line flags of every solver option in :data:`SOLVERS`, in table order.

    Raises:
        TypeError: two solvers give an option of the same name different types (a table bug).
    """
    by_name: dict[str, list[tuple[str, Option]]] = {}
    for solver, spec in SOLVERS.items():
        for o in spec.options:
            by_name.setdefault(o.name, []).append((solver, o))
    flags = []
    for name, uses in by_name.items():
        types = {o.type for _, o in uses}
        if len(types) > 1:
            raise TypeError(f"option {name!r} has types {sorted(t.__name__ for t in types)}")
        first = uses[0][1]
        dash = "--" + name.replace("_", "-")
        decls = first.flag or (f"{dash}/--no-{dash[2:]}" if first.type is bool else dash)
        helps: dict[str, list[tuple[str, Option]]] = {}
        for solver, o in uses:  # solvers whose option differs only in its default share a line
            helps.setdefault(o.describe(default=False), []).append((solver, o))
        parts = []
        for text, group in helps.items():
            defaults = [(s, o.default) for s, o in group if o.default is not None]
            if len(defaults) == 1:
                text = group[0][1].describe()
            elif defaults:
                text += " (default " + ", ".join(f"{_fmt(d)} for {s}" for s, d in defaults) + ")"
            parts.append(f"{', '.join(s for s, _ in group)}: {text}")
        text = "; ".join(parts)
        ranges = {(min(o.choices), max(o.choices)) if o.choices and o.type in (int, float)
                  else (o.min, o.max) for _, o in uses}
        lo, hi = ranges.pop() if len(ranges) == 1 else (None, None)
        flags.append(Flag(name, decls, first.type, text, tuple(s for s, _ in uses), lo, hi))
    return flags


_SPACING_TEXT = {"uniform": "uniform", "quadratic": "quadratic", "logsnr": "log-SNR",
                 "karras": "Karras ρ=7"}


def _spacing_text(spec: SolverSpec) -> str:
    if isinstance(spec.spacing, str):
        return _SPACING_TEXT[spec.spacing]
    by = {}
    for sde, sp in spec.spacing.items():
        by.setdefault(_SPACING_TEXT[sp], []).append({"vp": "VP", "subvp": "sub-VP",
                                                     "ve": "VE"}.get(sde, sde))
    return " / ".join(f"{sp} ({', '.join(names)})" for sp, names in by.items())


def _grid_text(spec: SolverSpec) -> str:
    per_step = spec.calls_per_step({o.name: o.default for o in spec.options})
    if spec.steps is None:
        where = ("every discrete-chain step from eps to T" if spec.discrete_default
                 else f"N−1 {_spacing_text(spec)} intervals")
        nfe = {1: "N", 2: "2N−1"}.get(per_step, f"{per_step}(N−1)+1")
        return f"{where} (NFE {nfe})"
    grid = f"{spec.steps} {_spacing_text(spec)} intervals"
    if per_step is None:
        return f"{grid} (adaptive: the tolerances set the NFE)"
    return f"{grid} (NFE {per_step * spec.steps + 1})"


def _option_text(o: Option) -> str:
    text = f"`{o.name}={o.default!r}`"
    if o.choices and o.type is str:
        text += " (" + "\\|".join(f"`{c}`" for c in o.choices) + ")"
    elif o.choices:
        text += " (" + " or ".join(map(_fmt, o.choices)) + ")"
    elif o.range_text:
        text += f" ({o.range_text})"
    return text


def solver_table() -> str:
    """The README's Markdown table of the solvers, generated from :data:`SOLVERS`."""
    rows = ["| solver | what | default grid (NFE with the final denoise) | options |",
            "| --- | --- | --- | --- |"]
    for name, spec in SOLVERS.items():
        opts = ", ".join(_option_text(o) for o in spec.options)
        rows.append(f"| `{name}` | {spec.summary} | {_grid_text(spec)} | {opts or '—'} |")
    return "\n".join(rows)
