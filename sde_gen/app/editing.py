"""Inpaint and colorize one PNG with a trained image run: read, check, condition, write.

The pictures are checked against the run before any sampling: the image must have the run's
size and channels (1: greyscale, 3: RGB; an alpha channel is dropped), a mask the run's size,
one channel (or equal R, G, B) and only the values 0 and 1 (or 0 and 255: black and white),
white (1) where a pixel is known and kept, black (0) where it is to be filled in, and at least
one pixel of each kind. A colorization's input is greyscale (one channel, or equal R, G, B) of
the run's size, for a run on colour images. The output PNG is written atomically once the
sampler has finished, so a failure leaves no file.

The samplers are :func:`sde_gen.sampling.impute` (replacement, [Song21] App. I.2, RePaint's
resampling [Lugmayr22], or SMC) and :func:`sde_gen.sampling.colorize` ([Song21] App. I.3); a
class-conditional run can be conditioned on a class too (:mod:`sde_gen.guidance`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.images import is_grey
from ..errors import UserInputError
from ..parameterization import EpsModel
from ..scaling import model_to_uint8, uint8_to_model
from .factory import is_image
from .outputs import _atomic
from .runs import LoadedRun

#: PIL modes read as greyscale and as colour (an alpha band is dropped); others are refused.
GREY_MODES = ("1", "L", "LA")
COLOUR_MODES = ("RGB", "RGBA", "P", "PA")


def read_png(path: str | os.PathLike, *, flag: str = "--image") -> np.ndarray:
    """An 8-bit picture as ``(C, H, W)`` uint8, ``C`` 1 (greyscale modes) or 3 (colour modes).

    Raises:
        FileNotFoundError: no such file.
        UserInputError: not a readable image, or a mode other than 8-bit greyscale or colour.
    """
    from PIL import Image

    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{flag} {path} is a directory, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path} does not exist")
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode in GREY_MODES:
                a = np.asarray(img.convert("L"))[None]
            elif mode in COLOUR_MODES:
                a = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
                a = a[:1] if mode in ("P", "PA") and is_grey(a.transpose(1, 2, 0)) else a
            else:
                raise UserInputError(f"{flag} {path} has the image mode {mode}; save it as an "
                                     "8-bit greyscale or RGB PNG")
    except UserInputError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserInputError(f"cannot read {flag} {path} as an image: {text}") from None
    return np.array(a)  # a writable, contiguous copy


def _describe(a: np.ndarray) -> str:
    return f"{a.shape[2]}x{a.shape[1]} pixels, {'greyscale' if a.shape[0] == 1 else 'RGB'}"


def _run_shape(run: LoadedRun, command: str) -> tuple[int, int, int]:
    if not is_image(run.cfg.data):
        raise UserInputError(f"sde-gen {command} is for image runs; {run.workdir} was trained on "
                             f"the 2-D data {run.cfg.data.name!r}")
    return run.shape


def _check_size(a: np.ndarray, shape: tuple[int, int, int], path: Path, flag: str) -> None:
    c, h, w = shape
    if a.shape[1:] != (h, w):
        raise UserInputError(f"{flag} {path} is {a.shape[2]}x{a.shape[1]} pixels; this run's "
                             f"images are {w}x{h} (width x height)")


def _read_grey(path: Path, shape: tuple[int, int, int], flag: str, unequal: str) -> np.ndarray:
    """A picture of the run's size as one channel ``(1, H, W)``: an RGB one must have equal
    R, G and B (else ``unequal`` says why not)."""
    a = read_png(path, flag=flag)
    _check_size(a, shape, path, flag)
    if a.shape[0] == 3:
        if not (np.array_equal(a[0], a[1]) and np.array_equal(a[0], a[2])):
            raise UserInputError(f"{flag} {path} {unequal}")
        a = a[:1]
    return a


def read_image_for_run(path: str | os.PathLike, shape: tuple[int, int, int]) -> torch.Tensor:
    """``--image`` as the run's model input ``(1, C, H, W)`` in [-1, 1], checked.

    Raises:
        UserInputError: its size or channels differ from the run's ``shape``.
    """
    path = Path(path)
    a = read_png(path)
    _check_size(a, shape, path, "--image")
    if a.shape[0] != shape[0]:
        want = "greyscale (1 channel)" if shape[0] == 1 else "RGB (3 channels)"
        raise UserInputError(f"--image {path} is {_describe(a)}; this run's images are {want}: "
                             "convert it first")
    return uint8_to_model(torch.from_numpy(a))[None]


def read_mask(path: str | os.PathLike, shape: tuple[int, int, int]) -> torch.Tensor:
    """``--mask`` as ``(1, 1, H, W)`` float 0/1 (1: known), shared over the channels, checked.

    Raises:
        UserInputError: a size other than the run's, unequal R, G, B, values other than 0/1 (or
            0/255), or a mask with no known or no unknown pixel.
    """
    path = Path(path)
    a = _read_grey(path, shape, "--mask", "has unequal R, G and B channels; a mask is black and "
                                          "white (one channel)")
    values = set(np.unique(a).tolist())
    if values <= {0, 1}:
        known = a == 1
    elif values <= {0, 255}:
        known = a == 255
    else:
        shown = ", ".join(map(str, sorted(values)[:6])) + (", ..." if len(values) > 6 else "")
        raise UserInputError(f"--mask {path} has the values {shown}; a mask holds only 0 and 1 "
                             "(or black 0 and white 255): 1 where a pixel is known")
    if known.all():
        raise UserInputError(f"--mask {path} marks every pixel as known (white): there is "
                             "nothing to inpaint")
    if not known.any():
        raise UserInputError(f"--mask {path} marks no pixel as known (all black): nothing to "
                             "condition on; use sde-gen sample for unconditional samples")
    return torch.from_numpy(known.astype(np.float32))[None]


def read_grey_for_run(path: str | os.PathLike, shape: tuple[int, int, int]) -> torch.Tensor:
    """``--image`` of a colorization: greyscale ``(1, 1, H, W)`` in [-1, 1], checked.

    Raises:
        UserInputError: a run on greyscale images, a size other than the run's, or an RGB image
            whose channels differ.
    """
    if shape[0] != 3:
        raise UserInputError("sde-gen colorize needs a run on colour (RGB) images; this run's "
                             "images have 1 channel")
    path = Path(path)
    a = _read_grey(path, shape, "--image", "is not greyscale: its R, G and B channels differ; "
                                           "colorize takes a grey picture")
    return uint8_to_model(torch.from_numpy(np.array(a)))[None]


def write_png(pixels: torch.Tensor, out: str | os.PathLike) -> Path:
    """Write ``(C, H, W)`` uint8 pixels as a PNG at ``out`` atomically (temp file, rename); a
    write error names ``out``."""
    from PIL import Image

    a = pixels.cpu().numpy()
    img = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
    return _atomic(Path(out), lambda tmp: img.save(tmp, format="png"))


def labelled_model(run: LoadedRun, label: int | None, guidance: float | None) -> EpsModel:
    """The run's model, conditioned on class ``label`` (guided with ``guidance`` > 0) if given.

    Raises:
        UserInputError: a label or guidance for an unconditional run, a label outside its
            classes, or guidance without a label.
    """
    k = run.model.num_classes
    if label is None:
        if guidance is not None:
            raise UserInputError("--guidance needs --class K (the class to guide towards)")
        return run.model
    if k is None:
        raise UserInputError("--class and --guidance need a class-conditional run (trained with "
                             "model.class_cond=true); this one is unconditional")
    if not 0 <= label < k:
        raise UserInputError(f"--class {label} is outside this run's classes 0..{k - 1}")
    from ..guidance import classifier_free, conditional

    if guidance:
        return classifier_free(run.model, label, guidance)
    return conditional(run.model, label)


def check_nonfinite(x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise UserInputError("the result is NaN or infinite (the model or the solver diverged); "
                             "nothing was written")


def inpaint_file(run: LoadedRun, image: str | os.PathLike, mask: str | os.PathLike,
                 out: str | os.PathLike, *, label: int | None = None,
                 guidance: float | None = None, seed: int = 0,
                 device: torch.device | str = "cpu", **options: Any) -> Path:
    """Fill in the black pixels of ``mask`` in ``image`` with :func:`sde_gen.sampling.impute`
    and write the result to ``out`` (the known pixels are the input's, exactly).

    Args:
        run: a loaded image run.
        image, mask, out: PNG paths (``out`` checked by the caller).
        label, guidance: a class to condition on (class-conditional runs).
        seed: seed of the sampler's generator.
        device: where to sample.
        **options: :func:`~sde_gen.sampling.impute`'s (``solver``, ``steps``, ``resample``,
            ``method``, ``particles``, ``t_min``, ``denoise``, solver options).

    Raises:
        UserInputError: bad pictures (see the module), labels, or a non-finite result; checked
            before the sampler runs except the last.
    """
    if run.codec is not None:
        return _inpaint_latent(run, image, mask, out, label=label, guidance=guidance, seed=seed,
                               device=device, **options)
    shape = _run_shape(run, "inpaint")
    x_known = read_image_for_run(image, shape)
    known = read_mask(mask, shape)
    model = labelled_model(run, label, guidance)
    from ..sampling import impute

    g = torch.Generator(device=device).manual_seed(seed)
    res = impute(model, run.sde, x_known.to(device), known[0].to(device), generator=g, **options)
    check_nonfinite(res.x)
    original = torch.from_numpy(read_png(image))
    pixels = torch.where(known[0].bool(), original, model_to_uint8(res.x[0].float().cpu()))
    return write_png(pixels, out)


def latent_mask(known: torch.Tensor, factor: int) -> torch.Tensor:
    """``(..., H, W)`` pixel mask -> ``(..., H/f, W/f)``: a latent cell is known where every
    pixel of its ``f x f`` block is (a cell with an unknown pixel is filled in)."""
    lead = known.shape[:-2]
    blocks = known.reshape(-1, 1, *known.shape[-2:]).float()
    cells = -torch.nn.functional.max_pool2d(-blocks, factor)  # min over each block
    return cells.reshape(*lead, *cells.shape[-2:])


def _inpaint_latent(run: LoadedRun, image: str | os.PathLike, mask: str | os.PathLike,
                    out: str | os.PathLike, *, label: int | None, guidance: float | None,
                    seed: int, device: torch.device | str, **options: Any) -> Path:
    """:func:`inpaint_file` on a latent run (a Stable Diffusion folder with its prompt bound):
    imputation of the latents ([Avrahami23] blended latent diffusion, with any of
    :func:`~sde_gen.sampling.impute`'s methods). The known latents are the encoder's posterior
    mean of the image, known where every pixel of the cell's ``f x f`` block is
    (:func:`latent_mask`); the latents are decoded and the known pixels pasted back. Exact in
    latent space (the latent imputation is ``impute``'s); approximate as an image completion,
    by the autoencoder's reconstruction error of the known region."""
    shape = run.data_shape
    _run_shape(run, "inpaint")
    x = read_image_for_run(image, shape)
    known = read_mask(mask, shape)
    cells = latent_mask(known[0], run.codec.factor)
    if not cells.any():
        f = run.codec.factor
        raise UserInputError(f"--mask {mask} has no wholly known {f}x{f} block: the latent model "
                             f"conditions on latent cells, each {f}x{f} pixels")
    model = run.model if run.text is not None else labelled_model(run, label, guidance)
    from ..sampling import impute

    codec_device = next(run.codec.vae.parameters()).device
    with torch.no_grad():
        z_known = run.codec.encode(x.to(codec_device)).float().to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    res = impute(model, run.sde, z_known, cells.to(device), generator=g, **options)
    decoded = run.decode(res.x)
    check_nonfinite(decoded)
    original = torch.from_numpy(read_png(image))
    pixels = torch.where(known[0].bool(), original, model_to_uint8(decoded[0].float().cpu()))
    return write_png(pixels, out)


def colorize_file(run: LoadedRun, image: str | os.PathLike, out: str | os.PathLike, *,
                  label: int | None = None, guidance: float | None = None, seed: int = 0,
                  device: torch.device | str = "cpu", **options: Any) -> Path:
    """Colour a greyscale ``image`` with :func:`sde_gen.sampling.colorize` and write ``out``.

    Args and raises as :func:`inpaint_file` (``options``: ``solver``, ``steps``, ``resample``,
    ``t_min``, ``denoise``, solver options).
    """
    shape = _run_shape(run, "colorize")
    grey = read_grey_for_run(image, shape)
    model = labelled_model(run, label, guidance)
    from ..sampling import colorize

    g = torch.Generator(device=device).manual_seed(seed)
    res = colorize(model, run.sde, grey.to(device), generator=g, **options)
    check_nonfinite(res.x)
    return write_png(model_to_uint8(res.x[0].float().cpu()), out)


EDIT_METHODS = ("replacement", "smc")


def edit_options(*, method: str = "replacement", solver: str | None = None,
                 steps: int | None = None, t_min: float | None = None, resample: int = 1,
                 particles: int | None = None, denoise: bool = True,
                 solver_opts: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sampler options of ``inpaint`` / ``colorize`` for :func:`inpaint_file` /
    :func:`colorize_file`, checked before any file is read: ``--method replacement`` takes a
    ``solver`` (default ``pc``), its options and ``resample``; ``--method smc`` takes
    ``particles`` and none of those (its own ancestral kernel).

    Raises:
        UserInputError: an unknown method or solver, or an option that does not apply.
    """
    from .solver_options import flag_list, solver_options

    if method not in EDIT_METHODS:
        raise UserInputError(f"unknown --method {method!r}; choose replacement or smc")
    if particles is not None and method != "smc":
        raise UserInputError("--particles applies to --method smc")
    if method == "smc":
        given = {k: v for k, v in (solver_opts or {}).items() if v is not None}
        if solver is not None:
            given = {"solver": solver, **given}
        if particles is None:
            raise UserInputError("--method smc needs --particles K (particles per image)")
        if resample != 1:
            raise UserInputError("--resample applies to --method replacement (SMC resamples "
                                 "particles)")
        if given:
            raise UserInputError(f"{flag_list(given)} does not apply to --method smc (its own "
                                 "ancestral kernel)")
        opts: dict[str, Any] = {"method": "smc", "particles": particles}
    else:
        solver = solver or "pc"
        opts = {**solver_options(solver, solver_opts or {}), "method": "replacement",
                "solver": solver, "resample": resample}
    opts.update({k: v for k, v in (("steps", steps), ("t_min", t_min)) if v is not None})
    return {**opts, "denoise": denoise}


def edit_command(
    command: str, ckpt: str | os.PathLike | None, image: str | os.PathLike,
    out: str | os.PathLike, *, mask: str | os.PathLike | None = None, class_: int | None = None,
    guidance: float | None = None, seed: int = 0, device: str = "auto", threads: int = 0,
    method: str = "replacement", solver: str | None = None, steps: int | None = None,
    t_min: float | None = None, resample: int = 1, particles: int | None = None,
    denoise: bool = True, prompt: str | None = None, negative_prompt: str | None = None,
    **solver_opts: Any,
) -> Path:
    """``sde-gen inpaint`` (``command="inpaint"``, with ``mask``) or ``sde-gen colorize``: the
    options (:func:`edit_options`; ``solver_opts``: the solver flags, ``None`` where not given)
    and ``out`` checked before the checkpoint is read, the run loaded with its thread policy,
    the picture written to ``out``. ``inpaint`` on a Stable Diffusion folder takes ``prompt``
    (guided with ``guidance`` against ``negative_prompt``) at the image's size.

    Raises:
        UserInputError: see :func:`edit_options`, :func:`inpaint_file`, :func:`colorize_file`,
            :func:`~.prompting.bind_prompt`.
    """
    from .command_run import open_run
    from .distributed import resolve_device
    from .outputs import check_out_path
    from .prompting import bind_prompt, check_text_options

    opts = edit_options(method=method, solver=solver, steps=steps, t_min=t_min, resample=resample,
                        particles=particles, denoise=denoise, solver_opts=solver_opts)
    check_text_options(prompt, negative_prompt, None, None)
    out = check_out_path(out, ".png")  # before the checkpoint is even read
    dev = resolve_device(device)
    run = open_run(ckpt, dev, threads, pixels_only=None if command == "inpaint" else command,
                   text_ok=command == "inpaint")
    if command == "inpaint" and (run.text is not None or prompt is not None):
        if class_ is not None:
            raise UserInputError("--class does not combine with --prompt")
        height, width = read_png(image).shape[1:]
        run = bind_prompt(run, prompt, negative_prompt=negative_prompt, guidance=guidance,
                          height=height, width=width)
        guidance = None  # the prompt's, bound in the model
    kw = dict(label=class_, guidance=guidance, seed=seed, device=dev, **opts)
    if command == "inpaint":
        return inpaint_file(run, image, mask, out, **kw)
    return colorize_file(run, image, out, **kw)
