"""The solver options a command was given, checked against the registry
:data:`~sde_gen.sampling.SOLVERS`, and a diffusers checkpoint's scheduler settings filled in."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import UserInputError
from ..sampling.solvers import SOLVERS
from .outputs import note

#: Each solver's option names, from the registry.
SOLVER_OPTIONS = {name: spec.option_names for name, spec in SOLVERS.items()}


def flag_list(names: Iterable[str]) -> str:
    """``"--clip-sample, --eta"``: option names as the command line spells them."""
    return ", ".join("--" + k.replace("_", "-") for k in names)


def check_solver(solver: str) -> str:
    """``solver`` if the registry has it.

    Raises:
        UserInputError: an unknown solver, naming the known ones.
    """
    if solver not in SOLVER_OPTIONS:
        raise UserInputError(f"unknown solver {solver!r}; choose one of "
                             f"{', '.join(SOLVER_OPTIONS)}")
    return solver


def solver_options(solver: str, given: dict[str, Any]) -> dict[str, Any]:
    """The options of ``given`` that the user set (not ``None``), checked to apply to ``solver``.

    Raises:
        UserInputError: an unknown solver, or an option it does not take.
    """
    check_solver(solver)
    opts = {k: v for k, v in given.items() if v is not None}
    bad = [k for k in opts if k not in SOLVER_OPTIONS[solver]]
    if bad:
        raise UserInputError(f"{flag_list(bad)} does not apply to --solver {solver}")
    return opts


def checkpoint_sampler_defaults(run: Any, solver: str, opts: dict[str, Any]) -> dict[str, Any]:
    """``opts`` with a diffusers checkpoint's scheduler settings (``clip_sample``, ``threshold``,
    ``variance``) filled in where the solver takes them and the user did not set them; a note
    on stderr where the checkpoint clips x0 and the solver (sde, pc, ode) does not."""
    defaults = getattr(run.model, "sampler_defaults", None) or {}
    names = SOLVER_OPTIONS[solver]
    if defaults.get("clip_sample") and "clip_sample" not in names:
        note(f"--solver {solver} integrates the score and does not clip x0 as this "
             f"checkpoint's scheduler does (clip_sample/thresholding)")
    return {**{k: v for k, v in defaults.items() if k in names}, **opts}
