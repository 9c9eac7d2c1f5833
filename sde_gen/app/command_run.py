"""What every command that runs a trained model does first: join torchrun's process group when
there is one, load the run, and apply its CPU thread policy before any compute."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import UserInputError
from . import distributed
from .runs import LoadedRun
from .threads import apply_thread_policy

#: The largest ``--seed`` of every command: torch generators take 64-bit seeds, and the commands
#: add small offsets to it (a batch index, a split).
SEED_MAX = 2**63 - 1


@contextlib.contextmanager
def process_group(device: str) -> Iterator[distributed.DistInfo]:
    """Join torchrun's process group when there is one (ranks share work, rank 0 writes) on the
    device named ``device`` (``auto``, ``cpu``, ...)."""
    di = distributed.setup(distributed.resolve_device(device))
    try:
        yield di
    finally:
        if di.enabled:
            distributed.cleanup()


def open_run(ckpt: str | os.PathLike | None, device: torch.device | str,
             threads: int = 0, *, autoencoder_ok: bool = False,
             pixels_only: str | None = None, text_ok: bool = False,
             dtype: torch.dtype | None = None) -> LoadedRun:
    """:func:`~.runs.load_run` of ``ckpt`` on ``device`` (``dtype``: a Stable Diffusion folder's
    weights), then its thread policy (:func:`~.threads.apply_thread_policy`, ``threads`` > 0
    overriding it).

    Raises:
        UserInputError: a first-stage autoencoder run, unless ``autoencoder_ok`` (``eval``):
            it has no score model to sample or score; a latent run for the command named by
            ``pixels_only``, whose methods take a linear measurement of the model's variable;
            a Stable Diffusion folder unless ``text_ok`` (the commands that take ``--prompt``:
            ``sample``, ``optimize-grid``, ``calibrate``, ``restore``, ``inpaint``).
    """
    from . import runs

    run = runs.load_run(ckpt, device=device, dtype=dtype)
    if run.is_autoencoder and not autoencoder_ok:
        raise UserInputError(f"{run.workdir} is a first-stage autoencoder run (model.name="
                             "autoencoder): it has no score model; train one on its latents with "
                             f"--set model.autoencoder={run.workdir} (eval reports its "
                             "reconstructions)")
    if run.text is not None and not text_ok:
        raise UserInputError(f"{run.workdir} is a Stable Diffusion folder: sample, "
                             "optimize-grid, calibrate, restore and inpaint (with --prompt TEXT) "
                             "take one; this command does not")
    if run.codec is not None and pixels_only:
        raise UserInputError(f"{pixels_only} on a latent run: its pixels are not linear in the "
                             "latent z (the decoder is not), and imputation needs them to be; use "
                             f"sde-gen restore --task {pixels_only} --method dps (DPS through the "
                             "decoder)")
    apply_thread_policy(run.cfg, device, threads)
    return run


def check_input_file(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as an input file: one that is a directory is refused as such (a missing one is
    left to the reader, whose message says what it wanted)."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{flag} {path} is a directory, not a file")
    return path
