"""The ``sde-gen`` command line: each command parses its options (the shared ones declared once
in :mod:`.cli_options`), calls one application function and reports its result.

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
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
import yaml

from ..errors import SDEGenError
from ..sampling.grids import SPACINGS
from ..sampling.solvers import SOLVERS
from ..sde import SDES
from .cli_options import (
    BlurSigma,
    CgSteps,
    Ckpt,
    ConfigFile,
    Data,
    Denoise,
    Device,
    DpsStep,
    EndTime,
    Factor,
    Guidance,
    Height,
    NegativePrompt,
    NoiseStd,
    Particles,
    PathName,
    Progress,
    Prompt,
    Prompts,
    Resample,
    Restorations,
    RestoreMask,
    RestoreMethod,
    RestoreSolver,
    RestoreTask,
    Seed,
    Sets,
    Spacing,
    Steps,
    Threads,
    Width,
    Zeta,
    number,
    out_option,
    with_edit_options,
    with_solver_flags,
)
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interrupt so that the same clean-up runs as for Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def sigterm_interrupts():
    """Inside the block SIGTERM interrupts like SIGINT (:class:`Terminated`); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


def one_line_errors(fn: Callable) -> Callable:
    """Turn expected exceptions (:func:`is_expected`) into a one-line message and exit code 2;
    any other exception propagates with its traceback. SIGINT and SIGTERM stop the command with
    ``interrupted`` (exit code 130, or 143 for SIGTERM) after the same clean-up: no partial
    output is left."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with sigterm_interrupts():
                return fn(*args, **kwargs)
        except Exception as e:
            if not is_expected(e):
                raise
            text = str(e).strip()
            fail(text.splitlines()[0] if text else type(e).__name__)
        except KeyboardInterrupt as e:
            terminated = isinstance(e, Terminated)
            typer.echo("interrupted (SIGTERM)" if terminated else "interrupted", err=True)
            raise typer.Exit(143 if terminated else 130)

    return wrapper


SDE_CHOICES = tuple(SDES)


def _check_config(config: Path | None) -> None:
    if config is not None:
        from .command_run import check_input_file

        check_input_file(config, "--config")


@app.command()
@one_line_errors
def train(
    config: ConfigFile = None,
    sde: Annotated[str | None, typer.Option(
        "--sde", help=f"Forward SDE: {', '.join(SDE_CHOICES)} (overrides sde.name).")] = None,
    workdir: Annotated[Path | None, typer.Option(
        "--workdir", "-w", help="Run directory (default: runs/<data>_<sde>). Resumes from its "
                                "latest checkpoint.")] = None,
    seed: Seed = None,
    set_: Sets = [],  # noqa: B006 (typer copies it)
    progress: Progress = True,
) -> None:
    """Train a score model by denoising score matching (--seed overrides train.seed)."""
    if sde is not None and sde not in SDE_CHOICES:
        fail(f"unknown SDE {sde!r}; choose one of {', '.join(SDE_CHOICES)}")
    _check_config(config)
    sections: dict = {}
    if sde is not None:
        sections["sde"] = {"name": sde}
    if seed is not None:
        sections["train"] = {"seed": seed}
    cfg = load_config(config, set_, **sections)
    from .train import train as run_training

    kind = ("_autoencoder" if cfg.model.name == "autoencoder" else
            f"_ldm_{cfg.sde.name}" if cfg.model.autoencoder else f"_{cfg.sde.name}")
    workdir = workdir or Path("runs") / f"{cfg.data.name}{kind}"
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
        skipped = result.skipped_steps
        typer.echo(f"step {result.step}: loss {result.loss:.4f}"
                   + (f" ({skipped} non-finite steps skipped)" if skipped else ""))
    typer.echo(f"checkpoint: {result.checkpoint}")
    if result.plot is not None:
        typer.echo(f"plot: {result.plot}")
    if result.calibration is not None:
        typer.echo(f"calibration: {result.calibration} (sample --steps K uses it; "
                   "train.calibrate_budget=0: off)")


@app.command()
@one_line_errors
@with_solver_flags
def sample(
    solver: Annotated[str | None, typer.Option(
        "--solver", "-s", help=f"One of {', '.join(SOLVERS)} (sde_gen.sampling.SOLVERS; each "
                               "flag below names the solvers it applies to). Default: ode, the "
                               "--grid file's solver, or consistency on a distilled run.")] = None,
    ckpt: Ckpt = None,
    steps: Steps = None,
    grid: Annotated[Path | None, typer.Option(
        "--grid", help="A grid file from 'sde-gen optimize-grid' (its times, and its solver and "
                       "options unless given).")] = None,
    n: Annotated[int | None, typer.Option(
        "--n", "--num-samples", **number(int, 1),
        help="Number of samples, per class with --class all (--num-samples under torchrun, "
             "whose parser takes --n for its own). Default: 2000, or the rows of --x-T.")
    ] = None,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", **number(int, 1), help="Samples per batch.")] = 512,
    seed: Seed = 0,
    out: Annotated[Path | None, out_option(
        "Output PNG path (an .npz of raw samples is written beside it). Default: "
        "<run>/samples_<solver>[_class<K>|_all_classes].png.")] = None,
    t_min: EndTime = None,
    spacing: Spacing = None,
    denoise: Denoise = True,
    device: Device = "auto",
    progress: Progress = True,
    class_: Annotated[str | None, typer.Option(
        "--class", help="Class-conditional runs: the class label K (0..classes-1), or all: --n "
                        "samples of each class, one grid row per class.")] = None,
    guidance: Guidance = None,
    path: PathName = None,
    threads: Threads = 0,
    calibration: Annotated[Path | None, typer.Option(
        "--calibration", help="A calibration file from 'sde-gen calibrate' (default: the run's "
                              "calibration.json, used for --steps K when it has K steps).")] = None,
    use_calibration: Annotated[bool, typer.Option(
        "--use-calibration/--no-calibration",
        help="With --steps K alone, sample on the run's calibrated grid of K steps when there is "
             "one (and say so).")] = True,
    prompt: Prompt = None,
    negative_prompt: NegativePrompt = None,
    height: Height = None,
    width: Width = None,
    x_T: Annotated[Path | None, typer.Option(
        "--x-T", help="An .npy file of the initial noise (n, *shape), float (latents for a "
                      "latent model; diffusers' latents=): sample from it instead of drawing "
                      "it; sets --n.")] = None,
    decode_batch: Annotated[int | None, typer.Option(
        "--decode-batch", **number(int, 1),
        help="Latent models: decode the samples this many at a time (1: diffusers' VAE slicing, "
             "the least memory; default 256).")] = None,
    dtype: Annotated[str | None, typer.Option(
        "--dtype", help="Stable Diffusion folders: the weights' dtype, float32 (default), "
                        "float16 or bfloat16 (diffusers' torch_dtype; the solver stays in "
                        "float32).")] = None,
    **solver_opts,
) -> None:
    """Sample a trained model; write a PNG and an .npz of raw samples (sample i's noise depends
    on (seed, i) only: the same samples for any --batch-size or number of processes).

    Fails (exit code 2, nothing written) when any sample is NaN or infinite.
    """
    from .sampling_commands import sample_command

    res = sample_command(ckpt, solver=solver, steps=steps, grid=grid, n=n,
                         batch_size=batch_size, seed=seed, out=out, t_min=t_min, spacing=spacing,
                         denoise=denoise, device=device, progress=progress, class_=class_,
                         guidance=guidance, path=path, threads=threads,
                         solver_opts=solver_opts, calibration=calibration,
                         use_calibration=use_calibration, prompt=prompt,
                         negative_prompt=negative_prompt, height=height, width=width, x_T=x_T,
                         decode_batch=decode_batch, dtype=dtype)
    if res.png is None:  # a torchrun rank other than 0
        return
    typer.echo(f"{res.n} samples with {res.solver}{res.what}: {res.nfe} NFE per batch, "
               f"{res.seconds:.2f} s")
    typer.echo(f"plot: {res.png}")
    typer.echo(f"samples: {res.npz}")


@app.command()
@one_line_errors
@with_edit_options
def inpaint(
    *,
    ckpt: Ckpt = None,
    image: Annotated[Path, typer.Option(
        "--image", help="The PNG to complete, of the run's size and channels.")],
    mask: Annotated[Path, typer.Option(
        "--mask", help="PNG of the run's size, black (0) where pixels are to be filled in, "
                       "white (1 or 255) where known.")],
    out: Annotated[Path, out_option("Output PNG path (the known pixels are the input's).")],
    prompt: Prompt = None,
    negative_prompt: NegativePrompt = None,
    **options,
) -> None:
    """Inpaint an image of an image run: fill in the masked-out (black) pixels with the run's
    model (--seed seeds the sampler). A latent run or a Stable Diffusion folder (--prompt)
    imputes the latents of the wholly known 8x8 (f x f) blocks, then pastes the known pixels."""
    from .editing import edit_command

    path = edit_command("inpaint", ckpt, image, out, mask=mask, prompt=prompt,
                        negative_prompt=negative_prompt, **options)
    typer.echo(f"inpainted with {_edit_text(options)}: {path}")


def _edit_text(options: dict) -> str:
    method = options["method"]
    return method if method == "smc" else f"{method} ({options['solver'] or 'pc'})"


@app.command()
@one_line_errors
@with_edit_options
def colorize(
    *,
    ckpt: Ckpt = None,
    image: Annotated[Path, typer.Option(
        "--image", help="A greyscale PNG (one channel, or equal R, G, B) of the run's size.")],
    out: Annotated[Path, out_option("Output (RGB) PNG path.")],
    **options,
) -> None:
    """Colorize a greyscale image with a colour image run's model (imputation in a colour basis
    whose first axis is the grey level; --seed seeds the sampler)."""
    from .editing import edit_command

    path = edit_command("colorize", ckpt, image, out, **options)
    typer.echo(f"colorized with {_edit_text(options)}: {path}")


@app.command()
@one_line_errors
def restore(
    *,
    ckpt: Ckpt = None,
    task: RestoreTask,
    image: Annotated[Path, typer.Option(
        "--image", help="The measurement PNG: the image to inpaint (run's size), the H/f x W/f "
                        "low-resolution image, the blurred image, or the grey image.")],
    out: Annotated[Path, out_option("Output PNG: the measurement, then the restorations.")],
    noise_std: NoiseStd = 0.0,
    method: RestoreMethod = "mmps",
    mask: RestoreMask = None,
    factor: Factor = None,
    blur_sigma: BlurSigma = None,
    n: Restorations = 4,
    steps: Steps = None,
    t_min: EndTime = None,
    particles: Particles = None,
    zeta: Zeta = None,
    dps_step: DpsStep = None,
    cg_steps: CgSteps = None,
    solver: RestoreSolver = None,
    resample: Resample = 1,
    seed: Seed = 0,
    device: Device = "auto",
    threads: Threads = 0,
    prompt: Prompt = None,
    negative_prompt: NegativePrompt = None,
    guidance: Guidance = None,
) -> None:
    """Restore an image of an image run from a linear measurement y = A x0 + s z (inpainting,
    super-resolution, deblurring, colorization) with DPS, PiGDM, MMPS, SMC or replacement
    (--seed seeds the sampler; a Stable Diffusion folder: with --prompt, DPS through the VAE's
    decoder at the image's size)."""
    from .restoring import restore_command

    path = restore_command(ckpt, task, image, out, noise_std=noise_std, method=method, mask=mask,
                           factor=factor, blur_sigma=blur_sigma, n=n, steps=steps, t_min=t_min,
                           seed=seed, device=device, threads=threads, particles=particles,
                           zeta=zeta, step=dps_step, cg_steps=cg_steps, solver=solver,
                           resample=resample, prompt=prompt, negative_prompt=negative_prompt,
                           guidance=guidance)
    typer.echo(f"restored ({task}, {method}, s = {noise_std:g}), {n} samples: {path}")


@app.command()
@one_line_errors
def likelihood(
    ckpt: Ckpt = None,
    data: Data = None,
    split: Annotated[str, typer.Option("--split", help="train or test.")] = "test",
    n: Annotated[int, typer.Option(
        "--n", "--num-samples", **number(int, 1),
        help="Number of examples (--num-samples under torchrun).")] = 2048,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", **number(int, 1), help="Examples per ODE solve.")] = 512,
    trace: Annotated[str | None, typer.Option(
        "--trace", help="ode: exact (autograd over every dim; default for 2-D) or hutchinson "
                        "(default for images).")] = None,
    rtol: Annotated[float | None, typer.Option(
        "--rtol", **number(float, 0.0),
        help="ode: relative tolerance (> 0; default 1e-5).")] = None,
    atol: Annotated[float | None, typer.Option(
        "--atol", **number(float, 0.0),
        help="ode: absolute tolerance (> 0; default 1e-5).")] = None,
    t_min: Annotated[float | None, typer.Option(
        "--t-min", "--eps", **number(float, 0.0),
        help="ode: start time t_min of the ODE (data end), in (0, T) (default 1e-5; --eps: "
             "the same).")] = None,
    seed: Seed = 0,
    method: Annotated[str, typer.Option(
        "--method", help="ode (probability-flow ODE), vlb (DDPM's variational bound) or "
                         "both.")] = "ode",
    variance: Annotated[str | None, typer.Option(
        "--variance", help="vlb: reverse variance beta (default), beta_tilde or learned (a "
                           "model trained with model.learn_variance=true).")] = None,
    n_t: Annotated[int | None, typer.Option(
        "--n-t", **number(int, 1),
        help="vlb: estimate the sum over steps from this many sampled steps (default: all "
             "N).")] = None,
    out: Annotated[Path | None, out_option(
        "JSON result path (default: <run>/likelihood_<split>.json).")] = None,
    device: Device = "auto",
    progress: Progress = True,
    threads: Threads = 0,
) -> None:
    """Negative log-likelihood through the probability-flow ODE and/or DDPM's bound; writes a
    JSON report (--seed seeds the data draws and the probes)."""
    from .likelihood_report import likelihood_command

    done = likelihood_command(ckpt, data=data, split=split, n=n, batch_size=batch_size,
                              method=method, trace=trace, rtol=rtol, atol=atol, t_min=t_min,
                              variance=variance, n_t=n_t, seed=seed, out=out, device=device,
                              progress=progress, threads=threads)
    if done is None:  # a torchrun rank other than 0
        return
    rep, path = done
    if "latent_nats_per_dim" in rep:
        typer.echo(f"ODE (latent): NLL {rep['latent_nats_per_dim']:.4f} +- "
                   f"{rep['latent_nats_per_dim_stderr']:.4f} nats per latent dim (not image "
                   f"bits/dim; {rep['latent_dims']} latent dims, {rep['n']} {split} examples, "
                   f"{rep['nfe']:.0f} NFE per batch, {rep['seconds']:.1f} s)")
        typer.echo(f"image bits/dim bound {rep['bpd_bound']:.4f} +- {rep['bpd_bound_stderr']:.4f}"
                   " (ELBO: decoder NLL + latent ODE prior + posterior entropy)"
                   if "bpd_bound" in rep else rep["bpd_bound_note"])
    if "nll_nats" in rep:
        typer.echo(f"ODE: NLL {rep['nll_nats']:.4f} +- {rep['nll_stderr']:.4f} nats/example "
                   f"({rep['n']} {split} examples, {rep['trace']} trace, {rep['nfe']:.0f} NFE per "
                   f"batch, {rep['seconds']:.1f} s)")
    if "bpd" in rep:
        typer.echo(f"ODE: bits/dim {rep['bpd']:.4f} +- {rep['bpd_stderr']:.4f}")
    if "vlb_nats" in rep:
        typer.echo(f"VLB ({rep['vlb_variance']}): {rep['vlb_nats']:.4f} +- "
                   f"{rep['vlb_stderr']:.4f} nats/example ({rep['n']} {split} examples; L_T "
                   f"{rep['vlb_prior']:.4f}, sum L_t-1 {rep['vlb_diffusion']:.4f}, L_0 "
                   f"{rep['vlb_decoder']:.4f}; {rep['vlb_nfe']} NFE, {rep['vlb_seconds']:.1f} s)")
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
    ckpt: Ckpt = None,
    solver: Annotated[str, typer.Option(
        "--solver", "-s", help="A deterministic fixed-step solver (ddim with eta 0, dpm, heun, "
                               "...).")] = "dpm",
    nfe: Annotated[int, typer.Option(
        "--nfe", **number(int, 2),
        help="Model calls per sample, the final denoise included.")] = 10,
    search: Annotated[str, typer.Option(
        "--search", help="gits (dynamic programming over a fine grid, then descent) or descent "
                         "(from the solver's default grid).")] = "gits",
    n: Annotated[int, typer.Option(
        "--n", **number(int, 1),
        help="Prior draws to tune on (a tight ODE solve of each is the target).")] = 256,
    n_heldout: Annotated[int, typer.Option(
        "--n-heldout", **number(int, 1),
        help="Held-out prior draws the error is also reported on.")] = 256,
    evals: Annotated[int, typer.Option(
        "--evals", **number(int, 0), help="Most solver runs of the descent.")] = 200,
    t_min: EndTime = None,
    spacing: Annotated[str | None, typer.Option(
        "--spacing", help="The built-in grid to start from and compare with: "
                          f"{', '.join(SPACINGS)} (default: the solver's).")] = None,
    seed: Seed = 0,
    out: Annotated[Path | None, out_option(
        "Grid file (.json; default <run>/grid_<solver>_<nfe>nfe.json).")] = None,
    device: Device = "auto",
    threads: Threads = 0,
    prompt: Prompts = None,
    negative_prompt: NegativePrompt = None,
    guidance: Guidance = None,
    height: Height = None,
    width: Width = None,
    **solver_opts,
) -> None:
    """Optimize the time grid of a solver at a fixed NFE for a trained model (GITS / descent;
    --seed seeds the tuning draws, seed + 1 the held-out ones; a Stable Diffusion folder: on a
    few --prompt's)."""
    from .sampling_commands import optimize_grid_command

    g, path = optimize_grid_command(ckpt, solver=solver, nfe=nfe, search=search, n=n,
                                    n_heldout=n_heldout, evals=evals, t_min=t_min, spacing=spacing,
                                    seed=seed, out=out, device=device, threads=threads,
                                    solver_opts=solver_opts, prompts=prompt,
                                    negative_prompt=negative_prompt, guidance=guidance,
                                    height=height, width=width)
    typer.echo(f"{solver} at {g.nfe} NFE, {search} on {n} draws, {g.seconds:.1f} s")
    typer.echo(f"endpoint error, tuning draws: {g.error_before:.4g} -> {g.error_after:.4g} "
               f"({g.error_after / g.error_before:.2f}x)")
    typer.echo(f"endpoint error, held out:     {g.heldout_before:.4g} -> {g.heldout_after:.4g} "
               f"({g.heldout_after / g.heldout_before:.2f}x)")
    typer.echo("ts: " + " ".join(f"{t:.4g}" for t in g.ts.tolist()))
    typer.echo(f"grid: {path} (use: sde-gen sample --grid {path})")


