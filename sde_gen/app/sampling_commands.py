"""``sde-gen sample`` and ``sde-gen optimize-grid`` behind the command line: every option checked
before the checkpoint is read where it can be, the run loaded with its thread policy, the work
done, and the outputs written atomically (a failure or an interrupt leaves none)."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from ..sampling.result import count_nonfinite
from .command_run import check_input_file, open_run, process_group
from .outputs import check_out_path, writing
from .prompting import bind_prompt, check_text_options, describe
from .solver_options import checkpoint_sampler_defaults, solver_options


@dataclass(frozen=True)
class Sampled:
    """What ``sde-gen sample`` made: ``n`` samples with ``solver`` (``what``: their class and
    guidance, for the report), the NFE per batch, the seconds, and the files (``None`` on the
    ranks of a torchrun group other than 0, which write nothing)."""

    n: int
    solver: str
    what: str
    nfe: int
    seconds: float
    png: Path | None
    npz: Path | None


def parse_class(text: str | None, guidance: float | None) -> int | str | None:
    """``--class``: ``None``, a label ``K >= 0`` or ``"all"``; ``--guidance`` needs it.

    Raises:
        UserInputError: a text that is neither, or ``--guidance`` without ``--class``.
    """
    if text is None:
        if guidance is not None:
            raise UserInputError("--guidance needs --class K (the class to guide towards), "
                                 "--class all, or --prompt TEXT (a Stable Diffusion folder)")
        return None
    text = text.strip().lower()
    if text == "all":
        return "all"
    try:
        k = int(text)
    except ValueError:
        k = -1
    if k < 0:
        raise UserInputError(f"--class must be a class label 0, 1, ... or all, got {text!r}")
    return k


def check_class_memory(n: int, classes: int, shape: tuple[int, ...],
                       available: int | None = None) -> None:
    """Refuse ``--class all --n n`` (``n`` samples of each of ``classes`` classes) when the
    ``n * classes`` samples would not fit in memory, before any label is made; the message
    gives the largest per-class ``--n`` that fits.

    Raises:
        UserInputError: naming the total, the memory needed and available, and that ``--n``.
    """
    from .generate import BYTES_PER_VALUE, available_memory

    available = available_memory() if available is None else available
    per_sample = BYTES_PER_VALUE * math.prod(shape) + 8  # + its int64 label
    total = n * classes
    if available is None or total * per_sample <= available:
        return
    fits = available // per_sample // classes
    raise UserInputError(
        f"--class all --n {n} asks for {total} samples ({n} of each of {classes} classes) of "
        f"shape {tuple(shape)}, about {total * per_sample / 1e9:.1f} GB of memory, and this "
        f"machine has {available / 1e9:.1f} GB available; ask for at most --n {fits} per class")


def class_labels(model: Any, label: int | str | None, n: int,
                 shape: tuple[int, ...]) -> tuple[torch.Tensor | None, int | None]:
    """The labels ``(y, nrow)`` for ``--class`` (``"all"``: ``n`` of each class in order, one
    grid row per class), checked against the model's classes and, before they are made, against
    the memory the samples need; ``(None, None)`` without a label.

    Raises:
        UserInputError: an unconditional model, a class outside its classes, or too many samples.
    """
    from .generate import check_memory

    if label is None:
        return None, None
    k = getattr(model, "num_classes", None)
    if k is None:
        raise UserInputError("--class and --guidance need a class-conditional run (trained with "
                             "model.class_cond=true); this one is unconditional")
    if label == "all":
        check_class_memory(n, k, shape)
        return torch.arange(k).repeat_interleave(n), n
    if label >= k:
        raise UserInputError(f"--class {label} is outside this run's classes 0..{k - 1}")
    check_memory(n, shape)
    return torch.full((n,), label, dtype=torch.long), None


def _grid_file(grid: Path, solver: str | None, steps, t_min, spacing):
    """The grid file's :class:`OptimizedGrid`, checked against the options that it fixes."""
    from ..sampling.optimized_grid import OptimizedGrid

    given = [f for f, v in (("--steps", steps), ("--t-min", t_min), ("--spacing", spacing))
             if v is not None]
    if given:
        raise UserInputError(f"--grid fixes the time grid; drop {', '.join(given)}")
    tuned = OptimizedGrid.load(check_input_file(grid, "--grid"))
    if solver is not None and solver != tuned.solver:
        print(f"warning: {grid} was optimized for --solver {tuned.solver}, not {solver}",
              file=sys.stderr)
    return tuned


