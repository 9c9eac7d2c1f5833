"""Build SDEs, networks and datasets from a :class:`~sde_gen.app.config.Config` (literal name maps)."""

from __future__ import annotations

import functools
from typing import Callable

from torch import nn

from .config import Config, DataConfig, ModelConfig, SDEConfig
from ..data.images import ImageData, load_images
from ..data.toy2d import TOY2D, Toy2D
from ..nets.mlp import MLP
from ..nets.unet import UNet
from ..parameterization import ScoreModel
from ..sde import SDE, SubVPSDE, VESDE, VPSDE

SDES: dict[str, Callable[[SDEConfig], SDE]] = {
    "vp": lambda c: VPSDE(c.beta_min, c.beta_max, c.N, schedule=c.schedule),
    "subvp": lambda c: SubVPSDE(c.beta_min, c.beta_max, c.N),
    "ve": lambda c: VESDE(c.sigma_min, c.sigma_max, c.N),
}

# Scale of c_noise before the networks' sinusoidal features: t in [0, 1] onto DDPM's 1000
# indices; the log-SNR (about -10..10) as it is.
TIME_SCALES = {"t": 1000.0, "logsnr": 1.0}


def _out_channels(c: ModelConfig, shape: tuple[int, ...]) -> int:
    """The data's channels, twice for a learned variance (eps and v, [Nichol21] Sec. 3.1)."""
    return shape[0] * (2 if c.learn_variance else 1)


NETS: dict[str, Callable[[ModelConfig, tuple[int, ...]], nn.Module]] = {
    "mlp": lambda c, shape: MLP(
        shape[0], width=c.width, depth=c.depth, emb_dim=c.emb_dim,
        time_scale=TIME_SCALES[c.noise_cond], film=c.film, fourier_features=c.fourier_features,
        fourier_scale=c.fourier_scale, out_dim=_out_channels(c, shape)),
    "unet": lambda c, shape: UNet(
        shape[0], _out_channels(c, shape), ch=c.ch, ch_mult=c.ch_mult,
        num_res_blocks=c.num_res_blocks, attn_resolutions=c.attn_resolutions,
        resolution=shape[1], dropout=c.dropout, num_heads=c.num_heads,
        time_scale=TIME_SCALES[c.noise_cond]),
}


def build_sde(cfg: SDEConfig) -> SDE:
    """The forward SDE named by ``cfg.name``."""
    if cfg.name not in SDES:
        raise ValueError(f"unknown SDE {cfg.name!r}; choose one of {', '.join(SDES)}")
    return SDES[cfg.name](cfg)


def is_image(cfg: DataConfig) -> bool:
    return cfg.name not in TOY2D


@functools.lru_cache(maxsize=4)
def _images(name: str, split: str, root: str, path: str, download: bool, channels: int) -> ImageData:
    return load_images(name, split=split, root=root or None, path=path or None, download=download,
                       channels=channels if name == "folder" else None)


def build_data(cfg: DataConfig, split: str = "train") -> Toy2D | ImageData:
    """The dataset named by ``cfg.name``: a 2-D distribution, or one split of an image set."""
    if not is_image(cfg):
        return Toy2D(cfg.name)
    return _images(cfg.name, split, cfg.root, cfg.path, cfg.download, cfg.channels)


def data_shape(cfg: DataConfig) -> tuple[int, ...]:
    """Shape of one example."""
    return (2,) if not is_image(cfg) else build_data(cfg).shape


def build_model(cfg: Config, sde: SDE | None = None) -> ScoreModel:
    """The eps-model ``ScoreModel(net, sde)`` for a config."""
    sde = sde if sde is not None else build_sde(cfg.sde)
    shape = data_shape(cfg.data)
    if (len(shape) == 3) != (cfg.model.name == "unet"):
        raise ValueError(f"model.name={cfg.model.name} does not fit data.name={cfg.data.name} "
                         f"(use unet for images, mlp for 2-D data)")
    net = NETS[cfg.model.name](cfg.model, shape)
    return ScoreModel(net, sde, prediction=cfg.model.prediction, sigma_data=cfg.model.sigma_data,
                      noise_cond=cfg.model.noise_cond, learn_variance=cfg.model.learn_variance)
