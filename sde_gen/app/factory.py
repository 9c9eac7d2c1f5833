"""Build SDEs, networks and datasets from a :class:`~sde_gen.app.config.Config`.

Each kind of object comes from its registry: :data:`sde_gen.sde.SDES`,
:data:`sde_gen.nets.NETWORKS` and :data:`sde_gen.data.registry.DATASETS` (whose names the config
also validates against). The literal maps below say which config keys become which constructor
arguments. The image loaders are imported only when image data is built.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from ..data.registry import is_image_dataset
from ..data.toy2d import Toy2D
from ..errors import UserInputError
from ..nets import NETWORKS
from ..parameterization import ScoreModel
from ..sde import SDE, SDES

if TYPE_CHECKING:
    from ..data.images import ImageData
    from .config import Config, DataConfig, ModelConfig, SDEConfig

#: Constructor keyword arguments of each SDE in :data:`~sde_gen.sde.SDES`, from ``sde.*``.
SDE_ARGS: dict[str, Callable[[SDEConfig], dict[str, Any]]] = {
    "vp": lambda c: dict(beta_min=c.beta_min, beta_max=c.beta_max, N=c.N, schedule=c.schedule),
    "subvp": lambda c: dict(beta_min=c.beta_min, beta_max=c.beta_max, N=c.N),
    "ve": lambda c: dict(sigma_min=c.sigma_min, sigma_max=c.sigma_max, N=c.N),
    "flow": lambda c: dict(N=c.N, shift=c.shift),
    "trig": lambda c: dict(N=c.N, shift=c.shift),
}

# Scale of c_noise before the networks' sinusoidal features: t in [0, 1] onto DDPM's 1000
# indices; the log-SNR (about -10..10) as it is.
TIME_SCALES = {"t": 1000.0, "logsnr": 1.0}


def _out_channels(c: ModelConfig, shape: tuple[int, ...]) -> int:
    """The data's channels, twice for a learned variance (eps and v, [Nichol21] Sec. 3.1)."""
    return shape[0] * (2 if c.learn_variance else 1)


#: Constructor keyword arguments of each network in :data:`~sde_gen.nets.NETWORKS`, from
#: ``model.*`` and the shape of one example.
NET_ARGS: dict[str, Callable[[ModelConfig, tuple[int, ...]], dict[str, Any]]] = {
    "mlp": lambda c, shape: dict(
        dim=shape[0], width=c.width, depth=c.depth, emb_dim=c.emb_dim,
        time_scale=TIME_SCALES[c.noise_cond], film=c.film, fourier_features=c.fourier_features,
        fourier_scale=c.fourier_scale, out_dim=_out_channels(c, shape)),
    "unet": lambda c, shape: dict(
        in_channels=shape[0], out_channels=_out_channels(c, shape), ch=c.ch, ch_mult=c.ch_mult,
        num_res_blocks=c.num_res_blocks, attn_resolutions=c.attn_resolutions,
        resolution=shape[1], dropout=c.dropout, num_heads=c.num_heads,
        time_scale=TIME_SCALES[c.noise_cond]),
}


def build_sde(cfg: SDEConfig) -> SDE:
    """The forward SDE named by ``cfg.name``."""
    if cfg.name not in SDES or cfg.name not in SDE_ARGS:
        raise UserInputError(f"unknown SDE {cfg.name!r}; choose one of "
                             f"{', '.join(n for n in SDES if n in SDE_ARGS)}")
    return SDES[cfg.name](**SDE_ARGS[cfg.name](cfg))


def is_image(cfg: DataConfig) -> bool:
    """Whether ``data.name`` is an image dataset (else a built-in 2-D distribution)."""
    return is_image_dataset(cfg.name)


@functools.lru_cache(maxsize=4)
def _images(
    name: str, split: str, root: str, path: str, download: bool, channels: int
) -> ImageData:
    from ..data.images import load_images

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