@app.command(context_settings={"allow_interspersed_args": True})
@one_line_errors
def calibrate(
    more_nfe: Annotated[list[int] | None, typer.Argument(
        metavar="NFE", help="More NFEs after --nfe's first (--nfe 5 10 20).")] = None,
    ckpt: Ckpt = None,
    nfe: Annotated[list[int] | None, typer.Option(
        "--nfe", help="Model calls per sample to calibrate for, the final denoise included: "
                      "--nfe 5 10 20 (default 5 10 20).")] = None,
    solver: Annotated[str | None, typer.Option(
        "--solver", "-s", help="ipndm, deis or dpm (default: deis up to 5 NFE, else ipndm).")
    ] = None,
    budget: Annotated[float, typer.Option(
        "--budget", help="Seconds for all the NFEs together, teacher solves included (> 0).")
    ] = 60.0,
    n: Annotated[int, typer.Option(
        "--n", **number(int, 1), help="Prior draws to tune on, shared by the NFEs (a tight ODE "
                                      "solve of each is the target; n/2 more validate; at most "
                                      "512 are used).")] = 256,
    seed: Seed = 0,
    device: Device = "auto",
    threads: Threads = 0,
    prompt: Prompts = None,
    negative_prompt: NegativePrompt = None,
    guidance: Guidance = None,
    height: Height = None,
    width: Width = None,
) -> None:
    """Learn the run's fast-solver time grid at each NFE by gradient through the solver (LD3)
    and store it in <run>/calibration.json; 'sample --steps K' then uses it (a Stable Diffusion
    folder: calibrated on a few --prompt's, used for any)."""
    from .sampling_commands import calibrate_command

    nfes = [*(nfe or []), *(more_nfe or [])] or [5, 10, 20]
    cals, path = calibrate_command(ckpt, nfes=nfes, solver=solver, budget=budget, n=n,
                                   seed=seed, device=device, threads=threads, prompts=prompt,
                                   negative_prompt=negative_prompt, guidance=guidance,
                                   height=height, width=width)
    for c in cals:
        typer.echo(f"{c.nfe} NFE ({c.solver}, sample --steps {c.steps}): endpoint error "
                   f"{c.error_start:.4g} -> {c.error:.4g} on the calibration draws "
                   f"({c.iterations} steps from the {c.start} grid, {c.seconds:.1f} s)")
    typer.echo(f"calibration: {path}")


