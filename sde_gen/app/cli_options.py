"""The ``sde-gen`` options that several commands share, each declared once as an
``Annotated`` alias (``ckpt: Ckpt = None``), and the solver flags generated from the registry.

Numbers are parsed by :func:`number`: a value outside its range, NaN or an infinity is refused
with one message naming the value, the same for every command (``--seed`` is an integer in
``[0, 2**63 - 1]`` everywhere).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ..sampling.grids import SPACINGS
from ..sampling.solvers import SOLVERS, solver_flags
from ..sde import SDES
from .command_run import SEED_MAX


def _bounds(lo: float | None, hi: float | None) -> str:
    def show(v: float) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    if lo is not None and hi is not None:
        return f"in [{show(lo)}, {show(hi)}]"
    return f">= {show(lo)}" if lo is not None else f"<= {show(hi)}"


def number(kind: type, lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    """Keyword arguments of a ``typer.Option`` for a number of ``kind`` (int or float) in
    ``[lo, hi]`` (either bound optional): the range shown in the help, and a parser that refuses
    a value outside it, a float that is not a number (NaN) or not finite, in one message."""

    def parse(text: Any) -> Any:
        if isinstance(text, kind) and not isinstance(text, bool):
            value = text
        else:
            try:
                value = kind(str(text).strip())
            except ValueError:
                what = "an integer" if kind is int else "a number"
                raise typer.BadParameter(f"{text} is not {what}") from None
        if kind is float and math.isnan(value):
            raise typer.BadParameter(f"{text} is not a number")
        if kind is float and math.isinf(value):
            raise typer.BadParameter(f"{text} is not a finite number")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise typer.BadParameter(f"must be {_bounds(lo, hi)}, got {text}")
        return value

    return {"min": lo, "max": hi, "parser": parse}


def out_option(help: str) -> Any:
    """The ``--out`` option; ``help`` says what the command writes there and its default."""
    return typer.Option("--out", help=help)


Ckpt = Annotated[Path | None, typer.Option(
    "--ckpt", help="Checkpoint file, run directory or diffusers pipeline folder (default: the "
                   "latest run under runs/).")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
Seed = Annotated[int | None, typer.Option(
    "--seed", **number(int, 0, SEED_MAX),
    help="Random seed, an integer in [0, 2**63 - 1] (what it seeds: see the command).")]
Threads = Annotated[int, typer.Option(
    "--threads", **number(int, 0, 1024),
    help="CPU intra-op threads (0: the run's train.threads; that 0 too: 1 for 2-D data, "
         "torch's default for images).")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
Denoise = Annotated[bool, typer.Option("--denoise/--no-denoise",
                                       help="Final Tweedie denoising step.")]
EndTime = Annotated[float | None, typer.Option(
    "--t-min", "--eps", **number(float, 0.0),
    help="End time t_min, in (0, T) (default 1e-3 VP/sub-VP, 1e-5 VE; --eps is the same "
         "option under score_sde's name).")]
Steps = Annotated[int | None, typer.Option(
    "--steps", **number(int, 1), help="Grid intervals (the solver's default if omitted).")]
Spacing = Annotated[str | None, typer.Option(
    "--spacing", help=f"Grid: {', '.join(SPACINGS)} (default: the solver's).")]
PathName = Annotated[str | None, typer.Option(
    "--path", help=f"Sample the model moved to another path: one of {', '.join(SDES)} (the "
                   "sde.* defaults; sde_gen.path_transfer.on_path), between the noise levels "
                   "it was trained on.")]
Guidance = Annotated[float | None, typer.Option(
    "--guidance", **number(float, 0.0),
    help="Classifier-free guidance scale w >= 0 with --class: (1 + w) eps(x, t, K) - "
         "w eps(x, t, null) (0: the conditional model); with --prompt: (1 + w) eps(prompt) - "
         "w eps(negative), i.e. diffusers' guidance_scale = 1 + w.")]

# Stable Diffusion folders
Prompt = Annotated[str | None, typer.Option(
    "--prompt", help="Stable Diffusion folders: the text prompt ('' for the unconditional "
                     "model); --guidance W then guides it against --negative-prompt: "
                     "(1 + W) eps(prompt) - W eps(negative), i.e. diffusers' "
                     "guidance_scale = 1 + W.")]
Prompts = Annotated[list[str] | None, typer.Option(
    "--prompt", help="Stable Diffusion folders: a prompt to tune on; repeat it for a few "
                     "(prior draw j meets prompt j mod P); guided with --guidance W against "
                     "--negative-prompt.")]
NegativePrompt = Annotated[str | None, typer.Option(
    "--negative-prompt", help="With --prompt: the prompt guided away from (default '').")]
Height = Annotated[int | None, typer.Option(
    "--height", **number(int, 1), help="With --prompt: image height in pixels (a multiple of the "
                                       "VAE factor x the UNet's downsampling, 64 for SD; default "
                                       "the UNet's sample_size x VAE factor).")]
Width = Annotated[int | None, typer.Option(
    "--width", **number(int, 1), help="With --prompt: image width (as --height).")]
ConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file "
                                                "(default: built-in 2-D toy config).")]
Sets = Annotated[list[str], typer.Option(
    "--set", help="Override a config value: --set train.steps=500 (repeatable).")]
Data = Annotated[str | None, typer.Option(
    "--data", help="Evaluate on this data instead of the run's: a built-in image set (mnist, "
                   "cifar10, ...), a .npz file or an image folder (a diffusers folder's default: "
                   "the built-in set of its UNet's shape).")]

# inpaint and colorize
EditSolver = Annotated[str | None, typer.Option(
    "--solver", "-s", help=f"Sampler of --method replacement: one of {', '.join(SOLVERS)} "
                           "(default pc; --method smc has its own kernel).")]
RestoreSolver = Annotated[str | None, typer.Option(
    "--solver", "-s", help=f"For --method mmps, pgdm or dps (--dps-step likelihood): any sampler "
                           f"({', '.join(SOLVERS)}) walking the guided model (default: DDPM's "
                           f"kernel); for --method replacement: its sampler (default pc).")]
Resample = Annotated[int, typer.Option(
    "--resample", **number(int, 1, 100),
    help="RePaint resampling: each step is repeated this many times, re-noising in between "
         "(1: plain replacement).")]
EditMethod = Annotated[str, typer.Option(
    "--method", help="replacement (the known pixels' forward marginal replaces theirs at every "
                     "step) or smc (a particle filter exact as --particles grows).")]
Particles = Annotated[int | None, typer.Option(
    "--particles", **number(int, 1, 100000), help="--method smc: particles per image.")]
EditClass = Annotated[int | None, typer.Option(
    "--class", **number(int, 0), help="Class-conditional runs: the class label to condition on.")]


#: One ``sde-gen sample`` flag per solver option name, with its help and range, from the registry.
SOLVER_FLAGS = {flag.name: flag for flag in solver_flags()}


def with_solver_flags(command: Callable | None = None, *,
                      exclude: tuple[str, ...] = ()) -> Callable:
    """Give ``command(..., **solver_opts)`` one typer option per entry of :data:`SOLVER_FLAGS`
    (but those named in ``exclude``: ``@with_solver_flags(exclude=("method",))`` for a command
    whose own option has that name).

    The flags, their help and their ranges come from the solver registry, so a new solver option
    is a new flag without an edit here; ``command`` receives them in ``solver_opts`` (``None``
    where not given).
    """
    if command is None:
        return functools.partial(with_solver_flags, exclude=exclude)
    signature = inspect.signature(command, eval_str=True)
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    for flag in SOLVER_FLAGS.values():
        if flag.name in exclude:
            continue
        kw = (number(flag.type, flag.min, flag.max) if flag.type in (int, float)
              else {k: v for k, v in (("min", flag.min), ("max", flag.max)) if v is not None})
        option = typer.Option(None, flag.decls, help=flag.help + ".", **kw)
        params.append(inspect.Parameter(flag.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=flag.type | None))
    command.__signature__ = signature.replace(parameters=params)
    return command


#: The options of ``inpaint`` and ``colorize`` after their pictures: ``(name, alias, default)``.
EDIT_OPTIONS = (("solver", EditSolver, None), ("steps", Steps, None), ("t_min", EndTime, None),
                ("resample", Resample, 1), ("method", EditMethod, "replacement"),
                ("particles", Particles, None), ("class_", EditClass, None),
                ("guidance", Guidance, None), ("seed", Seed, 0), ("denoise", Denoise, True),
                ("device", Device, "auto"), ("threads", Threads, 0))


def with_edit_options(command: Callable) -> Callable:
    """Give ``command(..., **options)`` the options of :data:`EDIT_OPTIONS` and the solver flags
    (but ``--method``, which is the editing method's), all received in ``options``."""
    signature = inspect.signature(command, eval_str=True)
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                 annotation=alias) for name, alias, default in EDIT_OPTIONS]
    command.__signature__ = signature.replace(parameters=params)
    return with_solver_flags(command, exclude=("method",))


