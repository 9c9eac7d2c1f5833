"""Load trained runs: config, SDE and EMA model from a checkpoint or a run directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

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
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{ckpt} does not match its config's model: {first}") from None
    model.to(device).eval().requires_grad_(False)
    return LoadedRun(cfg=cfg, sde=sde, model=model, checkpoint=ckpt, step=int(state["step"]))