@app.command()
@one_line_errors
def distill(
    ckpt: Ckpt = None,
    steps: Annotated[list[int] | None, typer.Option(
        "--steps", **number(int, 1, 1000),
        help="Sampling step counts to report the distilled model at: --steps 1 2 4.")] = None,
    more_steps: Annotated[list[int] | None, typer.Argument(
        hidden=True, help="The values after the first of --steps 1 2 4.")] = None,
    method: Annotated[str, typer.Option(
        "--method", help="consistency: consistency distillation with a Heun teacher "
                         "(sde_gen.consistency).")] = "consistency",
    workdir: Annotated[Path | None, typer.Option(
        "--workdir", "-w", help="Run directory of the distilled model (default: "
                                "runs/<teacher>_consistency). Resumes from its latest "
                                "checkpoint.")] = None,
    intervals: Annotated[int, typer.Option(
        "--intervals", **number(int, 1, 1000),
        help="N: intervals of the distillation grid (Karras rho = 7).")] = 18,
    set_: Sets = [],  # noqa: B006 (typer copies it)
    progress: Progress = True,
) -> None:
    """Distill a trained run into a few-step consistency model (a run of its own, resumable;
    sample it with 'sde-gen sample --solver consistency --steps K'). --set takes train.* keys."""
    from .distill import distill as run_distill

    res = run_distill(ckpt, workdir, method=method,
                      steps=[*(steps or []), *(more_steps or [])] or (1, 2, 4),
                      intervals=intervals, overrides=set_, progress=progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    tr = res.train
    if tr.interrupted:
        typer.echo(f"interrupted at step {tr.step}: checkpoint written to {tr.checkpoint}; run "
                   "the same command to resume")
        return
    typer.echo(f"step {tr.step}: consistency loss {tr.loss:.4g} ({res.seconds:.0f} CPU s)")
    typer.echo(f"checkpoint: {tr.checkpoint}")
    for row in res.report["rows"]:
        typer.echo(f"{row['steps']} step(s): energy distance to the teacher's ODE samples "
                   f"{row['energy_distance']:.4g} (teacher's DDIM at {row['nfe']} NFE: "
                   f"{row['teacher_ddim_energy_distance']:.4g})")
    typer.echo(f"report: {res.report_path}")
    typer.echo(f"sample: sde-gen sample --ckpt {tr.workdir} --solver consistency --steps "
               f"{res.settings.steps[0]}")


@app.command("eval")
@one_line_errors
def eval_(
    ckpt: Ckpt = None,
    data: Data = None,
    n: Annotated[int, typer.Option(
        "--n", "--num-samples", **number(int, 2),
        help="Generated images for FID / FD-classifier (--num-samples under torchrun).")] = 1000,
    solver: Annotated[str | None, typer.Option(
        "--solver", help="Sampler for the generated images (default ddim; consistency on a "
                         "distilled run).")] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", **number(int, 1), help="Sampler grid intervals (default 49 with the default "
                                          "solver; a distilled run: 1).")] = None,
    n_bpd: Annotated[int, typer.Option(
        "--n-bpd", **number(int, 0), help="Test images for bits/dim (0: skip).")] = 256,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", **number(int, 1), help="Batch size.")] = 256,
    seed: Seed = 0,
    classifier_steps: Annotated[int, typer.Option(
        "--classifier-steps", **number(int, 1),
        help="Training steps of the FD-classifier network (cached per dataset).")] = 1500,
    out: Annotated[Path | None, out_option("JSON path (default <run>/eval.json).")] = None,
    device: Device = "auto",
    progress: Progress = True,
    threads: Threads = 0,
) -> None:
    """Sample quality (FID if available, FD-classifier) and test bits/dim of an image run
    (--seed seeds the samples, the real images drawn and the probes)."""
    from .sample_quality import eval_command

    rep, path = eval_command(ckpt, data=data, n=n, solver=solver, steps=steps, n_bpd=n_bpd,
                             batch_size=batch_size, seed=seed, classifier_steps=classifier_steps,
                             out=out, device=device, progress=progress, threads=threads)
    if "psnr_db" in rep:  # a first-stage run
        typer.echo(f"{'reconstruction PSNR':<24} {rep['psnr_db']:.2f} +- {rep['psnr_stderr']:.2f}"
                   f" dB ({rep['n']} {rep['split']} images; MSE {rep['mse']:.5f})")
        typer.echo(f"{'VAE bits/dim (N(0,I))':<24} {rep['vae_bpd']:.4f} +- "
                   f"{rep['vae_bpd_stderr']:.4f}")
        typer.echo(f"result: {path}")
        return
    rows = [("samples", f"{n} with {rep['solver']}, {rep['nfe']} NFE, "
                        f"{rep['sample_seconds']:.1f} s"),
            ("FID", f"{rep['fid']:.2f}" if rep["fid"] is not None else rep["fid_note"])]
    rows.append(("FD-classifier (not FID)", f"{rep['fd_classifier']:.4f}"
                 if "fd_classifier" in rep else rep["fd_classifier_note"]))
    if "latent_nats_per_dim" in rep:
        rows.append(("latent nats/dim", f"{rep['latent_nats_per_dim']:.4f} +- "
                                        f"{rep['latent_nats_per_dim_stderr']:.4f} (not bits/dim)"))
    if "bpd_bound" in rep:
        rows.append(("test bits/dim bound", f"{rep['bpd_bound']:.4f} +- "
                     f"{rep['bpd_bound_stderr']:.4f} ({rep['bpd_n']} images)"))
    if "bpd" in rep:
        rows.append(("test bits/dim", f"{rep['bpd']:.4f} +- {rep['bpd_stderr']:.4f} "
                                      f"({rep['bpd_n']} images)"))
    if "bpd_note" in rep:
        rows.append(("test bits/dim", rep["bpd_note"]))
    for k, v in rows:
        typer.echo(f"{k:<24} {v}")
    typer.echo(f"result: {path}")