def check_path_name(name: str | None) -> str | None:
    """``--path``: ``None`` or a name of :data:`~sde_gen.sde.SDES`.

    Raises:
        UserInputError: an unknown name, naming the choices.
    """
    from ..sde import SDES

    if name is not None and name not in SDES:
        raise UserInputError(f"unknown --path {name!r}; choose one of {', '.join(SDES)}")
    return name


@dataclass(frozen=True)
class OnPathRun:
    """A run's model moved to another path (:func:`sde_gen.path_transfer.on_path`): what
    :func:`~.generate.generate` takes, ``model``, ``sde`` and the grid options ``grid``."""

    model: Any
    sde: Any
    grid: dict[str, Any]


def moved_to_path(run: Any, name: str, solver: str, *, steps: int | None,
                  t_min: float | None, spacing: str | None) -> OnPathRun:
    """``run``'s model on the path ``name`` (built from the ``sde.*`` defaults), sampled between
    the noise levels it was trained on: from the target's ``T`` and prior where the trained
    path reaches that noise level, else from ``t_max < T`` with the trained prior carried
    there (std ``start_std``, a copy of the target whose ``prior_std`` is that); ending at
    ``t_min`` (default the model's lowest covered time).

    Raises:
        UserInputError: ``t_min`` below the lowest noise level the model covers on that path,
            or paths whose noise levels do not overlap.
    """
    import copy

    from ..path_transfer import on_path
    from ..sampling.driver import solver_spec
    from ..sampling.grids import make_grid
    from .config import SDEConfig
    from .factory import build_sde

    target = build_sde(SDEConfig(name=name))
    moved = on_path(run.model, run.sde, target)
    if t_min is not None and not moved.t_min <= t_min < moved.t_max:
        raise UserInputError(f"--t-min {t_min:g} is outside the times [{moved.t_min:.4g}, "
                             f"{moved.t_max:.4g}) of the {name} path that this model covers")
    end = moved.t_min if t_min is None else t_min
    if moved.t_max == target.T:
        return OnPathRun(moved, target, {"steps": steps, "t_min": end, "spacing": spacing})
    spec = solver_spec(solver)
    n = steps if steps is not None else spec.steps if spec.steps is not None else target.N - 1
    ts = make_grid(target, n, t_min=end, T=moved.t_max,
                   spacing=spacing or spec.spacing_for(target))
    start = copy.copy(target)
    start.prior_std = moved.start_std  # the draw at t_max: the trained prior, rescaled
    return OnPathRun(moved, start, {"ts": ts})


def _label_text(label: int | str | None, guidance: float | None) -> str:
    if label is None:
        return ""
    which = "every class" if label == "all" else f"class {label}"
    return f", {which}" + (f", guidance {guidance:g}" if guidance else "")


