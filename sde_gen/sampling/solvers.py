"""The solver registry: one line per solver, each pointing at the spec its module declares.

A solver module holds the function and, next to it, its :class:`~.spec.SolverSpec` (options
with type, default and range; calls per step; order; stochastic or not; default steps and
spacing). :data:`SOLVERS` maps the names ``sample()`` and ``sde-gen sample --solver`` take to
those specs, as torchdiffeq's ``SOLVERS`` maps names to classes. Everything else is derived:
``sample()`` validates the options once before dispatch, :func:`solver_flags` gives the CLI's
flags, :func:`solver_table` the README's table (a test keeps the two equal), and the tests and
benchmarks parametrize over the registry.

Adding a solver: a module with ``sample_<name>(model, sde, x_T, ts, *, <options>,
generator=None, callback=None) -> (x, x_mean)`` and its ``SPEC``, and one line here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sde import SDES
from . import ancestral, consistency, ddim, deis, dpm, ipndm, ode, sde_solvers, unipc
from .spec import Option, SolverSpec, fmt

__all__ = ["SOLVERS", "Flag", "solver_flags", "solver_table"]

#: The solvers, by the name ``sample()`` and ``sde-gen sample --solver`` take.
SOLVERS: dict[str, SolverSpec] = {
    "ancestral": ancestral.SPEC,
    "ddim": ddim.SPEC,
    "sde": sde_solvers.SDE_SPEC,
    "pc": sde_solvers.PC_SPEC,
    "ode": ode.ODE_SPEC,
    "dpm": dpm.SPEC,
    "heun": ode.HEUN_SPEC,
    "unipc": unipc.SPEC,
    "ipndm": ipndm.SPEC,
    "deis": deis.SPEC,
    "consistency": consistency.SPEC,
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
            if o.type is tuple:  # learned coefficients: from a calibration file, not typed
                continue
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
                text += " (default " + ", ".join(f"{fmt(d)} for {s}" for s, d in defaults) + ")"
            parts.append(f"{', '.join(s for s, _ in group)}: {text}")
        text = "; ".join(parts)
        ranges = {(min(o.choices), max(o.choices)) if o.choices and o.type in (int, float)
                  else (o.min, o.max) for _, o in uses}
        lo, hi = ranges.pop() if len(ranges) == 1 else (None, None)
        flags.append(Flag(name, decls, first.type, text, tuple(s for s, _ in uses), lo, hi))
    return flags


_SPACING_TEXT = {"uniform": "uniform", "quadratic": "quadratic", "logsnr": "log-SNR",
                 "karras": "Karras ρ=7", "shifted": "shifted-uniform"}
_SDE_TEXT = {"vp": "VP", "subvp": "sub-VP", "ve": "VE", "flow": "flow", "trig": "trig"}


def _spacing_text(spec: SolverSpec) -> str:
    """The solver's default spacing on each registered SDE, grouped: ``log-SNR (VP, VE) /
    shifted-uniform (flow, trig)``."""
    by: dict[str, list[str]] = {}
    for name, cls in SDES.items():
        by.setdefault(_SPACING_TEXT[spec.spacing_for(cls())], []).append(_SDE_TEXT.get(name,
                                                                                        name))
    if len(by) == 1:
        return next(iter(by))
    return " / ".join(f"{sp} ({', '.join(names)})" for sp, names in by.items())


def _grid_text(spec: SolverSpec) -> str:
    per_step = spec.calls_per_step(spec.defaults())
    if spec.steps is None:
        where = ("every discrete-chain step from t_min to T" if spec.discrete_default
                 else f"N−1 {_spacing_text(spec)} intervals")
        nfe = {1: "N", 2: "2N−1"}.get(per_step, f"{per_step}(N−1)+1")
        return f"{where} (NFE {nfe})"
    grid = f"{spec.steps} {_spacing_text(spec)} intervals"
    if per_step is None:
        return f"{grid} (adaptive: the tolerances set the NFE)"
    return f"{grid} (NFE {spec.nfe(spec.steps)})"


def _option_text(o: Option) -> str:
    text = f"`{o.name}={o.default!r}`"
    if o.choices and o.type is str:
        text += " (" + "\\|".join(f"`{c}`" for c in o.choices) + ")"
    elif o.choices:
        text += " (" + " or ".join(map(fmt, o.choices)) + ")"
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
