"""Write sampler outputs (raw ``.npz`` and a picture, both atomically) and strict JSON reports.

Output paths are checked before any work (:func:`check_out_path`). JSON is strict: a NaN or
infinite number is written as ``null`` and its key is listed under ``"nonfinite"``
(:func:`strict_json`), since ``NaN`` is not JSON and strict readers reject it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserInputError
from .config import Config
from .factory import build_data
from .plots import image_grid, save_grid, scatter_compare

MAX_GRID = 256  # images drawn in a sample grid, at most (the .npz keeps them all)


def check_out_path(path: str | os.PathLike, suffix: str, *, flag: str = "--out") -> Path:
    """``path`` as an output file with ``suffix``, checked before any work: the suffix, not an
    existing directory, and a parent that is (or can be made) a writable directory, which is
    created here.

    Raises:
        UserInputError: naming the path and the problem.
    """
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise UserInputError(f"{flag} must be a {suffix} path, got {path}")
    if path.is_dir():
        raise UserInputError(f"{flag} {path} is a directory; give a {suffix} file path")
    parent = path.parent
    for p in (parent, *parent.parents):
        if p.exists():
            if not p.is_dir():
                raise UserInputError(f"{flag} {path}: {p} is a file, not a directory")
            break
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserInputError(f"{flag} {path}: the directory {parent} is not writable")
    return path


def _atomic(path: Path, write) -> Path:
    return _atomic_all([(path, write)])[0]


def _atomic_all(items: list[tuple[Path, Any]]) -> list[Path]:
    """Write every ``(path, write)`` to a temp file first, then rename them all: a failure in any
    write leaves none of the outputs (and no temp file) behind."""
    tmps = []
    try:
        for path, write in items:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".tmp_{path.name}")
            tmps.append(tmp)
            write(tmp)
        for (path, _), tmp in zip(items, tmps):
            os.replace(tmp, path)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return [path for path, _ in items]


def write_samples(
    x: torch.Tensor, cfg: Config, out: str | os.PathLike, *, title: str, nrow: int | None = None,
    labels: torch.Tensor | None = None,
) -> tuple[Path, Path]:
    """Save ``x`` as ``<out>.npz`` (key ``samples``; ``labels`` too, the class of each sample,
    when given) and a PNG at ``out``. 2-D samples with labels are coloured by class, beside
    data coloured by its own labels.

    2-D data: a scatter beside fresh data samples; images: a grid of the first 256, each
    upscaled by nearest-neighbour to at least 64 px with a 2 px separator (:func:`~.plots.image_grid`;
    ``nrow`` images a row, default a square-ish grid of at most 16 a row), and the ``.npz``
    then holds the 8-bit pixels under ``images`` beside the raw model-range ``samples``. Both
    files are written to temp files and renamed together: a failure leaves neither.
    """
    out = check_out_path(out, ".png")
    npz = check_out_path(out.with_suffix(".npz"), ".npz", flag="the samples file beside --out")
    if nrow is not None and nrow < 1:
        raise UserInputError(f"nrow must be a positive number of images a row, got {nrow}")
    if labels is not None and tuple(labels.shape) != (x.shape[0],):
        raise UserInputError(f"labels must be ({x.shape[0]},), got {tuple(labels.shape)}")
    extra = {} if labels is None else {"labels": labels.cpu().numpy()}
    if x.ndim == 4:
        from ..scaling import from_model, model_to_uint8

        pixels = model_to_uint8(x).numpy()
        shown = x[:MAX_GRID]
        if nrow is None:
            nrow = min(16, math.ceil(math.sqrt(shown.shape[0])))
        write_npz = lambda p: _savez(p, samples=x.numpy(), images=pixels, **extra)
        write_png = lambda p: save_grid(image_grid(from_model(shown), nrow=nrow), p)
    else:
        source, g = build_data(cfg.data), torch.Generator().manual_seed(0)
        data_labels = None
        if labels is not None and getattr(source, "num_classes", None):
            data, data_labels = source.sample(x.shape[0], generator=g, return_labels=True)
        else:
            data = source.sample(x.shape[0], generator=g)
        write_npz = lambda p: _savez(p, samples=x.numpy(), **extra)
        write_png = lambda p: scatter_compare(x, data, p, title, labels=labels,
                                              data_labels=data_labels)
    npz, png = _atomic_all([(npz, write_npz), (out, write_png)])
    return png, npz


def _savez(path: Path, **arrays: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def strict_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by ``None``; a dict at the top level gets
    ``"nonfinite"``: the replaced keys (dotted paths), so a reader sees the value was not finite
    rather than missing."""
    bad: list[str] = []

    def clean(v: Any, key: str) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            bad.append(key)
            return None
        if isinstance(v, dict):
            return {k: clean(w, f"{key}.{k}" if key else str(k)) for k, w in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(w, f"{key}[{i}]") for i, w in enumerate(v)]
        return v

    out = clean(obj, "")
    if bad and isinstance(out, dict):
        out["nonfinite"] = bad
    return out


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """:func:`json.dumps` of :func:`strict_json` (``allow_nan=False``: valid JSON always)."""
    return json.dumps(strict_json(obj), allow_nan=False, **kwargs)


def write_json(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a JSON report atomically, strict (:func:`dumps_strict`); ``path`` is checked with
    :func:`check_out_path` (callers check it before the work, too)."""
    path = check_out_path(path, ".json")
    return _atomic(path, lambda p: p.write_text(dumps_strict(obj, indent=2) + "\n"))
