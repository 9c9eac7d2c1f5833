"""Write sampler outputs: raw ``.npz`` and a picture, both atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserInputError
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

    2-D data: a scatter beside fresh data samples; images: a grid (the ``.npz`` then holds the
    8-bit pixels under ``images`` beside the raw model-range ``samples``).
    """
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserInputError(f"--out must be a .png path, got {out}")
    if x.ndim == 4:
        from torchvision.utils import save_image

        from ..scaling import from_model, model_to_uint8

        pixels = model_to_uint8(x).numpy()
        npz = _atomic(out.with_suffix(".npz"),
                      lambda p: np.savez(open(p, "wb"), samples=x.numpy(), images=pixels))
        nrow = max(1, int(x.shape[0] ** 0.5))
        png = _atomic(out, lambda p: save_image(from_model(x[:256]), p, nrow=min(nrow, 16),
                                                format="png"))
        return png, npz
    npz = _atomic(out.with_suffix(".npz"), lambda p: np.savez(open(p, "wb"), samples=x.numpy()))
    data = build_data(cfg.data).sample(x.shape[0], generator=torch.Generator().manual_seed(0))
    png = _atomic(out, lambda p: scatter_compare(x, data, p, title))
    return png, npz


def write_json(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a JSON report atomically."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise UserInputError(f"--out must be a .json path, got {path}")
    return _atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))
