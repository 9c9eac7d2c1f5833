"""A local diffusers ``StableDiffusionPipeline`` folder as a text-conditional latent model.

The folder (``model_index.json``, ``unet/`` UNet2DConditionModel, ``vae/`` AutoencoderKL,
``text_encoder/`` CLIP text model, ``tokenizer/``, ``scheduler/``) is loaded offline. The
scheduler config maps to a VP SDE exactly as a DDPM folder's does
(:func:`~.diffusers.sde_from_scheduler_config`: SD's ``scaled_linear`` betas; ``epsilon`` or
SD2's ``v_prediction``), the UNet is an eps-model ``model(x, t, context)`` on that chain with the
text embeddings as ``encoder_hidden_states``, and the VAE is a
:class:`~sde_gen.latent.LatentCodec` with its ``scaling_factor`` (and ``shift_factor``).

Prompts are encoded once (:meth:`StableDiffusion.encode_prompt`: CLIP's last hidden state of the
prompt padded to the tokenizer's ``model_max_length``, as diffusers' pipeline does), and
:meth:`StableDiffusion.guided` binds them: classifier-free guidance
``(1 + w) eps(x, t, c) - w eps(x, t, c_neg)`` ([Ho22] Eq. 6) from ONE batched call on ``2B``
rows per step. diffusers' ``guidance_scale`` is ``1 + w``: ``eps_u + g (eps_c - eps_u)``.

SDXL (a second text encoder), SD3 and Flux (transformers) are refused with a one-line error.

Refs: [Rombach22] Sec. 3.3 (cross-attention conditioning); [Ho22] Eq. (6); [Salimans22] (v).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserInputError
from ..latent import LatentCodec
from ..sde import VPSDE
from .diffusers import (
    DiffusersEpsModel,
    _read_json,
    _require_diffusers,
    _sampler_defaults,
    _show,
    sde_from_scheduler_config,
)

__all__ = ["PromptModel", "StableDiffusion", "is_stable_diffusion_folder",
           "load_stable_diffusion"]

#: The components a Stable Diffusion folder must have, and the classes accepted for each.
COMPONENTS = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "scheduler": None,  # any scheduler over a VP chain (checked by its config)
}
#: Components that mark a pipeline this module does not load, and why.
UNSUPPORTED = {
    "text_encoder_2": "SDXL-type pipelines (a second text encoder) are not supported",
    "transformer": "transformer pipelines (SD3, Flux) are not supported; only SD 1.x/2.x-type "
                   "UNet pipelines",
}
INSTALL_HINT = 'pip install -e ".[interop]"'


def is_stable_diffusion_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a diffusers ``model_index.json`` with a text encoder or a
    conditional UNet (a text-to-image pipeline, supported or not)."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return False
    data = _read_json(index)
    unet = data.get("unet")
    return ("text_encoder" in data or "transformer" in data
            or (isinstance(unet, list) and len(unet) == 2 and unet[1] == "UNet2DConditionModel"))


class StableDiffusionEpsModel(DiffusersEpsModel):
    """A ``UNet2DConditionModel`` as an eps-model ``model(x, t, context)`` on its VP chain.

    Shapes: ``x (B, c, h, w)``, ``t (B,)``, ``context (B, L, D)`` -> ``(B, c, h, w)``.
    """

    def forward(self, x: torch.Tensor, t: torch.Tensor,  # type: ignore[override]
                context: torch.Tensor) -> torch.Tensor:
        """eps_hat(x, t | context), converted from the UNet's ``prediction_type``."""
        if t.ndim != 1 or t.shape[0] != x.shape[0] or context.shape[0] != x.shape[0]:
            raise UserInputError(f"x {tuple(x.shape)}, t {tuple(t.shape)} and context "
                                 f"{tuple(context.shape)} must share the batch size")
        weights = next(self.unet.parameters())
        out = self.unet(x.to(weights.dtype), self.timestep(t).to(weights.dtype),
                        encoder_hidden_states=context.to(weights.dtype)).sample.to(x.dtype)
        return self.to_eps(x, t, out)

    def to_eps(self, x: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The network's output as eps at ``(alpha_t, sigma_t)``."""
        if self.prediction == "eps":
            return out
        from ..parameterization import v_to_eps, x0_to_eps

        alpha_t, sigma_t = (c.to(x.dtype) for c in self.sde.marginal_coeffs(t.to(torch.float64)))
        convert = v_to_eps if self.prediction == "v" else x0_to_eps
        return convert(x, out, alpha_t, sigma_t)


def check_guidance(scale: Any) -> float:
    """``w`` as a float; NaN, infinite, negative or not a number is a one-line error."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(
            scale) or scale < 0:
        raise UserInputError(f"guidance scale must be a finite number >= 0, got {scale!r}")
    return float(scale)


class PromptModel:
    """A prompt (and a negative prompt) bound to a :class:`StableDiffusionEpsModel`: an
    unconditional eps-model ``(x, t) -> eps`` for every solver.

    ``w = 0``: ``eps(x, t, c)`` from a ``B``-row call; ``w > 0``: ``(1 + w) eps(x, t, c) -
    w eps(x, t, c_neg)`` ([Ho22] Eq. 6) from one call on the ``2B`` rows ``cat(x, x)``.

    With ``P`` prompts, row ``j`` of every batch is conditioned on prompt ``j mod P`` (a grid
    tuned on a few prompts: the same draws always meet the same prompts).

    Args:
        model: the text-conditional eps-model.
        context, negative: ``(P, L, D)`` prompt embeddings (``P = 1``: every row), the negative
            one ``(1, L, D)`` or ``(P, L, D)``.
        scale: ``w >= 0`` (diffusers' ``guidance_scale`` is ``1 + w``).
    """

    num_classes = None
    learn_variance = False

    def __init__(self, model: StableDiffusionEpsModel, context: torch.Tensor,
                 negative: torch.Tensor, scale: float) -> None:
        self.model, self.context, self.negative = model, context, negative
        self.scale = check_guidance(scale)
        self.sampler_defaults = model.sampler_defaults

    @staticmethod
    def _rows(c: torch.Tensor, batch: int, x: torch.Tensor) -> torch.Tensor:
        """``(batch, L, D)``: row ``j`` gets prompt ``j mod P`` (no copy for ``P = 1``)."""
        c = c.to(x.device)
        if c.shape[0] == 1:
            return c.expand(batch, *c.shape[1:])
        return c[torch.arange(batch, device=c.device) % c.shape[0]]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The UNet's weights (a calibration made on some prompts is this model's for any)."""
        return self.model.state_dict()

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        c = self._rows(self.context, b, x)
        if self.scale == 0:
            return self.model(x, t, c)
        eps = self.model(torch.cat([x, x]), torch.cat([t, t]),
                         torch.cat([c, self._rows(self.negative, b, x)]))
        eps_cond, eps_neg = eps.chunk(2)
        return (1 + self.scale) * eps_cond - self.scale * eps_neg  # Eq. (6) [Ho22]


class StableDiffusion(nn.Module):
    """A loaded Stable Diffusion folder: the eps-model, its VP SDE, the VAE codec, the CLIP text
    encoder and tokenizer (from :func:`load_stable_diffusion`).

    Attributes:
        model: :class:`StableDiffusionEpsModel`, ``model(x, t, context)``.
        sde: the scheduler's :class:`VPSDE`.
        vae: the ``AutoencoderKL``; ``factor`` its downsampling factor.
        multiple: height and width must be multiples of it (the VAE factor times the UNet's
            downsampling, 64 for SD).
    """

    def __init__(self, model: StableDiffusionEpsModel, sde: VPSDE, vae: nn.Module,
                 text_encoder: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model, self.sde, self.vae, self.text_encoder = model, sde, vae, text_encoder
        self.tokenizer = tokenizer
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.multiple = self.factor * 2 ** (len(model.unet.config.block_out_channels) - 1)
        self.default_size = int(model.unet.config.sample_size) * self.factor
        self._codecs: dict[tuple[int, int], LatentCodec] = {}

    def check_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """``(height, width)`` (default the UNet's ``sample_size`` times the VAE factor).

        Raises:
            UserInputError: a size that is not a positive multiple of :attr:`multiple`.
        """
        h = self.default_size if height is None else height
        w = self.default_size if width is None else width
        for name, v in (("height", h), ("width", w)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v % self.multiple:
                raise UserInputError(
                    f"{name} {v!r} must be a positive multiple of {self.multiple} (the VAE factor "
                    f"{self.factor} times the UNet's downsampling "
                    f"{self.multiple // self.factor})")
        return h, w

    def codec(self, height: int | None = None, width: int | None = None) -> LatentCodec:
        """The VAE as a :class:`LatentCodec` for ``height x width`` images (its
        ``scaling_factor`` and ``shift_factor``); one codec, one hash, per size."""
        h, w = self.check_size(height, width)
        if (h, w) not in self._codecs:
            cfg = self.vae.config
            sha = next(iter(self._codecs.values())).sha256 if self._codecs else None
            self._codecs[h, w] = LatentCodec(
                self.vae, scaling_factor=cfg.scaling_factor,
                shift_factor=getattr(cfg, "shift_factor", None) or 0.0, factor=self.factor,
                image_shape=(int(cfg.in_channels), h, w), sha256=sha)
        return self._codecs[h, w]

    def latent_shape(self, height: int | None = None, width: int | None = None
                     ) -> tuple[int, int, int]:
        """``(c, height / f, width / f)`` of the latents the UNet samples."""
        return self.codec(height, width).latent_shape

    @torch.no_grad()
    def encode_prompt(self, prompt: str | list[str]) -> torch.Tensor:
        """CLIP embeddings ``(P, L, D)`` of ``P`` prompts, padded and truncated to the
        tokenizer's ``model_max_length`` as diffusers' ``StableDiffusionPipeline`` does."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise UserInputError(f"a prompt must be a string or a list of strings, got "
                                 f"{_show(prompt)}")
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True,
                                max_length=self.tokenizer.model_max_length, return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(device)
        return self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]

    def guided(self, prompt: str | list[str], *, negative_prompt: str | list[str] | None = None,
               guidance: float = 0.0) -> PromptModel:
        """The eps-model ``(x, t) -> eps`` of ``prompt`` guided away from ``negative_prompt``
        (default the empty prompt) with weight ``guidance`` (:class:`PromptModel`); each prompt
        is encoded here, once. A list of ``P`` prompts conditions row ``j`` on prompt
        ``j mod P``."""
        scale = check_guidance(guidance)
        context = self.encode_prompt(prompt)
        negative = self.encode_prompt("" if negative_prompt is None else negative_prompt)
        if negative.shape[0] not in (1, context.shape[0]):
            raise UserInputError(f"{negative.shape[0]} negative prompts for {context.shape[0]} "
                                 "prompts; give one, or one per prompt")
        return PromptModel(self.model, context, negative, scale)


def _component_class(index: dict, name: str, path: Path) -> str:
    entry = index.get(name)
    folder = path / name
    if not (isinstance(entry, list) and len(entry) == 2 and entry[1]) or not folder.is_dir():
        raise UserInputError(f"{path} is missing the {name}/ component of a Stable Diffusion "
                             f"pipeline (model_index.json and a {name}/ folder)")
    return str(entry[1])


def load_stable_diffusion(path: str | os.PathLike, *, device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float32) -> StableDiffusion:
    """Load a local ``StableDiffusionPipeline`` folder offline.

    Args:
        path: the folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
            ``tokenizer/``, ``scheduler/``).
        device, dtype: where the networks go and their dtype (eval mode, gradients off;
            loaded in ``dtype`` as diffusers' ``torch_dtype`` does; sampling stays in the
            solver's float32, each call casts to the weights' dtype and back).

    Returns:
        A :class:`StableDiffusion`.

    Raises:
        UserInputError: diffusers or transformers missing, a missing component, an SDXL or
            transformer pipeline, a component of an unsupported class, a scheduler with no VP
            equivalent, a text encoder whose width is not the UNet's cross-attention width, or
            weights that cannot be loaded; one line each.
    """
    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise UserInputError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
    index = _read_json(path / "model_index.json")
    for name, why in UNSUPPORTED.items():
        if index.get(name) is not None:
            raise UserInputError(f"{path}: {why}")
    classes = {name: _component_class(index, name, path) for name in COMPONENTS}
    for name, allowed in COMPONENTS.items():
        if allowed is not None and classes[name] not in allowed:
            raise UserInputError(f"{path}: {name} is a {classes[name]}; supported: "
                                 f"{', '.join(allowed)}")
    scheduler_json = path / "scheduler" / "scheduler_config.json"
    if not scheduler_json.is_file():
        raise UserInputError(f"{path} is missing the scheduler/ component ({scheduler_json})")
    config = _read_json(scheduler_json)
    try:
        sde = sde_from_scheduler_config(config)
        defaults = _sampler_defaults(config)
    except UserInputError as e:
        raise UserInputError(f"{scheduler_json}: {e}") from None
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise UserInputError(f"{scheduler_json}: prediction_type {_show(prediction_type)} is not "
                             f"supported for Stable Diffusion; epsilon or v_prediction")
    diffusers = _require_diffusers()
    try:
        import transformers
    except ImportError:
        raise UserInputError(f"a Stable Diffusion folder needs transformers: {INSTALL_HINT}"
                             ) from None
    unet = _load(diffusers.UNet2DConditionModel, path / "unet", torch_dtype=dtype)
    vae = _load(diffusers.AutoencoderKL, path / "vae", torch_dtype=dtype)
    text_encoder = _load(transformers.CLIPTextModel, path / "text_encoder", dtype=dtype)
    tokenizer = _load(getattr(transformers, classes["tokenizer"]), path / "tokenizer")
    width, cross = text_encoder.config.hidden_size, unet.config.cross_attention_dim
    if width != cross:
        raise UserInputError(f"{path}: the text encoder's width {width} is not the UNet's "
                             f"cross_attention_dim {cross}")
    if unet.config.in_channels != vae.config.latent_channels:
        raise UserInputError(f"{path}: the UNet takes {unet.config.in_channels} channels, the VAE "
                             f"makes {vae.config.latent_channels}")
    model = StableDiffusionEpsModel(unet, sde, prediction_type=prediction_type,
                                    sampler_defaults=defaults)
    for net in (model, vae, text_encoder):
        net.to(device).eval().requires_grad_(False)
    return StableDiffusion(model, sde, vae, text_encoder, tokenizer)


def _load(cls: Any, folder: Path, **kwargs: Any) -> Any:
    """``cls.from_pretrained(folder, **kwargs)`` offline, logs silenced; one-line error on
    failure."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # no "Loading weights" bar per component
    try:
        return cls.from_pretrained(folder, local_files_only=True, **kwargs)
    except Exception as e:  # OSError, ValueError, EnvironmentError, safetensors errors, ...
        reason = " ".join(str(e).split())[:240] or type(e).__name__
        raise UserInputError(f"cannot load {folder.name}/ of {folder.parent}: {reason}") from None
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        if bars:
            transformers_logging.enable_progress_bar()
