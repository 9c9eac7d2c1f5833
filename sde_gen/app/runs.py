"""Load trained runs: config, SDE and EMA model from a checkpoint or a run directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .checkpoint import check_run_state, find_checkpoint, latest_run, load_checkpoint
from .config import Config, from_dict
from .export import load_safetensors
from .factory import build_model, build_sde
from ..parameterization import ScoreModel
from ..sde import SDE


@dataclass(frozen=True)
class LoadedRun:
    """A trained model ready for sampling or evaluation."""

    cfg: Config
    sde: SDE
    model: ScoreModel
    checkpoint: Path
    step: int

    @property
    def workdir(self) -> Path:
        """The run directory (for an exported file: the folder it is in)."""
        if self.checkpoint.suffix == ".safetensors":
            return self.checkpoint.parent
        return self.checkpoint.parent.parent


def weights_mismatch(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``weights`` cannot be loaded strictly into ``model``, in one line, or ``None``.

    Compares the two state dicts directly: missing keys, unexpected keys and shape mismatches
    (the first few of each, with counts), e.g. ``"missing keys net.a, net.b; size mismatch for
    net.w: checkpoint (64, 2) vs model (128, 2)"``.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    sizes = [(k, tuple(weights[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in weights and tuple(weights[k].shape) != tuple(v.shape)]

    def names(keys: list[str], limit: int = 3) -> str:
        more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    problems = []
    if missing:
        problems.append(f"missing keys {names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {names(unexpected)}")
    if sizes:
        k, have, want = sizes[0]
        more = f" (and {len(sizes) - 1} more)" if len(sizes) > 1 else ""
        problems.append(f"size mismatch for {k}: checkpoint {have} vs model {want}{more}")
    return "; ".join(problems) or None


def load_weights(
    model: nn.Module, weights: Mapping[str, torch.Tensor], path: str | os.PathLike
) -> None:
    """``model.load_state_dict(weights)``, with a one-line :class:`CheckpointError` naming
    ``path`` and the first problems when the weights do not fit."""
    problem = weights_mismatch(model, weights)
    if problem is not None:
        raise CheckpointError(f"{path} does not match its config's model: {problem}")
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:  # not a key or shape problem (those are found above)
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        reason = (lines[-1] if lines else type(e).__name__)[:200]
        raise CheckpointError(f"{path} does not match its config's model: {reason}") from None


def load_run(
    path: str | os.PathLike | None = None,
    *,
    device: torch.device | str = "cpu",
    ema: bool = True,
) -> LoadedRun:
    """Load a run (a checkpoint file or a run directory; default the latest under ``runs/``).

    The model gets the EMA weights unless ``ema=False``; it is put in eval mode.

    Raises:
        CheckpointError: no run, an unreadable or incomplete checkpoint, or weights that do not
            fit the checkpoint's own config.
    """
    ckpt = find_checkpoint(latest_run() if path is None else path)
    if ckpt.suffix == ".safetensors":
        state = load_safetensors(ckpt)
    else:
        state = load_checkpoint(ckpt, map_location=device)
    check_run_state(state, ckpt)
    try:
        cfg = from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{ckpt} holds an invalid config: {e}") from None
    sde = build_sde(cfg.sde)
    model = build_model(cfg, sde)
    weights = state["ema"] if ema else state["model"]
    load_weights(model, weights, ckpt)
    model.to(device).eval().requires_grad_(False)
    return LoadedRun(cfg=cfg, sde=sde, model=model, checkpoint=ckpt, step=int(state["step"]))
