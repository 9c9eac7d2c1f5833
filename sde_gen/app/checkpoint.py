"""Atomic checkpoint files in a run directory, safe loading, and resume discovery.

A checkpoint is written to a temporary file, fsync'ed and renamed, so a crash leaves either the
old or the new file, never a torn one. Loading uses ``torch.load(weights_only=True)``, which
refuses pickled code.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt_(\d{9})\.pt$")


class CheckpointError(RuntimeError):
    """A missing or unreadable checkpoint."""


def checkpoint_path(workdir: str | os.PathLike, step: int) -> Path:
    return Path(workdir) / CKPT_DIR / f"ckpt_{step:09d}.pt"


def list_checkpoints(workdir: str | os.PathLike) -> list[Path]:
    """Checkpoints in ``workdir``, oldest first."""
    d = Path(workdir) / CKPT_DIR
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same dir, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def prune_checkpoints(workdir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for p in list_checkpoints(workdir)[:-keep]:
        p.unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; raise :class:`CheckpointError` with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for torn or hostile files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason[:200]}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not an sde-gen checkpoint")
    return state


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the newest one in a run directory."""
    p = Path(path)
    if p.is_file():
        return p
    ckpts = list_checkpoints(p)
    if not ckpts:
        raise CheckpointError(f"no checkpoint in {p}")
    return ckpts[-1]


DEFAULT_RUNS = Path("runs")


def latest_run(root: str | os.PathLike = DEFAULT_RUNS) -> Path:
    """The run directory under ``root`` whose newest checkpoint is the most recent."""
    root = Path(root)
    runs = [d for d in root.iterdir() if d.is_dir() and list_checkpoints(d)] if root.is_dir() else []
    if not runs:
        raise CheckpointError(f"no trained run under {root}/; train one with 'sde-gen train' or pass --ckpt")
    return max(runs, key=lambda d: list_checkpoints(d)[-1].stat().st_mtime)
