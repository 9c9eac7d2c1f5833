"""The ``sde-gen`` command line: parse, build, call one library function, report.

Every expected failure prints one line ``error: ...`` to stderr and exits with code 2, without a
traceback: the package's own errors (:class:`~sde_gen.errors.SDEGenError`: bad config or option,
unreadable checkpoint, malformed data file, non-finite training) and the few library errors that
are a user's or the machine's by construction (a missing, unreadable or misplaced file, a full or
read-only disk, invalid YAML). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer
import yaml

from ..errors import SDEGenError
from ..sampling.grids import SPACINGS
from ..sampling.solvers import SOLVERS, solver_flags
from ..sde import SDES
from .config import load_config

app = typer.Typer(
    name="sde-gen",
    help="Score-based generative modelling with SDEs: train, sample and evaluate diffusion models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

#: Exceptions printed as one line: the package's errors (ConfigError, CheckpointError,
#: NonFiniteLossError, UserInputError, MissingDependencyError, ...) and user mistakes by
#: construction. An ``OSError`` of another type counts only with an errno of :data:`DISK_ERRNOS`.
EXPECTED_ERRORS = (SDEGenError, FileNotFoundError, FileExistsError, PermissionError,
                   IsADirectoryError, NotADirectoryError, yaml.YAMLError)
#: A full disk or quota, or a read-only file system: the machine's state, not a bug.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def is_expected(e: BaseException) -> bool:
    """Whether ``e`` is a failure to report in one line (else a bug: keep its traceback)."""
    return isinstance(e, EXPECTED_ERRORS) or (isinstance(e, OSError) and e.errno in DISK_ERRNOS)


def fail(message: str) -> None:
    """Print a one-line error and exit with status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def one_line_errors(fn: Callable) -> Callable:
    """Turn expected exceptions (:func:`is_expected`) into a one-line message and exit code 2;
    any other exception propagates with its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not is_expected(e):
                raise
            text = str(e).strip()
            fail(text.splitlines()[0] if text else type(e).__name__)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130)

    return wrapper


SDE_CHOICES = tuple(SDES)


def nonfinite_keys(report: dict, keys: tuple[str, ...]) -> list[str]:
    """The ``keys`` of ``report`` whose value is a NaN or infinite number (a result that must
    not be reported as one)."""
    import math

    return [k for k in keys if isinstance(report.get(k), float) and not math.isfinite(report[k])]


@contextlib.contextmanager
def process_group(device):
    """Join torchrun's process group when there is one; ranks share work, rank 0 writes."""
    from . import distributed

    di = distributed.setup(device)
    try:
        yield di
    finally:
        if di.enabled:
            distributed.cleanup()


