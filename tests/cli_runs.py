"""Tiny trained runs for the command-line tests: a 2-D MLP run and an 8x8 RGB U-Net run (both on
a 20-step chain, so that chains and figures are quick), and the pictures inpaint and colorize
read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from helpers import TINY_MLP, TINY_UNET
from sde_gen.app.config import load_config
from sde_gen.app.train import train

SIZE = 8
BASE = ["train.plot_samples=0", "train.warmup=1", "train.steps=2", "sde.N=25"]


def toy_run(workdir: Path, *sets: str) -> Path:
    """A 2-step 2-D run in ``workdir``."""
    train(load_config(None, [*TINY_MLP, *BASE, *sets]), workdir, progress=False)
    return workdir


def image_run(workdir: Path, *sets: str) -> Path:
    """A 2-step U-Net run on 16 unlabelled random 8x8 RGB images (an .npz beside ``workdir``)."""
    data = workdir.parent / f"{workdir.name}_data.npz"
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8)
    np.savez(data, x_train=images, x_test=images[:5])
    train(load_config(None, [*TINY_UNET, "train.batch_size=8", *BASE, "data.name=npz",
                             f"data.path={data}", *sets]),
          workdir, progress=False)
    return workdir


def nan_weights(monkeypatch) -> None:
    """Make every run loaded from now on (in this test) a model whose weights are all NaN."""
    import torch

    import sde_gen.app.runs as runs

    load_run = runs.load_run

    def load(*args, **kwargs):
        run = load_run(*args, **kwargs)
        with torch.no_grad():
            for p in run.model.parameters():
                p.fill_(float("nan"))
        return run

    monkeypatch.setattr(runs, "load_run", load)


def png(path: Path, array) -> Path:
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def pictures(folder: Path) -> dict[str, Path]:
    """An RGB picture, a half-known mask (white = known) and a grey picture, all 8x8."""
    g = np.random.default_rng(1)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, : SIZE // 2] = 255
    return {"image": png(folder / "in.png", g.integers(0, 256, (SIZE, SIZE, 3))),
            "mask": png(folder / "mask.png", mask),
            "grey": png(folder / "grey.png", g.integers(0, 256, (SIZE, SIZE)))}
