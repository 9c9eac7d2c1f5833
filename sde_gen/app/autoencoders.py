"""The autoencoder that ``model.autoencoder: PATH`` names, found, checked and loaded.

``PATH`` is a finished sde-gen first-stage run (``model.name=autoencoder``; its EMA weights) or a
diffusers ``AutoencoderKL`` folder as ``save_pretrained`` writes it (``config.json`` and weights;
also a pipeline folder with such a ``vae/``, e.g. Stable Diffusion's). :func:`autoencoder_spec`
reads only configs, so a config is checked (missing path, unfinished run, channels, image size)
before any weight is loaded or any image encoded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, UserInputError
from ..latent import LatentCodec, check_scaling, require_diffusers, weights_sha256
from .checkpoint import list_checkpoints, load_checkpoint

__all__ = ["AutoencoderSpec", "OpenedAutoencoder", "autoencoder_spec", "codec_from_record",
           "encode_training_set", "model_shape", "open_autoencoder"]

RUN, FOLDER = "run", "diffusers"


@dataclass(frozen=True)
class AutoencoderSpec:
    """What an autoencoder is, from its config alone.

    ``image_shape``: the images a first-stage run was trained on (``None`` for a diffusers folder,
    which is fully convolutional); ``scaling``: a folder's ``(scaling_factor, shift_factor)``."""

    path: Path
    kind: str
    in_channels: int
    latent_channels: int
    factor: int
    image_shape: tuple[int, int, int] | None = None
    scaling: tuple[Any, Any] | None = None

    def latent_shape(self, data_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """``(c, H/f, W/f)`` for images of ``data_shape``.

        Raises:
            UserInputError: images of other channels, of another size than a first-stage run
                was trained on, or whose sides ``f`` does not divide.
        """
        c, h, w = data_shape
        where = f"model.autoencoder {self.path}"
        if c != self.in_channels:
            raise UserInputError(f"{where} encodes {self.in_channels}-channel images; the data "
                                 f"have {c} channels")
        if self.image_shape is not None and tuple(self.image_shape) != tuple(data_shape):
            raise UserInputError(f"{where} was trained on "
                                 f"{'x'.join(map(str, self.image_shape))} images; the data are "
                                 f"{'x'.join(map(str, data_shape))}")
        if h % self.factor or w % self.factor:
            raise UserInputError(f"{where} downsamples by f = {self.factor}, which does not "
                                 f"divide the data's {h}x{w} images")
        return (self.latent_channels, h // self.factor, w // self.factor)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserInputError(f"cannot read {path}: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(value, dict):
        raise UserInputError(f"{path} is not a JSON object")
    return value


def _folder(path: Path) -> Path | None:
    """The ``AutoencoderKL`` folder at ``path`` (or its ``vae/``), or ``None``."""
    for p in (path, path / "vae"):
        cfg = p / "config.json"
        if cfg.is_file() and _read_json(cfg).get("_class_name") == "AutoencoderKL":
            return p
    return None


def model_shape(cfg: Any) -> tuple[int, ...]:
    """Shape of one example the score model of ``cfg`` sees: the data's, or with
    ``model.autoencoder`` the latents' ``(c, H/f, W/f)`` (read from the autoencoder's config, no
    weights loaded; checked against the data, :meth:`AutoencoderSpec.latent_shape`)."""
    from .factory import data_shape

    if not cfg.model.autoencoder:
        return data_shape(cfg.data)
    return autoencoder_spec(cfg.model.autoencoder).latent_shape(data_shape(cfg.data))


def autoencoder_spec(path: str | os.PathLike) -> AutoencoderSpec:
    """Read what the autoencoder at ``path`` is (module docstring), loading no weights.

    Raises:
        UserInputError: a missing path, a folder that is neither kind, a run that is not an
            autoencoder run or has not reached its ``train.steps``.
    """
    from .config import AUTOENCODER, load_config
    from .factory import data_shape

    p = Path(path).expanduser()
    where = f"model.autoencoder {p}"
    if not str(path):
        raise UserInputError("model.autoencoder is empty")
    if not p.exists():
        raise UserInputError(f"{where} does not exist")
    folder = _folder(p) if p.is_dir() else None
    if folder is not None:
        c = _read_json(folder / "config.json")
        try:
            levels = len(c.get("block_out_channels", (64,)))
            return AutoencoderSpec(
                path=folder, kind=FOLDER, in_channels=int(c.get("in_channels", 3)),
                latent_channels=int(c.get("latent_channels", 4)), factor=2 ** (levels - 1),
                scaling=(c.get("scaling_factor", 0.18215), c.get("shift_factor")))
        except (TypeError, ValueError):
            raise UserInputError(f"{where}: its config.json is not an AutoencoderKL "
                                 "config") from None
    if not (p / "config.yaml").is_file():
        raise UserInputError(f"{where} is neither an sde-gen autoencoder run (config.yaml, "
                             "checkpoints/) nor a diffusers AutoencoderKL folder (config.json "
                             "with _class_name AutoencoderKL)")
    try:
        cfg = load_config(p / "config.yaml")
    except ConfigError as e:
        raise UserInputError(f"{where} holds an invalid config: {e}") from None
    if cfg.model.name != AUTOENCODER:
        raise UserInputError(f"{where} is a run of model.name={cfg.model.name}, not a "
                             "first-stage run (model.name=autoencoder)")
    ckpts = list_checkpoints(p)
    step = int(ckpts[-1].name[5:14]) if ckpts else 0
    if step < cfg.train.steps:
        raise UserInputError(f"{where} has not finished training (step {step} of "
                             f"train.steps={cfg.train.steps}); finish it first with sde-gen "
                             f"train --workdir {p} --config {p / 'config.yaml'}")
    shape = data_shape(cfg.data)
    return AutoencoderSpec(path=p, kind=RUN, in_channels=shape[0],
                           latent_channels=cfg.model.latent_channels, factor=cfg.model.factor,
                           image_shape=tuple(shape))


@dataclass(frozen=True)
class OpenedAutoencoder:
    """A loaded, frozen autoencoder: diffusers' ``vae``, the decoder's log-scale (an sde-gen
    first stage) or ``None``, its :class:`AutoencoderSpec` and weights hash."""

    vae: torch.nn.Module
    log_scale: torch.Tensor | None
    spec: AutoencoderSpec
    sha256: str

    def codec(self, image_shape: tuple[int, int, int], scaling_factor: float,
              shift_factor: float) -> LatentCodec:
        """The :class:`~sde_gen.latent.LatentCodec` of this autoencoder with that scaling."""
        return LatentCodec(self.vae, scaling_factor=scaling_factor, shift_factor=shift_factor,
                           factor=self.spec.factor, image_shape=image_shape,
                           log_scale=self.log_scale, sha256=self.sha256)


def open_autoencoder(path: str | os.PathLike, device: torch.device | str = "cpu"
                     ) -> OpenedAutoencoder:
    """Load the autoencoder at ``path`` (:func:`autoencoder_spec`) on ``device``, frozen, in
    float32 (a run: its EMA weights)."""
    spec = autoencoder_spec(path)
    if spec.kind == FOLDER:
        diffusers = require_diffusers(f"model.autoencoder {spec.path}")
        try:
            vae = diffusers.AutoencoderKL.from_pretrained(spec.path, torch_dtype=torch.float32)
        except (OSError, ValueError, RuntimeError) as e:
            raise UserInputError(f"cannot load the AutoencoderKL in {spec.path}: "
                                 f"{str(e).strip().splitlines()[0][:200]}") from None
        log_scale = None
    else:
        from .config import from_dict
        from .factory import build_autoencoder

        ckpt = list_checkpoints(spec.path)[-1]
        state = load_checkpoint(ckpt)
        try:
            ae = build_autoencoder(from_dict(state["config"]))
            ae.load_state_dict(state["ema"])
        except (KeyError, TypeError, RuntimeError, ConfigError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserInputError(f"model.autoencoder {spec.path}: its checkpoint {ckpt.name} is "
                                 f"not a loadable autoencoder ({first})") from None
        vae, log_scale = ae.vae, ae.log_scale.detach()
    vae = vae.to(device).eval().requires_grad_(False)
    return OpenedAutoencoder(vae=vae, log_scale=log_scale, spec=spec, sha256=weights_sha256(vae)
                             if log_scale is None else _run_sha256(vae, log_scale))


def _run_sha256(vae: torch.nn.Module, log_scale: torch.Tensor) -> str:
    """A first stage's hash covers the decoder's log-scale too (it defines the likelihood)."""
    holder = torch.nn.Module()
    holder.vae = vae
    holder.register_buffer("log_scale", log_scale)
    return weights_sha256(holder)


def folder_scaling(opened: OpenedAutoencoder) -> tuple[float, float] | None:
    """A diffusers folder's checked ``(scaling_factor, shift_factor)``, or ``None`` for a run."""
    if opened.spec.scaling is None:
        return None
    return check_scaling(*opened.spec.scaling, f"model.autoencoder {opened.spec.path}")


def codec_from_record(path: str | os.PathLike, record: Any, image_shape: tuple[int, int, int],
                      device: torch.device | str, where: str) -> LatentCodec:
    """The codec a latent run was trained with: the autoencoder at ``path``, checked against
    the run's ``record`` (:meth:`~sde_gen.latent.LatentCodec.metadata`), with its scaling.

    Raises:
        UserInputError: no or a malformed record, or an autoencoder whose weights differ from the
            one the run was trained on (its hash).
    """
    if not isinstance(record, dict) or "autoencoder_sha256" not in record:
        raise UserInputError(f"{where} records no latent scaling or autoencoder hash (not a "
                             "complete latent-diffusion checkpoint)")
    opened = open_autoencoder(path, device)
    if opened.sha256 != record["autoencoder_sha256"]:
        raise UserInputError(f"the autoencoder at {path} (sha256 {opened.sha256[:12]}) is not "
                             f"the one {where} was trained on (sha256 "
                             f"{str(record['autoencoder_sha256'])[:12]})")
    s, b = check_scaling(record.get("scaling_factor"), record.get("shift_factor"), where)
    return opened.codec(image_shape, s, b)


def encode_training_set(cfg: Any, data: Any, device: torch.device,
                        record: dict[str, Any] | None) -> tuple[LatentCodec, Any]:
    """The codec of ``cfg.model.autoencoder`` and the training split ``data`` encoded by it
    (:class:`~sde_gen.data.batches.LatentData`, scaled).

    The scaling is the run's ``record`` when resuming (whose hash the autoencoder must match),
    else the folder's ``scaling_factor``/``shift_factor`` (``model.latent_scaling=auto`` on a
    diffusers folder), else computed from these latents (:func:`~sde_gen.latent.latent_scaling`).

    Raises:
        UserInputError: the autoencoder does not fit the data or the record, or its scaling is
            0, NaN or infinite; all before any image is encoded.
    """
    from ..data.batches import LatentData
    from ..latent import latent_scaling

    path = cfg.model.autoencoder
    shape = tuple(data.shape)
    autoencoder_spec(path).latent_shape(shape)  # channels and size, before loading weights
    if record is not None:
        codec = codec_from_record(path, record, shape, device, "the run being resumed")
        scaling = (codec.scaling_factor, codec.shift_factor)
    else:
        opened = open_autoencoder(path, device)
        scaling = folder_scaling(opened) if cfg.model.latent_scaling == "auto" else None
        codec = opened.codec(shape, *(scaling or (1.0, 0.0)))
    z = codec.encode_all(data.x, device=device)
    if scaling is None:
        codec = opened.codec(shape, *latent_scaling(z, f"model.autoencoder {path}"))
    latents = LatentData(x=codec.scale(z), y=data.y, num_classes=data.num_classes,
                         name=data.name, source=data.origin)
    return codec, latents