@app.command()
@one_line_errors
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file (default: built-in 2-D toy config)."),
    sde: Optional[str] = typer.Option(None, "--sde", help=f"Forward SDE: {', '.join(SDE_CHOICES)} (overrides sde.name)."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", "-w", help="Run directory (default: runs/<data>_<sde>). Resumes from its latest checkpoint."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Random seed (overrides train.seed)."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value: --set train.steps=500 (repeatable)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train a score model by denoising score matching."""
    if sde is not None and sde not in SDE_CHOICES:
        fail(f"unknown SDE {sde!r}; choose one of {', '.join(SDE_CHOICES)}")
    sections: dict = {}
    if sde is not None:
        sections["sde"] = {"name": sde}
    if seed is not None:
        sections["train"] = {"seed": seed}
    cfg = load_config(config, set_, **sections)
    from .train import train as run_training

    workdir = workdir or Path("runs") / f"{cfg.data.name}_{cfg.sde.name}"
    result = run_training(cfg, workdir, progress=progress)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    if result.interrupted:
        if result.step == cfg.train.steps:  # training was done: the signal came during the plot
            typer.echo(f"interrupted while writing the final plot: the checkpoint at step "
                       f"{result.step} is complete ({result.checkpoint}); run the same command "
                       "to write the plot")
        else:
            typer.echo(f"interrupted at step {result.step}: checkpoint written to "
                       f"{result.checkpoint}; run the same command to resume")
        return
    if result.already_done:
        typer.echo(f"already trained: the run in {result.workdir} reached train.steps="
                   f"{result.step} before; nothing to do (raise train.steps to train further)")
    else:
        typer.echo(f"step {result.step}: loss {result.loss:.4f}"
                   + (f" ({result.skipped_steps} non-finite steps skipped)" if result.skipped_steps else ""))
    typer.echo(f"checkpoint: {result.checkpoint}")
    if result.plot is not None:
        typer.echo(f"plot: {result.plot}")


#: Each solver's option names, from the registry :data:`~sde_gen.sampling.solvers.SOLVERS`.
SOLVER_OPTIONS = {name: spec.option_names for name, spec in SOLVERS.items()}
#: One ``sde-gen sample`` flag per solver option name, with its help and range, from the registry.
SOLVER_FLAGS = {flag.name: flag for flag in solver_flags()}


def solver_options(solver: str, given: dict) -> dict:
    """Keep the options the user set; reject those the solver does not take."""
    if solver not in SOLVER_OPTIONS:
        fail(f"unknown solver {solver!r}; choose one of {', '.join(SOLVER_OPTIONS)}")
    opts = {k: v for k, v in given.items() if v is not None}
    bad = [k for k in opts if k not in SOLVER_OPTIONS[solver]]
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        fail(f"{flags} does not apply to --solver {solver}")
    return opts


def checkpoint_sampler_defaults(run, solver: str, opts: dict) -> dict:
    """``opts`` with a diffusers checkpoint's scheduler settings (``clip_sample``, ``threshold``,
    ``variance``) filled in where the solver takes them and the user did not set them; a note
    on stderr where the checkpoint clips x0 and the solver (sde, pc, ode) does not."""
    defaults = getattr(run.model, "sampler_defaults", None) or {}
    names = SOLVER_OPTIONS[solver]
    if defaults.get("clip_sample") and "clip_sample" not in names:
        typer.echo(f"note: --solver {solver} integrates the score and does not clip x0 as this "
                   f"checkpoint's scheduler does (clip_sample/thresholding)", err=True)
    return {**{k: v for k, v in defaults.items() if k in names}, **opts}


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
    signature = inspect.signature(command)
    params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    for flag in SOLVER_FLAGS.values():
        if flag.name in exclude:
            continue
        bounds = {k: v for k, v in (("min", flag.min), ("max", flag.max)) if v is not None}
        option = typer.Option(None, flag.decls, help=flag.help + ".", **bounds)
        params.append(inspect.Parameter(flag.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=Optional[flag.type]))
    command.__signature__ = signature.replace(parameters=params)
    return command


def parse_class(text: str | None, guidance: float | None) -> int | str | None:
    """``--class``: ``None``, a label ``K >= 0`` or ``"all"``; ``--guidance`` needs it."""
    if text is None:
        if guidance is not None:
            fail("--guidance needs --class K (the class to guide towards) or --class all")
        return None
    text = text.strip().lower()
    if text == "all":
        return "all"
    try:
        k = int(text)
    except ValueError:
        k = -1
    if k < 0:
        fail(f"--class must be a class label 0, 1, ... or all, got {text!r}")
    return k


def class_labels(model, label: int | str | None, n: int):
    """The labels ``(y, nrow)`` for ``--class`` (``"all"``: ``n`` of each class in order, one
    grid row per class), checked against the model's classes; ``(None, None)`` without it."""
    import torch

    if label is None:
        return None, None
    k = getattr(model, "num_classes", None)
    if k is None:
        fail("--class and --guidance need a class-conditional run (trained with "
             "model.class_cond=true); this one is unconditional")
    if label == "all":
        return torch.arange(k).repeat_interleave(n), n
    if label >= k:
        fail(f"--class {label} is outside this run's classes 0..{k - 1}")
    return torch.full((n,), label, dtype=torch.long), None


