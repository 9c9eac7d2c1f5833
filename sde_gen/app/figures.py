"""The figures a person reads at a glance: what the forward process does to data, how one reverse
trajectory forms a sample, DDIM's consistency across step counts, and latent interpolation.

Image runs get labelled tables of images drawn with nearest-neighbour; 2-D runs get scatter and
path versions. Every figure uses fixed seeds, the model in eval mode and ``torch.no_grad``:

- ``forward``: ``x_t = alpha_t x0 + sigma_t eps`` at several ``t`` (one ``eps`` per example, so
  the same noise grows along a row), [Ho20] Eq. (4).
- ``progressive``: ``x_t`` and its Tweedie prediction ``x0_hat(x_t, t)`` along one DDPM ancestral
  trajectory, [Ho20] Sec. 4.3 and Fig. 6.
- ``ddim_consistency``: one ``x_T`` decoded by DDIM (eta = 0) with 10, 20, 50 and 100 steps beside
  DDPM's ancestral chain from the same ``x_T``, [Song21ddim] Sec. 5.2.
- ``interpolation_ode``: two data points encoded to ``x_T`` by the probability-flow ODE, their
  latents slerped and decoded, [Song21ddim] Sec. 5.3, [Song21] Sec. 4.3.
- ``interpolation_ddpm``: both points diffused to ``x_t`` (with the same noise), linearly mixed and
  denoised by the reverse chain (its noise fixed across the mixing weights), [Ho20] Sec. 4.4,
  Fig. 8.
- 2-D runs also get ``trajectories``: reverse-SDE (DDPM) and PF-ODE (DDIM) paths from ``x_T``.

Refs: [Ho20] Eq. (4), Sec. 4.3 (Fig. 6), Sec. 4.4 (Fig. 8); [Song21ddim] Sec. 5.2, 5.3;
[Song21] Sec. 4.3.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import UserInputError
from ..parameterization import EpsModel
from ..sde import SDE
from .config import Config
from .factory import is_image
from .figure_context import IMAGE_FIGURES, TOY_FIGURES, FigureContext

__all__ = ["IMAGE_FIGURES", "TOY_FIGURES", "check_out_dir", "check_prefix", "figures_command",
           "write_figures"]
from .command_run import SEED_MAX
from .outputs import _atomic_all
from .plots import pyplot, save_figure

Write = Callable[[Path], Any]


def check_out_dir(path: str | os.PathLike, *, flag: str = "--out", create: bool = True) -> Path:
    """``path`` as an output directory, checked (and created, unless ``create=False``) before
    any work.

    Raises:
        UserInputError: ``path`` (or a parent) is a file, or it is not writable.
    """
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == path else f"cannot be made: {p} is a file"
                raise UserInputError(f"{flag} {path} {what}; give a directory")
            if not os.access(p, os.W_OK | os.X_OK):
                raise UserInputError(f"{flag} {path}: {p} is not a writable directory")
            break
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserInputError(f"{flag} {path} cannot be made: {e.strerror or e}") from None
    return path


def check_prefix(prefix: str) -> str:
    """``prefix`` if it keeps every figure inside ``--out``: no path separator, no ``..``.

    Raises:
        UserInputError: naming the prefix.
    """
    seps = {"/", "\\", os.sep, os.altsep or "/"}
    if any(c in prefix for c in seps) or ".." in prefix:
        raise UserInputError(f"--prefix {prefix!r} must be a plain file-name prefix (no path "
                             "separator or '..'): the figures go into --out")
    return prefix


def figures_command(
    ckpt: str | os.PathLike | None, out: str | os.PathLike, *, n: int | None = None, seed: int = 0,
    device: str | None = None, prefix: str = "", threads: int = 0,
) -> list[Path]:
    """``sde-gen figures --ckpt RUN --out DIR``: load the run's EMA model and write its figures.

    Everything is checked before anything is computed or created: ``n``, ``seed``, ``prefix``,
    ``out`` (a directory, or one that can be made, writable), ``ckpt`` (an existing, loadable
    checkpoint file or run directory) and ``device``; the run's thread policy is applied when
    it is loaded. ``out`` is made only when the figures are written, together: a failure or an
    interrupt leaves neither figures nor an empty ``out``.

    Args:
        ckpt: a checkpoint file or run directory (``None``: the latest run under ``runs/``).
        out: the directory the PNGs go to (created).
        n: examples per figure (see :func:`write_figures`).
        seed: the seed of every draw, in ``[0, 2**63 - 1]``.
        device: ``auto`` (default), ``cpu`` or ``cuda``.
        prefix: prepended to each file name (a plain name: :func:`check_prefix`).
        threads: CPU intra-op threads (0: the run's policy, :mod:`.threads`).

    Returns:
        the PNGs written.

    Raises:
        UserInputError: a bad ``n``, ``seed``, ``prefix``, ``out``, ``ckpt`` path or ``device``,
            in one line.
        CheckpointError: ``ckpt`` holds no loadable run (one line).
    """
    from .command_run import open_run
    from .distributed import resolve_device

    if n is not None and n < 1:
        raise UserInputError(f"--n must be a positive number of examples, got {n}")
    if not 0 <= seed <= SEED_MAX:
        raise UserInputError(f"--seed must be in [0, {SEED_MAX}], got {seed}")
    check_prefix(prefix)
    out = check_out_dir(out, create=False)
    if ckpt is not None and not Path(ckpt).exists():
        raise UserInputError(f"--ckpt {ckpt} does not exist; give a checkpoint file or run "
                             f"directory")
    dev = resolve_device(device or "auto")
    run = open_run(ckpt, dev, threads)
    return write_figures(run.model, run.sde, run.cfg, out, n=n, seed=seed, device=dev,
                         prefix=prefix, codec=run.codec)


@torch.no_grad()
def write_figures(
    model: EpsModel, sde: SDE, cfg: Config, out_dir: str | os.PathLike, *, n: int | None = None,
    seed: int = 0, device: torch.device | str = "cpu", prefix: str = "",
    ancestral_steps: int | None = None, interpolation_steps: int = 100, codec: Any = None,
) -> list[Path]:
    """Compute every figure of :data:`IMAGE_FIGURES` (image data) or :data:`TOY_FIGURES` (2-D data)
    and write them all to ``out_dir`` (temp files renamed together: a failure leaves none).

    The step counts the figures show are clamped to what the model's discrete chain holds (a
    10-step chain gets DDIM with at most 9 intervals, not 100).

    Args:
        model: eps-model ``model(x, t)`` (in eval mode; a ``torch.nn.Module`` is put there).
        sde: its forward SDE.
        cfg: the run's config (which data set; 2-D or images).
        out_dir: the directory (checked with :func:`check_out_dir`; made, with its missing
            parents, when the figures are written, and only then).
        n: examples: rows of an image figure (default 6), points of a 2-D scatter (default 1000).
        seed: every draw uses a generator seeded from it.
        device: where the model runs.
        prefix: prepended to each file name.
        ancestral_steps: intervals of the DDPM chains (default every chain step, as in [Ho20]).
        interpolation_steps: reverse intervals per unit time of the DDPM interpolation's chains
            (its start at ``t`` gets ``ceil(interpolation_steps * t / T)``), a respaced chain.
        codec: a latent run's :class:`~sde_gen.latent.LatentCodec`: the figures run in its
            latent space (held-out images encoded) and show every latent decoded.

    Returns:
        the paths written, in the order of the figure tuple.
    """
    check_prefix(prefix)
    if isinstance(model, torch.nn.Module):
        model.eval()
    out_dir = Path(out_dir)
    ctx = FigureContext(model, sde, cfg, torch.device(device), seed, ancestral_steps,
                        interpolation_steps, codec=codec)
    plt = pyplot()
    try:
        if is_image(cfg.data):
            from . import figures_images as figs

            rows = 6 if n is None else n
            made = figs.image_figures(ctx, rows)
        else:
            from . import figures_toy as figs

            made = figs.toy_figures(ctx, 1000 if n is None else n)
        items = [(out_dir / f"{prefix}{name}.png", functools.partial(save_figure, fig))
                 for name, fig in made.items()]
        return _atomic_all(items)
    finally:
        plt.close("all")