def sample_command(
    ckpt: str | os.PathLike | None, *, solver: str | None = None, steps: int | None = None,
    grid: str | os.PathLike | None = None, n: int | None = None, batch_size: int = 512,
    seed: int = 0,
    out: str | os.PathLike | None = None, t_min: float | None = None,
    spacing: str | None = None,
    denoise: bool = True, device: str = "auto", progress: bool = True,
    class_: str | None = None, guidance: float | None = None, path: str | None = None,
    threads: int = 0, solver_opts: dict[str, Any] | None = None,
    calibration: str | os.PathLike | None = None, use_calibration: bool = True,
    prompt: str | None = None, negative_prompt: str | None = None, height: int | None = None,
    width: int | None = None, x_T: str | os.PathLike | None = None,
    decode_batch: int | None = None, dtype: str | None = None,
) -> Sampled:
    """``sde-gen sample``: draw ``n`` samples (per class with ``class_="all"``) and write a PNG
    and an ``.npz`` of them (default ``<run>/samples_<solver>[_class<K>|_all_classes].png``).

    ``path``: sample the model moved to that path (:func:`moved_to_path`).

    A Stable Diffusion folder needs ``prompt`` (``""``: the unconditional model); ``guidance``
    is then ``w`` of ``(1 + w) eps(c) - w eps(c_neg)`` against ``negative_prompt`` (default
    ``""``), i.e. diffusers' ``guidance_scale = 1 + w``; ``height`` and ``width`` set the image
    size. ``x_T``: an ``.npy`` file of the initial noise ``(n, *shape)`` (latents for a latent
    model), which also sets ``n`` (:func:`load_noise`). ``decode_batch``: a latent model's
    samples are decoded that many at a time (1: diffusers' VAE slicing; default 256). ``dtype``
    (``float32``, ``float16``, ``bfloat16``): a Stable Diffusion folder's weights (the solver
    stays in float32).

    ``steps`` alone (no grid, spacing, end time or path): the run's calibration of that many
    intervals is used when it has one (``calibration``: another file; ``use_calibration=False``:
    none), with its solver unless ``solver`` names another, and a line on stderr says so.

    The options, ``out`` and a grid file are checked before the checkpoint is read; the labels
    and their memory before any is made; the output paths before sampling.

    Raises:
        UserInputError: a bad option, grid file, path name or output path, or samples that are
            NaN or infinite (nothing is written then).
    """
    from .generate import generate
    from .outputs import write_samples

    text = check_text_options(prompt, negative_prompt, height, width,
                              {"--class": class_, "--path": path})
    label = parse_class(class_, None if text else guidance)
    path = check_path_name(path)
    if decode_batch is not None and (isinstance(decode_batch, bool) or decode_batch < 1):
        raise UserInputError(f"--decode-batch must be >= 1, got {decode_batch}")
    weights = None if dtype is None else weights_dtype(dtype)
    noise = None if x_T is None else load_noise(x_T)
    n = _noise_count(noise, n)
    if path is not None and (grid is not None or label is not None):
        raise UserInputError(f"--path does not combine with "
                             f"{'--grid' if grid is not None else '--class'}")
    if out is not None:  # before the checkpoint is even read
        out = check_out_path(out, ".png")
        check_out_path(out.with_suffix(".npz"), ".npz", flag="the samples file beside --out")
    tuned = None if grid is None else _grid_file(Path(grid), solver, steps, t_min, spacing)
    asked_solver = solver
    solver = solver or (tuned.solver if tuned is not None else "ode")
    opts = solver_options(solver, solver_opts or {})
    if tuned is not None and solver == tuned.solver:
        opts = {**tuned.options, **opts}
    with process_group(device) as di:
        run = open_run(ckpt, di.device, threads, text_ok=True, dtype=weights)
        run = bind_prompt(run, prompt, negative_prompt=negative_prompt, guidance=guidance,
                          height=height, width=width)
        if noise is not None and tuple(noise.shape[1:]) != tuple(run.shape):
            raise UserInputError(f"--x-T {x_T} holds noise of shape {tuple(noise.shape[1:])} per "
                                 f"sample; this model samples {tuple(run.shape)}")
        if getattr(run.model, "is_consistency_model", False):
            solver, opts = _consistency_solver(run, asked_solver, solver_opts, grid=grid,
                                               path=path, calibration=calibration)
        if tuned is not None:  # made for this run's SDE? (checked before sampling)
            from ..sampling.optimized_grid import OptimizedGrid

            opts["ts"] = OptimizedGrid.load(grid, run.sde).ts
        cal = None
        if use_calibration and steps is not None and grid is None and path is None \
                and t_min is None and spacing is None:
            cal = _calibration_for(run, steps, asked_solver, calibration)
        elif calibration is not None:
            raise UserInputError("--calibration applies to --steps K alone (no --grid, "
                                 "--spacing, --t-min, --path or --no-calibration)")
        if cal is not None:
            solver = cal.solver
            opts = {**cal.options, **solver_options(solver, solver_opts or {})}
            print(f"using the calibration for {steps} steps: {cal.solver} at {cal.nfe} NFE "
                  f"(learned grid; --no-calibration to sample without it)", file=sys.stderr)
        y, nrow = class_labels(run.model, label, n, run.shape)
        if out is None:  # checked before sampling, not after
            tag = "" if label is None else ("_all_classes" if label == "all" else f"_class{label}")
            tag += "" if path is None else f"_on_{path}"
            out = check_out_path(run.workdir / f"samples_{solver}{tag}.png", ".png")
            check_out_path(out.with_suffix(".npz"), ".npz", flag="the samples file beside --out")
        total = n if y is None else len(y)
        opts = checkpoint_sampler_defaults(run, solver, opts)
        base = run.model
        if cal is not None:
            model, sde, grid_opts = base, run.sde, dict(ts=cal.ts)
        elif path is None:
            model, sde, grid_opts = base, run.sde, dict(steps=steps, t_min=t_min,
                                                        spacing=spacing)
        else:
            moved = moved_to_path(run, path, solver, steps=steps, t_min=t_min, spacing=spacing)
            model, sde, grid_opts = moved.model, moved.sde, moved.grid
        gen = generate(model, sde, total, run.shape, solver,
                       batch_size=batch_size, seed=seed, device=di.device, progress=progress,
                       denoise=denoise, y=y, guidance=None if text else guidance, x_T=noise,
                       **grid_opts, **opts)
        x = run.decode(gen.x, batch_size=decode_batch or 256)  # a latent run's: to images
        n_bad = count_nonfinite(x) if run.codec is not None else gen.n_nonfinite
        if n_bad:
            raise UserInputError(f"{n_bad} of {total} samples are NaN or infinite (the "
                                 "model or the solver diverged); nothing was written")
        what = _label_text(label, guidance) + ("" if path is None else f", on the {path} path")
        if text:
            what += describe(prompt, guidance)
        if not di.is_main:
            return Sampled(total, solver, what, gen.nfe, gen.seconds, None, None)
    png, npz = write_samples(x, run.cfg, out, title=f"{solver}, {gen.nfe} NFE{what}",
                             nrow=nrow, labels=y)
    return Sampled(total, solver, what, gen.nfe, gen.seconds, png, npz)


