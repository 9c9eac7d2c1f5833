"""Write sampler outputs: raw ``.npz`` and a picture, both atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .factory import build_data
from .plots import scatter_compare


def _atomic(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp_{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_samples(x: torch.Tensor, cfg: Config, out: str | os.PathLike, *, title: str) -> tuple[Path, Path]:
    """Save ``x`` as ``<out>.npz`` (key ``samples``) and a PNG at ``out``.

    2-D data: a scatter beside fresh data samples.
    """
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png path, got {out}")
    npz = _atomic(out.with_suffix(".npz"), lambda p: np.savez(open(p, "wb"), samples=x.numpy()))
    data = build_data(cfg.data).sample(x.shape[0], generator=torch.Generator().manual_seed(0))
    png = _atomic(out, lambda p: scatter_compare(x, data, p, title))
    return png, npz
