"""Atomic checkpoint files in a run directory, safe loading, and resume discovery.

A checkpoint is written to a temporary file, fsync'ed and renamed (:mod:`.atomic`), so a crash
or a full disk leaves either the old or the new file, never a torn one. Loading uses
``torch.load(weights_only=True)``, which refuses pickled code; :func:`check_run_state` then checks
that a training checkpoint holds every entry that sampling or resuming reads.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError, ConfigError
from .atomic import write_atomic
from .config import RESUMABLE_KEYS, Config, to_dict

CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt_(\d{9})\.pt$")


def checkpoint_path(workdir: str | os.PathLike, step: int) -> Path:
    return Path(workdir) / CKPT_DIR / f"ckpt_{step:09d}.pt"


def list_checkpoints(workdir: str | os.PathLike) -> list[Path]:
    """Checkpoints in ``workdir``, oldest first."""
    d = Path(workdir) / CKPT_DIR
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same dir, fsync, rename).

    Raises:
        CheckpointError: the file could not be written (full disk, read-only folder); the temp
            file is removed and a previous file at ``path`` is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: _save(state, tmp))
    except (OSError, RuntimeError) as e:  # torch's writer reports a short write as RuntimeError
        raise CheckpointError(f"cannot write checkpoint {path}: {write_failure(e)}; earlier "
                              "checkpoints are unchanged") from None
    return path


def _save(state: dict[str, Any], tmp: Path) -> None:
    with open(tmp, "wb") as f:
        torch.save(state, f)


def write_failure(e: BaseException) -> str:
    """A one-line reason for a failed write (``OSError``, or a writer's ``RuntimeError``)."""
    if isinstance(e, OSError) and e.errno is not None:  # e.g. ENOSPC: No space left on device
        return f"{e.strerror or os.strerror(e.errno)} (errno {e.errno})"
    # torch's writer: "[enforce fail at inline_container.cc:...] . unexpected pos ..."
    text = str(e).strip()
    return (text.splitlines()[0][:200] if text else type(e).__name__) + " (disk full?)"


def remove_stale_temps(workdir: str | os.PathLike) -> list[Path]:
    """Delete the temp files (``.tmp_*``) that a killed write left in ``workdir`` and its
    checkpoint and sample folders; return them. Call it only while holding the run lock, when no
    write of this run can be in progress."""
    workdir = Path(workdir)
    stale = [p for d in (workdir, workdir / CKPT_DIR, workdir / "samples") if d.is_dir()
             for p in d.iterdir() if p.name.startswith(".tmp_") and p.is_file()]
    stale += [p for p in (workdir / "config.yaml.tmp",) if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


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
        with path.open("rb") as f:
            magic = f.read(4)
        with warnings.catch_warnings():  # e.g. torch's note on a pickle protocol
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for torn or hostile files
        raise CheckpointError(f"cannot read checkpoint {path}: {_read_failure(e, magic)}"
                              ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not an sde-gen checkpoint")
    return state


#: The first bytes of what ``torch.save`` writes: a zip archive, or (before torch 1.6) a pickle.
TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def _read_failure(e: BaseException, magic: bytes) -> str:
    """Why ``torch.load`` failed, in words a user can act on, for a file starting ``magic``."""
    if not magic:
        return "the file is empty"
    if not magic.startswith(TORCH_MAGIC):
        return ("it is not a checkpoint (not a file written by torch.save); --ckpt takes a "
                "checkpoint (.pt), an export (.safetensors), a run directory or a diffusers "
                "pipeline folder")
    if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
        return ("it holds pickled Python objects other than tensors, which are not loaded "
                "(loading them could run code)")
    text = str(e).strip()
    return (text.splitlines()[0][:200] if text else type(e).__name__) + " (a torn write?)"


#: What :func:`check_run_state` requires: entries of every training checkpoint (and export),
#: and those that only resuming reads.
RUN_ENTRIES = ("step", "config", "model", "ema")
RESUME_ENTRIES = ("optimizer", "data", "noise_rng")


def check_run_state(state: Mapping[str, Any], path: str | os.PathLike, *,
                    resume: bool = False) -> None:
    """Check that ``state`` holds what loading a run (``resume``: resuming training) reads.

    Raises:
        CheckpointError: one line naming ``path`` and the missing or malformed entry.
    """
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a complete sde-gen checkpoint: {what}")

    for key in RUN_ENTRIES + (RESUME_ENTRIES if resume else ()):
        if key not in state:
            raise bad(f"it has no {key!r} entry")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise bad(f"'step' must be a non-negative integer, got {step!r}"[:200])
    for key in ("config", "model", "ema") + (("optimizer", "data") if resume else ()):
        if not isinstance(state[key], Mapping):
            raise bad(f"{key!r} must be a dict, got {type(state[key]).__name__}")
    for key in ("model", "ema"):
        if not all(torch.is_tensor(v) for v in state[key].values()):
            raise bad(f"{key!r} must map parameter names to tensors")
    if resume and not (torch.is_tensor(state["noise_rng"])
                       and state["noise_rng"].dtype == torch.uint8):
        raise bad("'noise_rng' must be a generator state (a uint8 tensor)")


def check_resume_config(cfg: Config, saved: Mapping[str, Any], workdir: str | os.PathLike) -> None:
    """Check that ``cfg`` may resume the run whose checkpoint saved the config ``saved``: every
    key is equal except those in :data:`~.config.RESUMABLE_KEYS`. A key missing from ``saved``
    (a checkpoint older than the key) counts as its default, as loading the config would.

    Raises:
        ConfigError: one line naming the first differing keys, both values and the allow-list.
    """
    new, default = to_dict(cfg), to_dict(Config())
    diffs = []
    for section, values in new.items():
        old = saved.get(section)
        old = old if isinstance(old, Mapping) else {}
        for key, value in values.items():
            name = f"{section}.{key}"
            was = old.get(key, default[section][key])
            if name not in RESUMABLE_KEYS and was != value:
                diffs.append((name, value, was))
    if not diffs:
        return
    name, value, was = diffs[0]
    more = f" (also {', '.join(d[0] for d in diffs[1:4])}{', ...' if len(diffs) > 4 else ''})"
    raise ConfigError(
        f"cannot resume {workdir}: {name} is {value!r} but the run was trained with {was!r}"
        f"{more if len(diffs) > 1 else ''}; keys that may change on resume: "
        f"{', '.join(RESUMABLE_KEYS)}; use a new --workdir")


def latest_readable_checkpoint(
    workdir: str | os.PathLike, *, set_aside: bool = True
) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint in ``workdir`` and its path, loaded onto the CPU, or
    ``None`` for a run with no checkpoint yet.

    With ``set_aside`` (the process that writes the run), unreadable checkpoints newer than it
    (torn writes) are reported on stderr and renamed ``*.corrupt`` (never picked or pruned
    again). Nothing is renamed or
    reported when no checkpoint is readable: that is an error, not a fresh start.

    Loaded onto the CPU because ``torch.Generator.set_state`` takes a CPU ByteTensor, also for a
    CUDA generator; ``load_state_dict`` moves weights and optimizer state to their device.

    Raises:
        CheckpointError: the run has checkpoints (or ones set aside as ``*.corrupt`` earlier) but
            none is readable; one line naming them. Nothing in ``workdir`` is changed.
    """
    unreadable: list[tuple[Path, CheckpointError]] = []
    for path in reversed(list_checkpoints(workdir)):
        try:
            state = load_checkpoint(path, map_location="cpu")
        except CheckpointError as e:
            unreadable.append((path, e))
            continue
        for bad, e in unreadable if set_aside else ():
            print(f"warning: {e}; falling back to the previous checkpoint", file=sys.stderr)
            bad.replace(bad.with_name(bad.name + ".corrupt"))
        return path, state
    corrupt = sorted((Path(workdir) / CKPT_DIR).glob("ckpt_*.pt.corrupt"))
    if unreadable:
        newest = unreadable[0][1]
        raise CheckpointError(
            f"cannot resume {workdir}: no checkpoint of the run is readable "
            f"({_names([p for p, _ in unreadable] + corrupt)}; newest: {newest}); nothing was "
            "changed: restore a checkpoint, or use a new --workdir to start again")
    if corrupt:
        raise CheckpointError(
            f"cannot resume {workdir}: its only checkpoints were set aside as unreadable "
            f"({_names(corrupt)}); nothing was changed: restore a checkpoint, or use a new "
            "--workdir to start again")
    return None


def _names(paths: list[Path], limit: int = 4) -> str:
    more = f", ... ({len(paths)} in all)" if len(paths) > limit else ""
    return ", ".join(p.name for p in paths[:limit]) + more


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the newest one in a run directory."""
    p = Path(path)
    if p.is_file():
        return p
    ckpts = list_checkpoints(p)
    if not ckpts:
        raise CheckpointError(f"no checkpoint in {p}: {_what_else(p)}")
    return ckpts[-1]


def _what_else(p: Path) -> str:
    """What the folder ``p`` (with no checkpoint) is, and what ``--ckpt`` takes instead."""
    if not p.exists():
        return "it does not exist"
    if (p / "unet" / "config.json").is_file() or (p / "config.json").is_file():
        return ("it looks like a diffusers model folder, but sde-gen loads a diffusers pipeline "
                "folder with model_index.json, unet/ and scheduler/ (as save_pretrained writes "
                "it) or a UNet2DModel folder with config.json and scheduler_config.json")
    return ("--ckpt takes a checkpoint (.pt), an export (.safetensors), a run directory (with "
            "checkpoints/) or a diffusers pipeline folder")


DEFAULT_RUNS = Path("runs")


def latest_run(root: str | os.PathLike = DEFAULT_RUNS) -> Path:
    """The run directory under ``root`` whose newest checkpoint is the most recent."""
    root = Path(root)
    runs = []
    if root.is_dir():
        runs = [d for d in root.iterdir() if d.is_dir() and list_checkpoints(d)]
    if not runs:
        raise CheckpointError(
            f"no trained run under {root}/; train one with 'sde-gen train' or pass --ckpt"
        )
    return max(runs, key=lambda d: list_checkpoints(d)[-1].stat().st_mtime)