@app.command()
@one_line_errors
def export(
    *,
    ckpt: Ckpt = None,
    out: Annotated[Path, out_option("Output .safetensors file.")],
) -> None:
    """Write the EMA weights and the config as a safetensors file (safe to share and load)."""
    from .export import export_safetensors

    path = export_safetensors(ckpt, out)
    typer.echo(f"exported: {path}")


@app.command()
@one_line_errors
def figures(
    *,
    ckpt: Ckpt = None,
    out: Annotated[Path, out_option("Directory for the PNGs (created).")],
    n: Annotated[int | None, typer.Option(
        "--n", **number(int, 1),
        help="Examples per figure: image rows (default 6) or 2-D points (default 1000).")] = None,
    seed: Seed = 0,
    prefix: Annotated[str, typer.Option(
        "--prefix", help="Prepended to each file name (no path separator or '..').")] = "",
    device: Device = "auto",
    threads: Threads = 0,
) -> None:
    """Write the run's figures (forward process, progressive generation, DDIM consistency,
    interpolation) as PNGs (--seed seeds every draw)."""
    from .figures import figures_command

    for path in figures_command(ckpt, out, n=n, seed=seed, device=device, prefix=prefix,
                                threads=threads):
        typer.echo(f"figure: {path}")


@app.command("show-config")
@one_line_errors
def show_config(
    config: Annotated[Path | None, typer.Option("--config", "-c",
                                                   help="YAML config file.")] = None,
    set_: Annotated[list[str], typer.Option(
        "--set", help="Override a config value (repeatable).")] = [],  # noqa: B006
) -> None:
    """Print the resolved configuration as YAML."""
    from .config import to_dict

    _check_config(config)
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
