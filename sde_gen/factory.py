"""Build SDEs, networks and datasets from a :class:`~sde_gen.config.Config` (literal name maps)."""

from __future__ import annotations

from typing import Callable

from torch import nn

from .config import Config, DataConfig, ModelConfig, SDEConfig
from .data.toy2d import Toy2D
from .parameterization import ScoreModel
from .sde import SDE, SubVPSDE, VESDE, VPSDE
from .nets.mlp import MLP

SDES: dict[str, Callable[[SDEConfig], SDE]] = {
    "vp": lambda c: VPSDE(c.beta_min, c.beta_max, c.N, schedule=c.schedule),
    "subvp": lambda c: SubVPSDE(c.beta_min, c.beta_max, c.N),
    "ve": lambda c: VESDE(c.sigma_min, c.sigma_max, c.N),
}

NETS: dict[str, Callable[[ModelConfig, tuple[int, ...]], nn.Module]] = {
    "mlp": lambda c, shape: MLP(shape[0], width=c.width, depth=c.depth, emb_dim=c.emb_dim),
}


def build_sde(cfg: SDEConfig) -> SDE:
    """The forward SDE named by ``cfg.name``."""
    if cfg.name not in SDES:
        raise ValueError(f"unknown SDE {cfg.name!r}; choose one of {', '.join(SDES)}")
    return SDES[cfg.name](cfg)


def build_data(cfg: DataConfig) -> Toy2D:
    """The dataset named by ``cfg.name``."""
    return Toy2D(cfg.name)


def data_shape(cfg: DataConfig) -> tuple[int, ...]:
    """Shape of one example."""
    return (2,)


def build_model(cfg: Config, sde: SDE | None = None) -> ScoreModel:
    """The eps-model ``ScoreModel(net, sde)`` for a config."""
    sde = sde if sde is not None else build_sde(cfg.sde)
    net = NETS[cfg.model.name](cfg.model, data_shape(cfg.data))
    return ScoreModel(net, sde, prediction=cfg.model.prediction, sigma_data=cfg.model.sigma_data)
