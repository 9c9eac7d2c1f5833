"""``sde-gen restore``: one PNG measurement ``y = A x0 + s z`` of an image run restored with
:func:`sde_gen.inverse.restore`, written as a strip (the measurement, then the restorations).

``--image`` is the measurement itself, in the run's pixel scale: for ``inpaint`` an image of the
run's size with a ``--mask`` (white: known); for ``superres`` the ``f x f`` average-pooled image,
``H/f x W/f`` pixels; for ``deblur`` the blurred image (Gaussian, zero padding); for ``colorize``
the grey image (the channel mean) of an RGB run. ``--noise-std s`` is the measurement noise in
the model's [-1, 1] scale. Everything is checked before any sampling and the PNG is written
atomically at the end, so a failure leaves no file.

On a latent run only ``--method dps`` is defined: it guides through the decoder
(:func:`sde_gen.latent.restore.restore_latent`, whose docstring says what is exact and what is
approximate); the restorations are decoded. A Stable Diffusion folder is such a run once
``--prompt`` is bound (:mod:`.prompting`), at the size the measurement implies.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from ..inverse import METHODS, Blur, Colorize, Downsample, LinearOperator, Mask
from ..scaling import model_to_uint8, uint8_to_model
from .editing import (
    _run_shape,
    check_nonfinite,
    read_grey_for_run,
    read_image_for_run,
    read_mask,
    read_png,
    write_png,
)
from .runs import LoadedRun

TASKS = ("inpaint", "superres", "deblur", "colorize")
#: Each task's operator flag and its default (``None``: required).
TASK_FLAGS = {"inpaint": ("--mask", None), "superres": ("--factor", 4),
              "deblur": ("--blur-sigma", 2.0), "colorize": (None, None)}
#: restore's options behind the method flags: ``name -> (flag, the methods that take it)``.
METHOD_FLAGS = {"particles": ("--particles", ("smc",)), "zeta": ("--zeta", ("dps",)),
                "step": ("--dps-step", ("dps",)), "cg_steps": ("--cg-steps", ("pgdm", "mmps")),
                "solver": ("--solver", ("dps", "pgdm", "mmps", "replacement")),
                "resample": ("--resample", ("replacement",))}
GAP = 2  # white pixels between the strip's tiles


def restore_options(*, method: str, noise_std: float, task: str,
                    **flags: Any) -> dict[str, Any]:
    """The options of :func:`~sde_gen.inverse.restore` for ``method`` from the command's flags
    (``None`` where not given), checked before any file is read.

    Raises:
        UserInputError: an unknown task or method, a flag of another method, ``--method smc``
            without ``--particles``, or a method that needs ``s > 0`` (DPS's likelihood step)
            or ``s = 0`` and a mask (replacement) given otherwise.
    """
    if task not in TASKS:
        raise UserInputError(f"unknown --task {task!r}; choose one of {', '.join(TASKS)}")
    if method not in METHODS:
        raise UserInputError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    opts = {}
    for name, value in flags.items():
        if value is None or (name == "resample" and value == 1):  # 1: the default
            continue
        flag, methods = METHOD_FLAGS[name]
        if method not in methods:
            raise UserInputError(f"{flag} applies to --method {' or '.join(methods)}")
        opts[name] = value
    if method == "smc" and "particles" not in opts:
        raise UserInputError("--method smc needs --particles K (particles per restoration)")
    if opts.get("step") == "likelihood" and noise_std == 0:
        raise UserInputError("--dps-step likelihood weighs the residual by 1 / s^2: it needs "
                             "--noise-std > 0 (use --dps-step paper)")
    if method == "replacement" and (task != "inpaint" or noise_std > 0):
        raise UserInputError("--method replacement keeps the known pixels exactly: it needs "
                             "--task inpaint and --noise-std 0")
    return {"method": method, **opts}


def check_task_flags(task: str, *, mask: Any, factor: Any, blur_sigma: Any) -> None:
    """Refuse an operator flag of another task, and ``--task inpaint`` without ``--mask``."""
    given = {"--mask": mask, "--factor": factor, "--blur-sigma": blur_sigma}
    own = TASK_FLAGS[task][0]
    for flag, value in given.items():
        if value is not None and flag != own:
            owner = next(t for t, (f, _) in TASK_FLAGS.items() if f == flag)
            raise UserInputError(f"{flag} applies to --task {owner}")
    if task == "inpaint" and mask is None:
        raise UserInputError("--task inpaint needs --mask M.png (white: known pixels)")


def measurement(task: str, image: str | os.PathLike, shape: tuple[int, int, int], *,
                mask: str | os.PathLike | None = None, factor: int | None = None,
                blur_sigma: float | None = None) -> tuple[LinearOperator, torch.Tensor,
                                                          torch.Tensor]:
    """The operator, ``y`` ``(1, *M)`` in the model's scale and the measurement as a picture of
    the run's size ``(C, H, W)`` uint8 (for the strip), from ``--image`` and the task's flag.

    Raises:
        UserInputError: a picture of the wrong size or channels, or an operator that does not
            take the run's images (e.g. a factor that does not divide H and W).
    """
    c, h, w = shape
    path = Path(image)
    if task == "inpaint":
        x = read_image_for_run(path, shape)
        known = read_mask(mask, shape)[0].expand(c, h, w)
        op = Mask(known)
        grey = torch.tensor(128, dtype=torch.uint8)  # the unknown pixels
        shown = torch.where(known.bool(), model_to_uint8(x[0]), grey)
        return op, op(x), shown
    if task == "colorize":
        grey = read_grey_for_run(path, shape)
        return Colorize(), grey, model_to_uint8(grey[0]).expand(3, h, w)
    if task == "deblur":
        x = read_image_for_run(path, shape)
        sigma = blur_sigma if blur_sigma is not None else TASK_FLAGS["deblur"][1]
        return Blur(sigma), x, model_to_uint8(x[0])
    f = factor if factor is not None else TASK_FLAGS["superres"][1]
    op = Downsample(f)
    _, hm, wm = op.out_shape(shape)
    a = read_png(path)
    if a.shape[1:] != (hm, wm):
        raise UserInputError(f"--image {path} is {a.shape[2]}x{a.shape[1]} pixels; --task superres "
                             f"--factor {f} measures this run's {w}x{h} images as {wm}x{hm} "
                             "(width x height)")
    if a.shape[0] != c:
        want = "greyscale (1 channel)" if c == 1 else "RGB (3 channels)"
        raise UserInputError(f"--image {path} has {a.shape[0]} channel(s); this run's images are "
                             f"{want}")
    pixels = torch.from_numpy(a)
    shown = pixels.repeat_interleave(f, dim=1).repeat_interleave(f, dim=2)
    return op, uint8_to_model(pixels)[None], shown


def check_latent_method(method: str | None) -> None:
    """On a latent run, only DPS (with its paper step) is defined.

    Raises:
        UserInputError: another method, naming why.
    """
    if method != "dps":
        raise UserInputError(f"--method {method} on a latent run: the measurement A D(z) is not "
                             "linear in the latent z; only --method dps (guided through the "
                             "decoder) is defined there")


def strip(tiles: list[torch.Tensor]) -> torch.Tensor:
    """``(C, H, W)`` uint8 tiles side by side, :data:`GAP` white columns between them."""
    c, h, _ = tiles[0].shape
    gap = torch.full((c, h, GAP), 255, dtype=torch.uint8)
    parts = [p for t in tiles for p in (t, gap)][:-1]
    return torch.cat(parts, dim=2)


def image_clip(method: str, solver: str | None) -> float | None:
    """1 (pixels in ``[-1, 1]``) where the guided x0 can be clipped: DPS, PiGDM and MMPS on
    DDPM's kernel or on a solver that steps on x0; else ``None``."""
    from ..sampling.driver import solver_spec

    if method not in ("dps", "pgdm", "mmps"):
        return None
    if solver is None or "clip_sample" in (o.name for o in solver_spec(solver).options):
        return 1.0
    return None


def restore_file(run: LoadedRun, task: str, image: str | os.PathLike, out: str | os.PathLike,
                 *, noise_std: float, n: int = 4, mask: str | os.PathLike | None = None,
                 factor: int | None = None, blur_sigma: float | None = None, seed: int = 0,
                 device: torch.device | str = "cpu", **options: Any) -> Path:
    """Restore ``n`` samples of ``x0 | y`` for the measurement ``image`` and write the strip.

    Args:
        run: a loaded image run.
        task: one of :data:`TASKS`; ``mask``, ``factor``, ``blur_sigma`` its operator.
        image, out: PNG paths (``out`` checked by the caller).
        noise_std: the measurement noise ``s >= 0`` in the model's scale.
        n: restorations, one column each.
        seed: seed of the sampler's generator.
        **options: :func:`~sde_gen.inverse.restore`'s (``method``, ``steps``, ``t_min``, the
            method's options).

    Raises:
        UserInputError: bad pictures or operator (:func:`measurement`), bad options, or a
            non-finite result; checked before the sampler runs except the last.
    """
    from ..inverse import restore

    if run.codec is not None:  # a latent run: DPS through the decoder
        return _restore_latent_file(run, task, image, out, n=n, mask=mask, factor=factor,
                                    blur_sigma=blur_sigma, seed=seed, device=device, **options)
    shape = _run_shape(run, "restore")
    op, y, shown = measurement(task, image, shape, mask=mask, factor=factor,
                               blur_sigma=blur_sigma)
    g = torch.Generator(device=device).manual_seed(seed)
    options.setdefault("clip_sample", image_clip(options["method"], options.get("solver")))
    res = restore(run.model, run.sde, y.to(device), op, noise_std=noise_std,
                  shape=(n, *shape), generator=g, device=device, **options)
    check_nonfinite(res.x)
    tiles = [shown, *(model_to_uint8(x.float().cpu()) for x in res.x)]
    return write_png(strip(tiles), out)


def _restore_latent_file(run: LoadedRun, task: str, image: str | os.PathLike,
                         out: str | os.PathLike, *, n: int, mask: str | os.PathLike | None,
                         factor: int | None, blur_sigma: float | None, seed: int,
                         device: torch.device | str, **options: Any) -> Path:
    """:func:`restore_file` on a latent run: the measurement of the decoded image, restored by
    :func:`sde_gen.latent.restore.restore_latent` (DPS only), the latents decoded."""
    from ..latent.restore import restore_latent

    _run_shape(run, "restore")
    check_latent_method(options.get("method"))
    op, y, shown = measurement(task, image, run.data_shape, mask=mask, factor=factor,
                               blur_sigma=blur_sigma)
    g = torch.Generator(device=device).manual_seed(seed)
    kw = {k: options[k] for k in ("steps", "t_min", "zeta") if k in options}
    res = restore_latent(run.model, run.sde, y.to(device), lambda z: op(run.codec.decode(z)),
                         shape=(n, *run.shape), generator=g, device=device, **kw)
    with torch.no_grad():
        x = run.decode(res.x)
    check_nonfinite(x)
    tiles = [shown, *(model_to_uint8(xi.float().cpu()) for xi in x)]
    return write_png(strip(tiles), out)


def image_size(task: str, image: str | os.PathLike, factor: int | None) -> tuple[int, int]:
    """``(height, width)`` of the images the measurement ``image`` is of (``superres``: its
    size times the factor)."""
    a = read_png(image)
    f = (factor if factor is not None else TASK_FLAGS["superres"][1]) if task == "superres" \
        else 1
    return a.shape[1] * f, a.shape[2] * f


def restore_command(ckpt: str | os.PathLike | None, task: str, image: str | os.PathLike,
                    out: str | os.PathLike, *, noise_std: float, method: str,
                    mask: str | os.PathLike | None = None, factor: int | None = None,
                    blur_sigma: float | None = None, n: int = 4, steps: int | None = None,
                    t_min: float | None = None, seed: int = 0, device: str = "auto",
                    threads: int = 0, prompt: str | None = None,
                    negative_prompt: str | None = None, guidance: float | None = None,
                    **flags: Any) -> Path:
    """``sde-gen restore``: the options and ``out`` checked before the checkpoint is read, the
    run loaded with its thread policy, the strip written to ``out`` (``flags``: the method flags
    of :data:`METHOD_FLAGS`, ``None`` where not given). A Stable Diffusion folder takes
    ``prompt`` (guided with ``guidance`` against ``negative_prompt``) at the image's size.

    Raises:
        UserInputError: see :func:`restore_options`, :func:`check_task_flags`,
            :func:`restore_file`, :func:`~.prompting.bind_prompt`.
    """
    from .command_run import open_run
    from .distributed import resolve_device
    from .outputs import check_out_path
    from .prompting import bind_prompt, check_text_options

    opts = restore_options(method=method, noise_std=noise_std, task=task, **flags)
    check_task_flags(task, mask=mask, factor=factor, blur_sigma=blur_sigma)
    check_text_options(prompt, negative_prompt, None, None)
    if guidance is not None and prompt is None:
        raise UserInputError("--guidance needs --prompt TEXT (a Stable Diffusion folder)")
    opts.update({k: v for k, v in (("steps", steps), ("t_min", t_min)) if v is not None})
    out = check_out_path(out, ".png")
    dev = resolve_device(device)
    run = open_run(ckpt, dev, threads, text_ok=True)
    if run.text is not None and prompt is not None:
        height, width = image_size(task, image, factor)
        run = bind_prompt(run, prompt, negative_prompt=negative_prompt, guidance=guidance,
                          height=height, width=width)
    else:
        run = bind_prompt(run, prompt)  # refuses a prompt without a text model, and vice versa
    if run.codec is not None:
        check_latent_method(method)
        if flags.get("step") not in (None, "paper"):
            raise UserInputError("--dps-step on a latent run: only the paper step is defined")
    return restore_file(run, task, image, out, noise_std=noise_std, n=n, mask=mask,
                        factor=factor, blur_sigma=blur_sigma, seed=seed, device=dev, **opts)


__all__ = ["METHOD_FLAGS", "TASKS", "check_task_flags", "image_clip", "image_size", "measurement",
           "restore_command", "restore_file", "restore_options", "strip"]