@app.command()
@one_line_errors
@with_solver_flags
def sample(
    solver: Optional[str] = typer.Option(None, "--solver", "-s", help=f"One of {', '.join(SOLVERS)} (sde_gen.sampling.SOLVERS; each flag below names the solvers it applies to). Default: ode, or the --grid file's solver."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint file or run directory (default: the latest run under runs/)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Grid intervals (solver default if omitted)."),
    grid: Optional[Path] = typer.Option(None, "--grid", help="A grid file from 'sde-gen optimize-grid' (its times, and its solver and options unless given)."),
    n: int = typer.Option(2000, "--n", "--num-samples", min=1, help="Number of samples, per class with --class all (--num-samples under torchrun, whose parser takes --n for its own)."),
    batch_size: int = typer.Option(512, "--batch-size", min=1, help="Samples per batch."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed: sample i depends on (seed, i) only, for any --batch-size."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output PNG path (an .npz of raw samples is written beside it). Default: <run>/samples_<solver>[_class<K>|_all_classes].png."),
    eps: Optional[float] = typer.Option(None, "--eps", min=0.0, help="End time, in (0, T) (default 1e-3 VP/sub-VP, 1e-5 VE)."),
    spacing: Optional[str] = typer.Option(None, "--spacing", help=f"Grid: {', '.join(SPACINGS)} (default: the solver's)."),
    denoise: bool = typer.Option(True, "--denoise/--no-denoise", help="Final Tweedie denoising step."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    class_: Optional[str] = typer.Option(None, "--class", help="Class-conditional runs: the class label K (0..classes-1), or all: --n samples of each class, one grid row per class."),
    guidance: Optional[float] = typer.Option(None, "--guidance", min=0.0, help="Classifier-free guidance scale w >= 0 with --class: (1 + w) eps(x, t, K) - w eps(x, t, null) (0: the conditional model)."),
    **solver_opts,
) -> None:
    """Sample a trained model; write a PNG and an .npz of raw samples.

    Fails (exit code 2, nothing written) when any sample is NaN or infinite.
    """
    from .outputs import check_out_path

    label = parse_class(class_, guidance)
    if out is not None:  # before the checkpoint is even read
        check_out_path(out, ".png")
        check_out_path(out.with_suffix(".npz"), ".npz", flag="the samples file beside --out")
    from ..sampling.optimized_grid import OptimizedGrid

    tuned = None
    if grid is not None:
        given = [f for f, v in (("--steps", steps), ("--eps", eps), ("--spacing", spacing))
                 if v is not None]
        if given:
            fail(f"--grid fixes the time grid; drop {', '.join(given)}")
        tuned = OptimizedGrid.load(grid)
        if solver is not None and solver != tuned.solver:
            typer.echo(f"warning: {grid} was optimized for --solver {tuned.solver}, not {solver}",
                       err=True)
    solver = solver or (tuned.solver if tuned is not None else "ode")
    opts = solver_options(solver, solver_opts)
    if tuned is not None and solver == tuned.solver:
        opts = {**tuned.options, **opts}
    from .generate import generate
    from .outputs import write_samples
    from .runs import load_run
    from .distributed import resolve_device

    with process_group(resolve_device(device)) as di:
        run = load_run(ckpt, device=di.device)
        if tuned is not None:  # made for this run's SDE? (checked before sampling)
            opts["ts"] = OptimizedGrid.load(grid, run.sde).ts
        y, nrow = class_labels(run.model, label, n)
        if out is None:  # checked before sampling, not after
            tag = "" if label is None else ("_all_classes" if label == "all" else f"_class{label}")
            out = check_out_path(run.workdir / f"samples_{solver}{tag}.png", ".png")
            check_out_path(out.with_suffix(".npz"), ".npz", flag="the samples file beside --out")
        total = n if y is None else len(y)
        opts = checkpoint_sampler_defaults(run, solver, opts)
        gen = generate(run.model, run.sde, total, run.shape, solver,
                       batch_size=batch_size, seed=seed, device=di.device, progress=progress,
                       steps=steps, t_min=eps, spacing=spacing, denoise=denoise, y=y,
                       guidance=guidance, **opts)
        if gen.n_nonfinite:
            fail(f"{gen.n_nonfinite} of {total} samples are NaN or infinite (the model or the "
                 f"solver diverged); nothing was written")
        if not di.is_main:
            return
    what = "" if label is None else (
        f", {'every class' if label == 'all' else f'class {label}'}"
        + (f", guidance {guidance:g}" if guidance else ""))
    png, npz = write_samples(gen.x, run.cfg, out, title=f"{solver}, {gen.nfe} NFE{what}",
                             nrow=nrow, labels=y)
    typer.echo(f"{total} samples with {solver}{what}: {gen.nfe} NFE per batch, "
               f"{gen.seconds:.2f} s")
    typer.echo(f"plot: {png}")
    typer.echo(f"samples: {npz}")


EDIT_METHODS = ("replacement", "smc")


def _edit_options(solver: str, steps, eps, resample: int, solver_opts: dict, denoise: bool,
                  method: str, particles: int | None) -> dict:
    """The sampler options of ``inpaint`` / ``colorize``, checked before any file is read."""
    opts = solver_options(solver, solver_opts)
    if method not in EDIT_METHODS:
        fail(f"unknown --method {method!r}; choose replacement or smc")
    if particles is not None and method != "smc":
        fail("--particles applies to --method smc")
    if method == "smc":
        if particles is None:
            fail("--method smc needs --particles K (particles per image)")
        if resample != 1:
            fail("--resample applies to --method replacement (SMC resamples particles)")
        if opts:
            flags = ", ".join("--" + k.replace("_", "-") for k in opts)
            fail(f"{flags} does not apply to --method smc (its own ancestral kernel)")
        opts = {"method": "smc", "particles": particles}
    else:
        opts = {**opts, "method": "replacement", "solver": solver, "resample": resample}
    opts.update({k: v for k, v in (("steps", steps), ("t_min", eps)) if v is not None})
    return {**opts, "denoise": denoise}


@app.command()
@one_line_errors
@with_solver_flags(exclude=("method",))
def inpaint(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint file or run directory of an image run (default: the latest run under runs/)."),
    image: Path = typer.Option(..., "--image", help="The PNG to complete, of the run's size and channels."),
    mask: Path = typer.Option(..., "--mask", help="PNG of the run's size, black (0) where pixels are to be filled in, white (1 or 255) where known."),
    out: Path = typer.Option(..., "--out", help="Output PNG path (the known pixels are the input's)."),
    solver: str = typer.Option("pc", "--solver", "-s", help=f"Sampler of --method replacement: one of {', '.join(SOLVERS)}."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Grid intervals (the sampler's default if omitted)."),
    eps: Optional[float] = typer.Option(None, "--eps", min=0.0, help="End time, in (0, T) (default 1e-3 VP/sub-VP, 1e-5 VE)."),
    resample: int = typer.Option(1, "--resample", min=1, max=100, help="RePaint resampling: each step is repeated this many times, re-noising in between (1: plain replacement)."),
    method: str = typer.Option("replacement", "--method", help="replacement (the known pixels' forward marginal replaces theirs at every step) or smc (a particle filter exact as --particles grows)."),
    particles: Optional[int] = typer.Option(None, "--particles", min=1, max=100000, help="--method smc: particles per image."),
    class_: Optional[int] = typer.Option(None, "--class", min=0, help="Class-conditional runs: the class label to condition on."),
    guidance: Optional[float] = typer.Option(None, "--guidance", min=0.0, help="Classifier-free guidance scale w >= 0 with --class."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the sampler."),
    denoise: bool = typer.Option(True, "--denoise/--no-denoise", help="Final Tweedie denoising step."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    **solver_opts,
) -> None:
    """Inpaint an image: fill in the masked-out (black) pixels with the run's model."""
    from .distributed import resolve_device
    from .editing import inpaint_file
    from .outputs import check_out_path
    from .runs import load_run

    opts = _edit_options(solver, steps, eps, resample, solver_opts, denoise, method, particles)
    out = check_out_path(out, ".png")  # before the checkpoint is even read
    dev = resolve_device(device)
    run = load_run(ckpt, device=dev)
    path = inpaint_file(run, image, mask, out, label=class_, guidance=guidance, seed=seed,
                        device=dev, **opts)
    typer.echo(f"inpainted with {method}" + ("" if method == "smc" else f" ({solver})")
               + f": {path}")


@app.command()
@one_line_errors
@with_solver_flags(exclude=("method",))
def colorize(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint file or run directory of a colour image run (default: the latest run under runs/)."),
    image: Path = typer.Option(..., "--image", help="A greyscale PNG (one channel, or equal R, G, B) of the run's size."),
    out: Path = typer.Option(..., "--out", help="Output (RGB) PNG path."),
    solver: str = typer.Option("pc", "--solver", "-s", help=f"Sampler: one of {', '.join(SOLVERS)}."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Grid intervals (the sampler's default if omitted)."),
    eps: Optional[float] = typer.Option(None, "--eps", min=0.0, help="End time, in (0, T) (default 1e-3 VP/sub-VP, 1e-5 VE)."),
    resample: int = typer.Option(1, "--resample", min=1, max=100, help="RePaint resampling of each step (1: plain replacement)."),
    method: str = typer.Option("replacement", "--method", help="replacement or smc (a particle filter), in the colour basis."),
    particles: Optional[int] = typer.Option(None, "--particles", min=1, max=100000, help="--method smc: particles per image."),
    class_: Optional[int] = typer.Option(None, "--class", min=0, help="Class-conditional runs: the class label to condition on."),
    guidance: Optional[float] = typer.Option(None, "--guidance", min=0.0, help="Classifier-free guidance scale w >= 0 with --class."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the sampler."),
    denoise: bool = typer.Option(True, "--denoise/--no-denoise", help="Final Tweedie denoising step."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    **solver_opts,
) -> None:
    """Colorize a greyscale image with the run's model (imputation in a colour basis whose first
    axis is the grey level)."""
    from .distributed import resolve_device
    from .editing import colorize_file
    from .outputs import check_out_path
    from .runs import load_run

    opts = _edit_options(solver, steps, eps, resample, solver_opts, denoise, method, particles)
    out = check_out_path(out, ".png")
    dev = resolve_device(device)
    run = load_run(ckpt, device=dev)
    path = colorize_file(run, image, out, label=class_, guidance=guidance, seed=seed,
                         device=dev, **opts)
    typer.echo(f"colorized with {method}" + ("" if method == "smc" else f" ({solver})")
               + f": {path}")


@app.command()
@one_line_errors
def likelihood(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint file or run directory (default: the latest run under runs/)."),
    data: Optional[str] = typer.Option(None, "--data", help="Evaluate on this data instead of the run's: a built-in image set (mnist, cifar10, ...), a .npz file or an image folder (a diffusers folder's default: the built-in set of its UNet's shape)."),
    split: str = typer.Option("test", "--split", help="train or test."),
    n: int = typer.Option(2048, "--n", "--num-samples", min=1, help="Number of examples (--num-samples under torchrun)."),
    batch_size: int = typer.Option(512, "--batch-size", min=1, help="Examples per ODE solve."),
    trace: Optional[str] = typer.Option(None, "--trace", help="exact (autograd over every dim; default for 2-D) or hutchinson (default for images)."),
    rtol: float = typer.Option(1e-5, "--rtol", min=0.0, help="ODE relative tolerance (> 0)."),
    atol: float = typer.Option(1e-5, "--atol", min=0.0, help="ODE absolute tolerance (> 0)."),
    eps: float = typer.Option(1e-5, "--eps", min=0.0, help="Start time of the ODE (data end), in (0, T)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for data draws and probes."),
    method: str = typer.Option("ode", "--method", help="ode (probability-flow ODE), vlb (DDPM's variational bound) or both."),
    variance: str = typer.Option("beta", "--variance", help="vlb: reverse variance beta, beta_tilde or learned (a model trained with model.learn_variance=true)."),
    n_t: Optional[int] = typer.Option(None, "--n-t", min=1, help="vlb: estimate the sum over steps from this many sampled steps (default: all N)."),
    out: Optional[Path] = typer.Option(None, "--out", help="JSON result path (default: <run>/likelihood_<split>.json)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Negative log-likelihood through the probability-flow ODE; writes a JSON report."""
    if trace not in (None, "exact", "hutchinson"):
        fail(f"unknown trace {trace!r}; choose exact or hutchinson")
    if method not in ("ode", "vlb", "both"):
        fail(f"unknown method {method!r}; choose ode, vlb or both")
    from .likelihood_report import evaluate_likelihood, evaluate_vlb
    from .outputs import check_out_path, write_json
    from ..parameterization import learned_variance_fn
    from .runs import load_run, with_data
    from .distributed import resolve_device

    if out is not None:  # before any work: a bad path must not cost the whole computation
        check_out_path(out, ".json")
    with process_group(resolve_device(device)) as di:
        run = with_data(load_run(ckpt, device=di.device), data)
        out = check_out_path(out or run.workdir / f"likelihood_{split}.json", ".json")
        if method in ("vlb", "both") and variance == "learned":
            learned_variance_fn(run.model)  # fail before the ODE solves, not after
        rep: dict = {"method": method}
        if method in ("ode", "both"):
            rep.update(evaluate_likelihood(run, n=n, batch_size=batch_size, split=split,
                                           trace=trace, rtol=rtol, atol=atol, t_min=eps, seed=seed,
                                           device=di.device, progress=progress))
        if method in ("vlb", "both"):
            rep.update(evaluate_vlb(run, n=n, batch_size=batch_size, split=split,
                                    variance=variance, n_t=n_t, seed=seed, device=di.device,
                                    progress=progress))
        if not di.is_main:
            return
    bad = nonfinite_keys(rep, ("nll_nats", "bpd", "vlb_nats", "vlb_bpd"))
    if bad:
        fail(f"the likelihood is not finite ({', '.join(f'{k}={rep[k]}' for k in bad)}): the "
             "model or the ODE solve diverged; nothing was written")
    path = write_json(rep, out)
    if "nll_nats" in rep:
        typer.echo(f"ODE: NLL {rep['nll_nats']:.4f} +- {rep['nll_stderr']:.4f} nats/example "
                   f"({rep['n']} {split} examples, {rep['trace']} trace, {rep['nfe']:.0f} NFE per "
                   f"batch, {rep['seconds']:.1f} s)")
    if "bpd" in rep:
        typer.echo(f"ODE: bits/dim {rep['bpd']:.4f} +- {rep['bpd_stderr']:.4f}")
    if "vlb_nats" in rep:
        typer.echo(f"VLB ({variance}): {rep['vlb_nats']:.4f} +- {rep['vlb_stderr']:.4f} nats/example "
                   f"(L_T {rep['vlb_prior']:.4f}, sum L_t-1 {rep['vlb_diffusion']:.4f}, "
                   f"L_0 {rep['vlb_decoder']:.4f}; {rep['vlb_nfe']} NFE, {rep['vlb_seconds']:.1f} s)")
    if "vlb_bpd" in rep:
        typer.echo(f"VLB: bits/dim {rep['vlb_bpd']:.4f} +- {rep['vlb_bpd_stderr']:.4f}")
    if "true_nll_nats" in rep:
        typer.echo(f"true NLL {rep['true_nll_nats']:.4f} nats; gap (KL estimate) "
                   f"{rep['kl_gap_nats']:.4f} +- {rep['kl_gap_stderr']:.4f}")
    typer.echo(f"result: {path}")


@app.command("optimize-grid")
@one_line_errors
@with_solver_flags
def optimize_grid(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint file or run directory (default: the latest run under runs/)."),
    solver: str = typer.Option("dpm", "--solver", "-s", help="A deterministic fixed-step solver (ddim with eta 0, dpm, heun, ...)."),
    nfe: int = typer.Option(10, "--nfe", min=2, help="Model calls per sample, the final denoise included."),
    search: str = typer.Option("gits", "--search", help="gits (dynamic programming over a fine grid, then descent) or descent (from the solver's default grid)."),
    n: int = typer.Option(256, "--n", min=1, help="Prior draws to tune on (a tight ODE solve of each is the target)."),
    n_heldout: int = typer.Option(256, "--n-heldout", min=1, help="Held-out prior draws the error is also reported on."),
    evals: int = typer.Option(200, "--evals", min=0, help="Most solver runs of the descent."),
    eps: Optional[float] = typer.Option(None, "--eps", help="End time, in (0, T) (default 1e-3 VP/sub-VP, 1e-5 VE)."),
    spacing: Optional[str] = typer.Option(None, "--spacing", help=f"The built-in grid to start from and compare with: {', '.join(SPACINGS)} (default: the solver's)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the tuning draws (held out: seed + 1)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Grid file (.json; default <run>/grid_<solver>_<nfe>nfe.json)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    **solver_opts,
) -> None:
    """Optimize the time grid of a solver at a fixed NFE for a trained model (GITS / descent)."""
    from .outputs import check_out_path
    from .runs import load_run
    from .distributed import resolve_device
    from ..sampling.grids import check_spacing
    from ..sampling.optimized_grid import optimize_grid as run_optimize, steps_for_nfe

    opts = solver_options(solver, solver_opts)
    steps_for_nfe(solver, nfe, opts)  # a stochastic solver or an impossible NFE: before loading
    if spacing is not None:
        check_spacing(spacing)
    if out is not None:
        check_out_path(out, ".json")
    dev = resolve_device(device)
    run = load_run(ckpt, device=dev)
    out = check_out_path(out or run.workdir / f"grid_{solver}_{nfe}nfe.json", ".json")
    g = run_optimize(run.model, run.sde, run.shape, solver, nfe, method=search,
                     n=n, n_heldout=n_heldout, t_min=eps, spacing=spacing, seed=seed, evals=evals,
                     device=dev, **opts)
    path = g.save(out)
    typer.echo(f"{solver} at {g.nfe} NFE, {search} on {n} draws, {g.seconds:.1f} s")
    typer.echo(f"endpoint error, tuning draws: {g.error_before:.4g} -> {g.error_after:.4g} "
               f"({g.error_after / g.error_before:.2f}x)")
    typer.echo(f"endpoint error, held out:     {g.heldout_before:.4g} -> {g.heldout_after:.4g} "
               f"({g.heldout_after / g.heldout_before:.2f}x)")
    typer.echo("ts: " + " ".join(f"{t:.4g}" for t in g.ts.tolist()))
    typer.echo(f"grid: {path} (use: sde-gen sample --grid {path})")


@app.command("eval")
@one_line_errors
def eval_(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint file or run directory (default: the latest run under runs/)."),
    data: Optional[str] = typer.Option(None, "--data", help="Evaluate on this data instead of the run's: a built-in image set (mnist, cifar10, ...), a .npz file or an image folder (a diffusers folder's default: the built-in set of its UNet's shape)."),
    n: int = typer.Option(1000, "--n", "--num-samples", min=2, help="Generated images for FID / FD-classifier (--num-samples under torchrun)."),
    solver: str = typer.Option("ddim", "--solver", help="Sampler for the generated images."),
    steps: Optional[int] = typer.Option(49, "--steps", min=1, help="Sampler grid intervals."),
    n_bpd: int = typer.Option(256, "--n-bpd", min=0, help="Test images for bits/dim (0: skip)."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Batch size."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed."),
    classifier_steps: int = typer.Option(1500, "--classifier-steps", min=1, help="Training steps of the FD-classifier network (cached per dataset)."),
    out: Optional[Path] = typer.Option(None, "--out", help="JSON path (default <run>/eval.json)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Sample quality (FID if available, FD-classifier) and test bits/dim of an image run."""
    solver_options(solver, {})
    from .factory import is_image
    from .sample_quality import evaluate_run
    from .outputs import check_out_path, write_json
    from .runs import load_run, with_data
    from .distributed import resolve_device

    if out is not None:
        check_out_path(out, ".json")
    dev = resolve_device(device)
    run = load_run(ckpt, device=dev)
    if not is_image(run.cfg.data):
        fail("sde-gen eval is for image runs; use 'sde-gen likelihood' for 2-D data")
    run = with_data(run, data)
    out = check_out_path(out or run.workdir / "eval.json", ".json")
    rep = evaluate_run(run, n=n, solver=solver, steps=steps, n_bpd=n_bpd, batch_size=batch_size,
                       seed=seed, classifier_steps=classifier_steps, device=dev,
                       progress=progress, options=checkpoint_sampler_defaults(run, solver, {}))
    bad = nonfinite_keys(rep, ("fid", "fd_classifier", "bpd"))
    if bad:
        fail(f"the evaluation is not finite ({', '.join(f'{k}={rep[k]}' for k in bad)}); "
             "nothing was written")
    path = write_json(rep, out)
    rows = [("samples", f"{n} with {solver}, {rep['nfe']} NFE, {rep['sample_seconds']:.1f} s"),
            ("FID", f"{rep['fid']:.2f}" if rep["fid"] is not None else rep["fid_note"])]
    if "fd_classifier" in rep:
        rows.append(("FD-classifier (not FID)", f"{rep['fd_classifier']:.4f}"))
    if "bpd" in rep:
        rows.append(("test bits/dim", f"{rep['bpd']:.4f} +- {rep['bpd_stderr']:.4f} ({rep['bpd_n']} images)"))
    for k, v in rows:
        typer.echo(f"{k:<24} {v}")
    typer.echo(f"result: {path}")


@app.command()
@one_line_errors
def export(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint file or run directory (default: the latest run under runs/)."),
    out: Path = typer.Option(..., "--out", help="Output .safetensors file."),
) -> None:
    """Write the EMA weights and the config as a safetensors file (safe to share and load)."""
    from .export import export_safetensors

    path = export_safetensors(ckpt, out)
    typer.echo(f"exported: {path}")


@app.command()
@one_line_errors
def figures(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint file or run directory (default: the latest run under runs/)."),
    out: Path = typer.Option(..., "--out", help="Directory for the PNGs (created)."),
    n: Optional[int] = typer.Option(None, "--n", min=1, help="Examples per figure: image rows (default 6) or 2-D points (default 1000)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of every draw."),
    prefix: str = typer.Option("", "--prefix", help="Prepended to each file name."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Write the run's figures (forward process, progressive generation, DDIM consistency, interpolation) as PNGs."""
    from .figures import figures_command

    for path in figures_command(ckpt, out, n=n, seed=seed, device=device, prefix=prefix):
        typer.echo(f"figure: {path}")


@app.command("show-config")
@one_line_errors
def show_config(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    set_: List[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
) -> None:
    """Print the resolved configuration as YAML."""
    import yaml

    from .config import to_dict

    typer.echo(yaml.safe_dump(to_dict(load_config(config, set_)), sort_keys=False).rstrip())


def main() -> None:
    """Console-script entry point: usage errors too are one line (``error: ...``, exit code 2)."""
    # Typer vendors click: its UsageError is the base class of typer.BadParameter.
    usage_error = typer.BadParameter.__mro__[1]
    args = sys.argv[1:] or ["--help"]
    try:
        code = app(args, standalone_mode=False)
    except usage_error as e:
        typer.echo(f"error: {e.format_message().splitlines()[0]}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