def _check_unet(c: ModelConfig, shape: tuple[int, ...]) -> None:
    """The U-Net's constraints on ``model.*`` and the image size, as one-line errors."""
    if not c.ch_mult:
        raise UserInputError("model.ch_mult must list at least one level, e.g. [1, 2, 2]")
    if c.ch % 2:
        raise UserInputError(f"model.ch={c.ch} must be even (the U-Net's sinusoidal time "
                             "embedding has model.ch features)")
    factor = 2 ** (len(c.ch_mult) - 1)
    if shape[1] % factor or shape[2] % factor:
        raise UserInputError(f"images of {shape[1]}x{shape[2]} pixels do not halve "
                             f"{len(c.ch_mult) - 1} times (model.ch_mult={list(c.ch_mult)}); use "
                             f"fewer levels or images whose size divides by {factor}")
    res = shape[1]
    for level, mult in enumerate(c.ch_mult):  # attention levels, and the middle block
        attention = res in c.attn_resolutions or level == len(c.ch_mult) - 1
        if attention and (c.ch * mult) % c.num_heads:
            raise UserInputError(f"model.num_heads={c.num_heads} does not divide the "
                                 f"{c.ch * mult} channels of an attention block (model.ch * "
                                 f"model.ch_mult[{level}])")
        res //= 2


def num_classes(cfg: Config) -> int | None:
    """The number of classes of a class-conditional model (``model.class_cond``): the 2-D set's
    (:data:`~sde_gen.data.toy2d.TOY2D_CLASSES`) or the image set's labels; ``None`` when the
    model is unconditional.

    Raises:
        UserInputError: ``model.class_cond`` on data without labels.
    """
    if not cfg.model.class_cond:
        return None
    data = build_data(cfg.data)
    k = data.num_classes
    if k is None or (not isinstance(data, Toy2D) and data.y is None):
        where = "" if isinstance(data, Toy2D) else f" ({data.origin})"
        raise UserInputError(f"model.class_cond=true needs labelled data; data.name="
                             f"{cfg.data.name}{where} has no class labels (a folder dataset gets "
                             f"them from class subfolders, an .npz from y_train/y_test)")
    return k


def build_autoencoder(cfg: Config) -> nn.Module:
    """The first stage of ``model.name=autoencoder``: a :class:`~sde_gen.latent.KLAutoencoder`
    of ``model.factor``, ``model.latent_channels``, widths ``model.ch * model.ch_mult`` and
    ``model.num_res_blocks`` residual blocks per level.

    Raises:
        UserInputError: images whose sides ``model.factor`` does not divide, or no diffusers.
    """
    from ..latent import KLAutoencoder

    c, shape = cfg.model, data_shape(cfg.data)
    if shape[1] % c.factor or shape[2] % c.factor:
        raise UserInputError(f"images of {shape[1]}x{shape[2]} pixels do not divide by the "
                             f"autoencoder's model.factor={c.factor}")
    return KLAutoencoder(in_channels=shape[0], latent_channels=c.latent_channels,
                         factor=c.factor, block_out_channels=tuple(c.ch * m for m in c.ch_mult),
                         layers_per_block=c.num_res_blocks, image_size=shape[1])


def build_model(cfg: Config, sde: SDE | None = None, *,
                shape: tuple[int, ...] | None = None) -> nn.Module:
    """The eps-model ``ScoreModel(net, sde)`` for a config (class-conditional with
    ``model.class_cond``: the net gets ``num_classes`` from the data, :func:`num_classes`), or the
    first stage of ``model.name=autoencoder`` (:func:`build_autoencoder`).

    ``shape``: one example's shape, default the data's; a latent config (``model.autoencoder``)
    must pass its latents' (:func:`~.autoencoders.model_shape`)."""
    from .config import AUTOENCODER

    if cfg.model.name == AUTOENCODER:
        return build_autoencoder(cfg)
    if shape is None and cfg.model.autoencoder:
        raise ValueError("build_model: a latent config needs shape= (autoencoders.model_shape)")
    sde = sde if sde is not None else build_sde(cfg.sde)
    shape = data_shape(cfg.data) if shape is None else tuple(shape)
    if (len(shape) == 3) != (cfg.model.name == "unet"):
        raise UserInputError(f"model.name={cfg.model.name} does not fit data.name={cfg.data.name} "
                             f"(use unet for images, mlp for 2-D data)")
    if cfg.model.name == "unet":
        _check_unet(cfg.model, shape)
    kwargs = NET_ARGS[cfg.model.name](cfg.model, shape)
    classes = num_classes(cfg)
    if classes is not None:
        kwargs["num_classes"] = classes
    net: nn.Module = NETWORKS[cfg.model.name](**kwargs)
    return ScoreModel(net, sde, prediction=cfg.model.prediction, sigma_data=cfg.model.sigma_data,
                      noise_cond=cfg.model.noise_cond, learn_variance=cfg.model.learn_variance)
