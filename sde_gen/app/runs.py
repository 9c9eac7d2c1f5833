"""Load trained runs: config, SDE and EMA model from a checkpoint or a run directory, or a local
diffusers pipeline folder (:func:`load_diffusers_run`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, UserInputError
from ..latent import LatentCodec
from ..parameterization import ScoreModel
from ..sde import SDE
from .checkpoint import check_run_state, find_checkpoint, latest_run, load_checkpoint
from .config import AUTOENCODER, Config, DataConfig, from_dict
from .export import load_safetensors
from .factory import build_model, build_sde

if TYPE_CHECKING:
    from ..interop.stable_diffusion import StableDiffusion


@dataclass(frozen=True)
class LoadedRun:
    """A trained model ready for sampling or evaluation."""

    cfg: Config
    sde: SDE
    #: a :class:`~sde_gen.consistency.ConsistencyModel` for a distilled run (``sde-gen distill``)
    model: ScoreModel
    checkpoint: Path
    step: int
    #: ``(C, H, W)`` of a diffusers folder's UNet (``None``: from ``cfg.data``).
    image_shape: tuple[int, ...] | None = None
    #: A latent run's frozen autoencoder and scaling (``None``: the model diffuses pixels).
    codec: LatentCodec | None = None
    #: A Stable Diffusion folder (text encoder, tokenizer, VAE): ``model`` then takes
    #: ``(x, t, context)`` and is sampled through ``text.guided(prompt, ...)``.
    text: StableDiffusion | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example the model sees (a diffusers run: its UNet's, without loading the
        data; a latent run: the latents')."""
        if self.codec is not None:
            return self.codec.latent_shape
        if self.image_shape is not None:
            return self.image_shape
        from .factory import data_shape

        return data_shape(self.cfg.data)

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one example of the data (a latent run: the decoded images')."""
        return self.codec.image_shape if self.codec is not None else self.shape

    @property
    def is_autoencoder(self) -> bool:
        """A first-stage run (``model.name=autoencoder``): no score model."""
        return self.cfg.model.name == AUTOENCODER

    def decode(self, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """Samples of the model -> data: latents decoded in batches on the codec's device and
        returned on ``x``'s device, float32 (pixel runs: ``x`` itself)."""
        if self.codec is None:
            return x
        device = next(self.codec.vae.parameters()).device
        with torch.no_grad():
            out = [self.codec.decode(x[i:i + batch_size].to(device)).float().to(x.device)
                   for i in range(0, len(x), batch_size)]
        return torch.cat(out)

    @property
    def workdir(self) -> Path:
        """The run directory (for an exported file: the folder it is in; a diffusers folder:
        the folder)."""
        if self.image_shape is not None:
            return self.checkpoint
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
    dtype: torch.dtype | None = None,
) -> LoadedRun:
    """Load a run (a checkpoint file or a run directory; default the latest under ``runs/``).

    The model gets the EMA weights unless ``ema=False``; it is put in eval mode. ``dtype``: the
    weights' dtype of a Stable Diffusion folder (default float32).

    Raises:
        CheckpointError: no run, an unreadable or incomplete checkpoint, or weights that do not
            fit the checkpoint's own config.
        UserInputError: ``dtype`` for anything but a Stable Diffusion folder.
    """
    folder = path is not None and Path(path).is_dir()
    if folder:
        from ..interop.stable_diffusion import is_stable_diffusion_folder

        if is_stable_diffusion_folder(path):
            return load_stable_diffusion_run(path, device=device, dtype=dtype or torch.float32)
    if dtype is not None:
        raise UserInputError("--dtype applies to Stable Diffusion folders; other runs sample in "
                             "float32")
    if folder:
        from ..interop.diffusers import is_diffusers_folder

        if is_diffusers_folder(path):
            return load_diffusers_run(path, device=device)
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
    if cfg.model.autoencoder:
        from .autoencoders import model_shape

        model = build_model(cfg, sde, shape=model_shape(cfg))
    else:
        model = build_model(cfg, sde)
    weights = state["ema"] if ema else state["model"]
    load_weights(model, weights, ckpt)
    model.to(device).eval().requires_grad_(False)
    codec = None
    if cfg.model.autoencoder:
        from .autoencoders import codec_from_record
        from .factory import data_shape

        codec = codec_from_record(cfg.model.autoencoder, state.get("latent"),
                                  data_shape(cfg.data), device, str(ckpt))
    if "consistency" in state:  # sde-gen distill's student: sampled by solver 'consistency'
        from ..consistency import ConsistencyModel

        model = ConsistencyModel(model, sde, float(state["consistency"]["t_min"]))
    return LoadedRun(cfg=cfg, sde=sde, model=model, checkpoint=ckpt, step=int(state["step"]),
                     codec=codec)


def load_diffusers_run(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> LoadedRun:
    """A local diffusers pipeline (or UNet2DModel) folder as a :class:`LoadedRun`.

    The model and SDE come from :func:`sde_gen.interop.load_diffusers`; ``cfg.data`` is the
    built-in image set of the UNet's shape (``digits`` 1x8x8, ``mnist`` 1x28x28, ``cifar10``
    3x32x32; data in [-1, 1], as diffusers' DDPM pipelines), used by ``likelihood`` and ``eval``;
    other shapes get ``npz`` (sampling works; the likelihood then needs the data). ``step`` is 0.

    Raises:
        UserInputError: see :func:`~sde_gen.interop.load_diffusers`.
    """
    from ..data.registry import IMAGE_SHAPES
    from ..interop.diffusers import load_diffusers

    model, sde = load_diffusers(path, device=device)
    shape = model.image_shape
    name = next((k for k, v in IMAGE_SHAPES.items() if v == shape), "npz")
    cfg = Config()
    cfg = replace(cfg, data=DataConfig(name=name, channels=shape[0] if shape[0] in (1, 3) else 3),
                  sde=replace(cfg.sde, name=getattr(sde, "path_name", "vp"), N=sde.N,
                              shift=float(getattr(sde, "grid_shift", 1.0))))
    return LoadedRun(cfg=cfg, sde=sde, model=model, checkpoint=Path(path), step=0,
                     image_shape=shape)


def load_stable_diffusion_run(path: str | os.PathLike, *, device: torch.device | str = "cpu",
                              dtype: torch.dtype = torch.float32) -> LoadedRun:
    """A local Stable Diffusion pipeline folder as a :class:`LoadedRun` (``text`` set; ``codec``
    at the UNet's default size, ``sample`` picks another with ``--height``/``--width``).

    Raises:
        UserInputError: see :func:`~sde_gen.interop.stable_diffusion.load_stable_diffusion`.
    """
    from ..interop.stable_diffusion import load_stable_diffusion

    sd = load_stable_diffusion(path, device=device, dtype=dtype)
    codec = sd.codec()
    cfg = Config()
    cfg = replace(cfg, data=DataConfig(name="npz", channels=codec.image_shape[0]),
                  sde=replace(cfg.sde, name="vp", N=sd.sde.N))
    return LoadedRun(cfg=cfg, sde=sd.sde, model=sd.model, checkpoint=Path(path), step=0,
                     image_shape=codec.image_shape, codec=codec, text=sd)


def with_data(run: LoadedRun, data: str | None) -> LoadedRun:
    """``run`` evaluated on other data: ``data`` is a built-in image set (``mnist``, ``cifar10``,
    ...), a ``.npz`` file or an image folder (``None``: the run's own ``cfg.data``). A diffusers
    folder has no data of its own: its default is the built-in set of its UNet's shape.

    Raises:
        UserInputError: ``data`` is none of those, its images are not the model's shape, or a
            diffusers model whose shape matches no built-in set is given no ``data``.
    """
    from ..data.registry import IMAGE_SHAPES
    from .factory import data_shape, is_image

    if data is None:
        if run.image_shape is not None and run.cfg.data.name == "npz" and not run.cfg.data.path:
            shape = "x".join(map(str, run.image_shape))
            raise UserInputError(f"the model's {shape} images match no built-in dataset; pass "
                                 f"--data FILE.npz or --data FOLDER")
        return run
    if not is_image(run.cfg.data):
        raise UserInputError("--data applies to image runs only")
    p = Path(data).expanduser()
    if data in IMAGE_SHAPES:
        cfg = replace(run.cfg.data, name=data, path="")
    elif p.suffix == ".npz" and p.is_file():
        cfg = replace(run.cfg.data, name="npz", path=str(p))
    elif p.is_dir():
        cfg = replace(run.cfg.data, name="folder", path=str(p), channels=run.data_shape[0])
    else:
        raise UserInputError(f"--data {data}: not a built-in image set "
                             f"({', '.join(IMAGE_SHAPES)}), an existing .npz file or a folder")
    shape = data_shape(cfg)
    if tuple(shape) != tuple(run.data_shape):
        raise UserInputError(f"--data {data} has {'x'.join(map(str, shape))} images; the model "
                             f"makes {'x'.join(map(str, run.data_shape))}")
    return replace(run, cfg=replace(run.cfg, data=cfg))