# restore
RestoreTask = Annotated[str, typer.Option(
    "--task", help="inpaint (--mask), superres (--factor), deblur (--blur-sigma) or colorize.")]
RestoreMethod = Annotated[str, typer.Option(
    "--method", help="dps, pgdm, mmps, smc (--particles) or, for --task inpaint with "
                     "--noise-std 0, replacement (sde_gen.inverse.restore).")]
NoiseStd = Annotated[float, typer.Option(
    "--noise-std", **number(float, 0.0),
    help="Measurement noise std s >= 0 of --image, in the model's [-1, 1] scale.")]
RestoreMask = Annotated[Path | None, typer.Option(
    "--mask", help="--task inpaint: PNG of the run's size, white (1 or 255) where known.")]
Factor = Annotated[int | None, typer.Option(
    "--factor", **number(int, 1, 64),
    help="--task superres: average-pooling factor f (default 4); --image is H/f x W/f.")]
BlurSigma = Annotated[float | None, typer.Option(
    "--blur-sigma", **number(float, 0.0, 100.0),
    help="--task deblur: Gaussian blur std in pixels, > 0 (default 2; zero padding).")]
Restorations = Annotated[int, typer.Option(
    "--n", **number(int, 1, 64), help="Restorations, one tile each after the measurement.")]
Zeta = Annotated[float | None, typer.Option(
    "--zeta", **number(float, 0.0), help="--method dps: step scale zeta > 0 (default 1).")]
DpsStep = Annotated[str | None, typer.Option(
    "--dps-step", help="--method dps: paper (default), constant or likelihood (needs "
                       "--noise-std > 0).")]
CgSteps = Annotated[int | None, typer.Option(
    "--cg-steps", **number(int, 1, 1000),
    help="--method pgdm or mmps: conjugate-gradient iterations (default 20 / 5).")]