def _consistency_solver(run: Any, asked: str | None, solver_opts: dict[str, Any] | None, *,
                        grid: Any, path: str | None, calibration: Any) -> tuple[str, dict]:
    """``("consistency", its options)`` for a distilled run (``sde-gen distill``): chosen, with a
    line on stderr, when no solver was asked.

    Raises:
        UserInputError: another solver, ``--grid``, ``--path`` or ``--calibration`` (all are for
            eps-models).
    """
    given = [f for f, v in (("--grid", grid), ("--path", path), ("--calibration", calibration))
             if v is not None]
    if asked not in (None, "consistency"):
        given.insert(0, f"--solver {asked}")
    if given:
        raise UserInputError(f"{run.workdir} is a distilled consistency model, not an eps-model: "
                             f"{', '.join(given)} cannot sample it; use --solver consistency "
                             "--steps K")
    if asked is None:
        print("a distilled consistency model: sampling with --solver consistency",
              file=sys.stderr)
    return "consistency", solver_options("consistency", solver_opts or {})


#: ``--dtype`` names and the weights' dtypes they load.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def weights_dtype(name: str) -> torch.dtype:
    """The torch dtype of ``--dtype NAME``; an unknown name is a one-line error."""
    if name not in DTYPES:
        raise UserInputError(f"unknown --dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_noise(path: str | os.PathLike) -> torch.Tensor:
    """The initial noise in an ``.npy`` file, ``(n, *shape)``, finite floats, as float32.

    Raises:
        UserInputError: an unreadable file, integers, non-finite values or fewer than 2 axes.
    """
    import numpy as np

    path = check_input_file(path, "--x-T")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserInputError(f"--x-T {path}: cannot read an .npy array ({e})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f" or arr.ndim < 2 or not len(arr):
        raise UserInputError(f"--x-T {path} must hold a float array (n, *shape), got "
                             f"{getattr(arr, 'dtype', '?')} {getattr(arr, 'shape', '?')}")
    if not np.isfinite(arr).all():
        raise UserInputError(f"--x-T {path} holds NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(arr)).float()


def _noise_count(noise: torch.Tensor | None, n: int | None) -> int:
    """``--n`` (default 2000), or the rows of ``--x-T``, which must agree with a given ``--n``."""
    if noise is None:
        return 2000 if n is None else n
    if n is not None and n != len(noise):
        raise UserInputError(f"--n {n} but --x-T holds {len(noise)} samples' noise; drop --n")
    return len(noise)


def _calibration_for(run: Any, steps: int, solver: str | None,
                     calibration: str | os.PathLike | None):
    """The calibration of ``steps`` intervals for ``run`` (with ``solver`` if given) from
    ``calibration`` or, when that is ``None``, the run's own file if it has one; else ``None``.

    Raises:
        UserInputError: a given file that is missing or has no calibration of ``steps``, or any
            file made for another SDE or model (:func:`~.calibration.load_calibrations`).
    """
    from .calibration import FILE, find_calibration

    path = Path(calibration) if calibration is not None else run.workdir / FILE
    if calibration is None and not path.is_file():
        return None
    cal = find_calibration(check_input_file(path, "--calibration"), run.sde, run.model,
                           steps=steps, solver=solver)
    if cal is None and calibration is not None:
        from .calibration import load_calibrations

        have = load_calibrations(path, run.sde, run.model).values()
        raise UserInputError(f"{path} has no calibration of {steps} steps"
                             + (f" for {solver}" if solver else "") + "; it has "
                             + ", ".join(f"{c.steps} ({c.solver}, {c.nfe} NFE)" for c in have))
    return cal


def calibrate_command(
    ckpt: str | os.PathLike | None, *, nfes: list[int], solver: str | None = None,
    budget: float = 60.0, n: int = 256, seed: int = 0, device: str = "auto", threads: int = 0,
    prompts: list[str] | None = None, negative_prompt: str | None = None,
    guidance: float | None = None, height: int | None = None, width: int | None = None,
):
    """``sde-gen calibrate``: learn the run's grid at each NFE (:func:`~.calibration.
    calibrate_run`) and store them in ``<run>/calibration.json`` (atomically, replacing the
    file); returns the calibrations and the path.

    A Stable Diffusion folder is calibrated on ``prompts`` (draw ``j`` meets prompt
    ``j mod P``) guided with ``guidance`` at ``height x width``; the file, in the folder, is
    then used by ``sample --steps K`` for any prompt.

    Raises:
        UserInputError: a bad NFE, solver or budget (before the checkpoint is read), or bad
            text options (:mod:`.prompting`).
    """
    from ..sampling.calibrate import check_calibration_input
    from .calibration import FILE, calibrate_run, save_calibrations
    from .distributed import resolve_device

    if not nfes or len(set(nfes)) != len(nfes):
        raise UserInputError(f"give one or more distinct NFEs to calibrate, got {list(nfes)}")
    for nfe in nfes:
        check_calibration_input(solver, nfe, budget)
    check_text_options(prompts, negative_prompt, height, width)
    if guidance is not None and not prompts:
        raise UserInputError("--guidance needs --prompt TEXT (a Stable Diffusion folder)")
    dev = resolve_device(device)
    run = open_run(ckpt, dev, threads, text_ok=True)
    if getattr(run.model, "is_consistency_model", False):
        raise UserInputError(f"{run.workdir} is a distilled consistency model: it has no solver "
                             "grid to calibrate; sample it with --solver consistency --steps K")
    run = bind_prompt(run, prompts, negative_prompt=negative_prompt, guidance=guidance,
                      height=height, width=width)
    cals = calibrate_run(run.model, run.sde, run.shape, list(nfes), budget_s=budget,
                         solver=solver, n=n, seed=seed, device=dev)
    path = run.workdir / FILE
    with writing(path):
        return cals, save_calibrations(path, cals, run.sde, run.model)


def optimize_grid_command(
    ckpt: str | os.PathLike | None, *, solver: str = "dpm", nfe: int = 10, search: str = "gits",
    n: int = 256, n_heldout: int = 256, evals: int = 200, t_min: float | None = None,
    spacing: str | None = None, seed: int = 0, out: str | os.PathLike | None = None,
    device: str = "auto", threads: int = 0, solver_opts: dict[str, Any] | None = None,
    prompts: list[str] | None = None, negative_prompt: str | None = None,
    guidance: float | None = None, height: int | None = None, width: int | None = None,
):
    """``sde-gen optimize-grid``: tune the time grid of ``solver`` at ``nfe`` for the run and
    write it as a grid file (default ``<run>/grid_<solver>_<nfe>nfe.json``); returns the
    :class:`~sde_gen.sampling.optimized_grid.OptimizedGrid` and the path.

    A Stable Diffusion folder is tuned on ``prompts`` (draw ``j`` meets prompt ``j mod P``)
    guided with ``guidance`` against ``negative_prompt`` at ``height x width``.

    Raises:
        UserInputError: a bad option or output path (checked before the checkpoint is read where
            the run is not needed), or bad text options (:mod:`.prompting`).
    """
    from ..sampling.grids import check_spacing
    from ..sampling.optimized_grid import optimize_grid, steps_for_nfe
    from .distributed import resolve_device

    opts = solver_options(solver, solver_opts or {})
    steps_for_nfe(solver, nfe, opts)  # a stochastic solver or an impossible NFE: before loading
    if spacing is not None:
        check_spacing(spacing)
    if out is not None:
        check_out_path(out, ".json")
    check_text_options(prompts, negative_prompt, height, width)
    if guidance is not None and not prompts:
        raise UserInputError("--guidance needs --prompt TEXT (a Stable Diffusion folder)")
    dev = resolve_device(device)
    run = bind_prompt(open_run(ckpt, dev, threads, text_ok=True), prompts,
                      negative_prompt=negative_prompt, guidance=guidance, height=height,
                      width=width)
    out = check_out_path(out or run.workdir / f"grid_{solver}_{nfe}nfe.json", ".json")
    g = optimize_grid(run.model, run.sde, run.shape, solver, nfe, method=search, n=n,
                      n_heldout=n_heldout, t_min=t_min, spacing=spacing, seed=seed, evals=evals,
                      device=dev, **opts)
    with writing(out):
        return g, g.save(out)
