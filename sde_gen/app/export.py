"""Share trained models as safetensors: EMA weights plus the resolved config as metadata.

safetensors holds tensors only and cannot run code when loaded, unlike a pickle.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..errors import CheckpointError, UserInputError
from .atomic import write_atomic
from .checkpoint import (
    check_run_state,
    find_checkpoint,
    latest_run,
    load_checkpoint,
    write_failure,
)


def export_safetensors(ckpt: str | os.PathLike | None, out: str | os.PathLike) -> Path:
    """Write ``ckpt``'s EMA weights and config to ``out`` (``.safetensors``) atomically.

    ``ckpt`` is a training checkpoint, a run directory (its newest checkpoint), ``None`` (the
    latest run) or an earlier export, whose weights and metadata are copied.

    Raises:
        UserInputError: ``out`` does not end in ``.safetensors`` or is the input file itself.
        CheckpointError: an unreadable or incomplete checkpoint, or a ``.safetensors`` file that
            is not an sde-gen export.
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserInputError(f"--out must end in .safetensors, got {out}")
    if ckpt is not None and Path(ckpt).is_dir():
        from ..interop.diffusers import is_diffusers_folder

        if is_diffusers_folder(ckpt):
            raise UserInputError(
                f"{ckpt} is a diffusers pipeline folder, not an sde-gen run: export writes an "
                "sde-gen run's EMA weights as .safetensors; a diffusers folder is used as it is "
                "(--ckpt FOLDER in sample, likelihood and eval)")
    path = find_checkpoint(latest_run() if ckpt is None else ckpt)
    if _same_file(path, out):
        raise UserInputError(f"--out {out} is the input file {path}; choose another output path")
    state = load_safetensors(path) if path.suffix == ".safetensors" else load_checkpoint(path)
    check_run_state(state, path)
    tensors = {k: v.contiguous() for k, v in state["ema"].items()}
    meta = {"config": json.dumps(state["config"]), "step": str(state["step"]), "format": "sde-gen"}
    if "latent" in state:  # a latent run's scaling and autoencoder hash
        meta["latent"] = json.dumps(state["latent"])
    if "consistency" in state:  # a distilled run stays one (sde_gen.consistency)
        meta["consistency"] = json.dumps(state["consistency"])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    except (OSError, SafetensorError) as e:  # SafetensorError: e.g. a full disk mid-write
        raise CheckpointError(f"cannot write {out}: {_export_failure(e)}; nothing was "
                              "written") from None
    return out


def _export_failure(e: BaseException) -> str:
    """One line for a failed write; safetensors wraps the OS error in its own message."""
    if isinstance(e, OSError):
        return write_failure(e)
    text = " ".join(str(e).split())
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        if f"os error {code}" in text:
            return f"{os.strerror(code)} (errno {code})"
    return text[:200] or type(e).__name__


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # ``b`` does not exist yet
        return a.resolve() == b.resolve()


def load_safetensors(path: str | os.PathLike) -> dict:
    """A checkpoint-like dict (``model``/``ema`` weights, ``config``, ``step``) from an export."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        weights = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"cannot read {path}: {str(e).splitlines()[0][:200]}") from None
    if meta.get("format") != "sde-gen" or "config" not in meta:
        raise CheckpointError(f"{path} is not an sde-gen export (no sde-gen metadata)")
    try:
        config, step = json.loads(meta["config"]), int(meta.get("step", 0))
    except ValueError as e:  # also json.JSONDecodeError
        raise CheckpointError(f"{path} has malformed metadata: {str(e)[:200]}") from None
    state = {"model": weights, "ema": weights, "config": config, "step": step}
    if "latent" in meta:
        try:
            state["latent"] = json.loads(meta["latent"])
        except ValueError as e:
            raise CheckpointError(f"{path} has malformed metadata: {str(e)[:200]}") from None
    if "consistency" in meta:
        state["consistency"] = json.loads(meta["consistency"])
    return state
