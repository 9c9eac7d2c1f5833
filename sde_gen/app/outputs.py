"""Write sampler outputs (raw ``.npz`` and a picture, both atomically) and strict JSON reports.

Output paths are checked before any work (:func:`check_out_path`). JSON is strict: a NaN or
infinite number is written as ``null`` and its key is listed under ``"nonfinite"``
(:func:`strict_json`), since ``NaN`` is not JSON and strict readers reject it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserInputError
from .config import Config
from .factory import build_data
from .plots import image_grid, save_grid, scatter_compare

MAX_GRID = 256  # images drawn in a sample grid, at most (the .npz keeps them all)


def first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(".")


def check_out_path(path: str | os.PathLike, suffix: str, *, flag: str = "--out") -> Path:
    """``path`` as an output file with ``suffix``, checked before any work: the suffix, not an
    existing directory, and a parent that is (or can be made) a writable directory. Nothing is
    created here: the writers make missing directories when they write (and remove them again
    when the write fails), so a failed command leaves no empty directory behind.

    Raises:
        UserInputError: naming the path and the problem.
    """
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise UserInputError(f"{flag} must be a {suffix} path, got {path}")
    if path.is_dir():
        raise UserInputError(f"{flag} {path} is a directory; give a {suffix} file path")
    parent = first_existing(path.parent)
    if not parent.is_dir():
        raise UserInputError(f"{flag} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserInputError(f"{flag} {path}: the directory {parent} is not writable")
    return path


def note(text: str) -> None:
    """A note on stderr: something the user should know about a result (``note: ...``)."""
    print(f"note: {text}", file=sys.stderr)


def make_dirs(path: Path) -> list[Path]:
    """``mkdir -p path``; returns the directories it created, outermost first."""
    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]
    path.mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty(dirs: list[Path]) -> None:
    """Remove those of ``dirs`` (outermost first, as :func:`make_dirs` gives them) that are
    empty, innermost first."""
    for d in reversed(dirs):
        try:
            d.rmdir()
        except OSError:
            pass


def write_error(e: OSError, path: Path) -> OSError:
    """``e`` (a failed write, e.g. a full disk) as an ``OSError`` of the same errno whose message
    names ``path``, the file that was being written (not its temp file)."""
    if e.errno is None:
        return OSError(f"cannot write {path}: {e}")
    return OSError(e.errno, f"cannot write {path}: {e.strerror or e}")


@contextlib.contextmanager
def deferred_signals():
    """SIGINT and SIGTERM that arrive inside the block take effect when it ends (the renames
    that publish a set of outputs are not cut in half). Only in the main thread; elsewhere a
    no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum))
           for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in got:
            signal.raise_signal(s)


def _atomic(path: Path, write) -> Path:
    return _atomic_all([(path, write)])[0]


def _atomic_all(items: list[tuple[Path, Any]]) -> list[Path]:
    """Write every ``(path, write)`` to a temp file first, then rename them all: a failure (or an
    interrupt) in any write leaves none of the outputs, no temp file and no directory made for
    them behind. A write error names the file (:func:`write_error`)."""
    tmps, made = [], []
    try:
        for path, write in items:
            made += make_dirs(path.parent)
            tmp = path.with_name(f".tmp_{path.name}")
            tmps.append(tmp)
            try:
                write(tmp)
            except OSError as e:
                raise write_error(e, path) from e
        with deferred_signals():
            for (path, _), tmp in zip(items, tmps):
                try:
                    os.replace(tmp, path)
                except OSError as e:
                    raise write_error(e, path) from e
        made = []
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        remove_empty(made)
    return [path for path, _ in items]


@contextlib.contextmanager
def writing(path: str | os.PathLike):
    """Around a writer that is not :func:`_atomic_all`'s: a write error names ``path``, and the
    directories made for it are removed again when the block fails."""
    path = Path(path)
    made = make_dirs(path.parent)
    try:
        yield path
    except OSError as e:
        remove_empty(made)
        raise write_error(e, path) from e
    except BaseException:
        remove_empty(made)
        raise


def write_samples(
    x: torch.Tensor, cfg: Config, out: str | os.PathLike, *, title: str, nrow: int | None = None,
    labels: torch.Tensor | None = None,
) -> tuple[Path, Path]:
    """Save ``x`` as ``<out>.npz`` (key ``samples``; ``labels`` too, the class of each sample,
    when given) and a PNG at ``out``. 2-D samples with labels are coloured by class, beside
    data coloured by its own labels.

    2-D data: a scatter beside fresh data samples; images: a grid of the first 256, each
    upscaled by nearest-neighbour to at least 64 px with a 2 px separator
    (:func:`~.plots.image_grid`; ``nrow`` images a row, default a square-ish grid of at most 16
    a row), and the ``.npz`` then holds the 8-bit pixels under ``images`` beside the raw
    model-range ``samples``. Both files are written to temp files and renamed together: a
    failure leaves neither.
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
        def write_npz(p: Path) -> None:
            _savez(p, samples=x.numpy(), images=pixels, **extra)

        def write_png(p: Path) -> None:
            save_grid(image_grid(from_model(shown), nrow=nrow), p)
    else:
        source, g = build_data(cfg.data), torch.Generator().manual_seed(0)
        data_labels = None
        if labels is not None and getattr(source, "num_classes", None):
            data, data_labels = source.sample(x.shape[0], generator=g, return_labels=True)
        else:
            data = source.sample(x.shape[0], generator=g)
        def write_npz(p: Path) -> None:
            _savez(p, samples=x.numpy(), **extra)

        def write_png(p: Path) -> None:
            scatter_compare(x, data, p, title, labels=labels, data_labels=data_labels)
    npz, png = _atomic_all([(npz, write_npz), (out, write_png)])
    return png, npz


def _savez(path: Path, **arrays: np.ndarray) -> None:
    # The archive is built in memory first: numpy leaves its zip file open when a write fails,
    # and closing it later (at garbage collection) printed a second, "ignored" traceback.
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def nonfinite_keys(report: dict[str, Any], keys: tuple[str, ...]) -> str:
    """``"k1=nan, k2=inf"``: those of ``keys`` whose value in ``report`` is a NaN or infinite
    number (a result that must not be reported as one); empty when there is none."""
    return ", ".join(f"{k}={report[k]}" for k in keys
                     if isinstance(report.get(k), float) and not math.isfinite(report[k]))


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
