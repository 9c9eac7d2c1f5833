"""Load a local diffusers DDPM/DDIM pipeline folder as an sde-gen ``(model, sde)`` pair (a
flow-matching folder: :mod:`.diffusers_flow`).

The scheduler config fixes a VP SDE whose discrete chain is the scheduler's ``betas`` exactly
(:class:`~sde_gen.schedules.TableBeta`: ``beta_schedule`` ``linear``, ``scaled_linear``,
``squaredcos_cap_v2`` or ``sigmoid``, ``beta_start``, ``beta_end``, ``num_train_timesteps = N``,
or ``trained_betas``), built as diffusers builds them (in float32) and kept in float64.

Time and timestep. diffusers' timestep ``k`` in ``0..N-1`` has ``abar_k = alphas_cumprod[k]``;
sde-gen's step ``k`` sits at ``t_k = (k + 1) T / N`` (``VPSDE.index_to_time``), where
``marginal_coeffs`` gives ``sqrt(abar_k), sqrt(1 - abar_k)`` exactly. The network receives the
continuous inverse ``k(t) = t N / T - 1``, clamped to ``[0, N - 1]`` and rounded when within 1e-3
of an integer (so a chain time is the integer timestep it was trained on): between chain steps
(continuous solvers, the ODE likelihood) it gets a fractional timestep, which UNet2DModel's
sinusoidal embedding accepts, and below ``t_0 = T/N`` it gets timestep 0. ``prediction_type``
``epsilon``, ``v_prediction`` or ``sample`` is converted to eps at ``(alpha_t, sigma_t)``.

Sampler settings the scheduler carries (``clip_sample``, ``thresholding``, ``variance_type``) are
returned in ``model.sampler_defaults``; ``sde-gen sample --ckpt FOLDER`` applies them unless a
flag overrides them.

Refs: [Ho20] Eq. (4), Alg. 2; [Song21ddim] Eq. (12); [Salimans22] (v); [Saharia22] Sec. 3.3.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserInputError
from ..parameterization import v_to_eps, x0_to_eps
from ..schedules import cosine_betas
from ..sde import SDE, VPSDE
from .diffusers_flow import DiffusersFlowModel, flow_sde_from_config, is_flow_config
from .diffusers_flow import sampler_defaults as flow_sampler_defaults

__all__ = [
    "VP_SCHEDULERS",
    "DiffusersEpsModel",
    "diffusers_betas",
    "is_diffusers_folder",
    "load_diffusers",
    "sde_from_scheduler_config",
]

#: diffusers schedulers over a discrete VP (DDPM) chain: their config maps to :class:`VPSDE`.
VP_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler",
    "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
    "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DDIMInverseScheduler", "DDPMParallelScheduler", "DDIMParallelScheduler",
)
#: diffusers' ``prediction_type`` -> what the network predicts.
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
#: diffusers' ``variance_type`` -> the ``ancestral`` solver's ``variance``.
VARIANCE_TYPES = {"fixed_small": "beta_tilde", "fixed_small_log": "beta_tilde",
                  "fixed_large": "beta", "fixed_large_log": "beta", "learned": "learned",
                  "learned_range": "learned"}
INSTALL_HINT = 'pip install -e ".[diffusers]"'


def _require_diffusers() -> Any:
    try:
        import diffusers
    except ImportError:
        raise UserInputError(f"loading a diffusers folder needs the diffusers extra: "
                             f"{INSTALL_HINT}") from None
    return diffusers


def diffusers_betas(config: Mapping[str, Any]) -> torch.Tensor:
    """The scheduler's ``betas``, ``(N,)`` float64, computed as diffusers computes them (float32).

    Raises:
        UserInputError: an unknown ``beta_schedule``, a zero-terminal-SNR rescale, or a field of
            the wrong type (``num_train_timesteps`` not a positive integer, ``trained_betas`` not
            a list of numbers, ...), naming the field.
    """
    if config.get("rescale_betas_zero_snr"):
        raise UserInputError("rescale_betas_zero_snr=true gives abar_N = 0 (no Gaussian prior); "
                             "the VP SDE needs abar_N > 0")
    trained = config.get("trained_betas")
    if trained is not None:
        if not isinstance(trained, (list, tuple)) or not trained or not all(
                _is_number(b) for b in trained):
            raise UserInputError(f"trained_betas must be a non-empty list of numbers, got "
                                 f"{_show(trained)}")
        return torch.tensor(trained, dtype=torch.float32).double()
    n = _field(config, "num_train_timesteps", 1000, "positive integer")
    b0 = _field(config, "beta_start", 1e-4, "number")
    b1 = _field(config, "beta_end", 0.02, "number")
    kind = config.get("beta_schedule", "linear")
    f32 = torch.float32
    if kind == "linear":
        betas = torch.linspace(b0, b1, n, dtype=f32)
    elif kind == "scaled_linear":
        betas = torch.linspace(b0**0.5, b1**0.5, n, dtype=f32) ** 2
    elif kind == "squaredcos_cap_v2":
        betas = cosine_betas(n).to(f32)
    elif kind == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6, 6, n)) * (b1 - b0) + b0
    else:
        raise UserInputError(f"beta_schedule {_show(kind)} has no VP equivalent here; supported: "
                             f"linear, scaled_linear, squaredcos_cap_v2, sigmoid")
    return betas.double()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _show(v: Any, limit: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def _field(config: Mapping[str, Any], key: str, default: Any, kind: str) -> Any:
    """``config[key]`` (``default`` when absent), checked to be a finite ``number`` or a
    ``positive integer``.

    Raises:
        UserInputError: naming ``key``, what it must be and the value found.
    """
    value = config.get(key, default)
    ok = _is_number(value) and (kind == "number" or (isinstance(value, int) and value >= 1))
    if not ok:
        raise UserInputError(f"{key} must be a {kind}, got {_show(value)}")
    return value


def sde_from_scheduler_config(config: Mapping[str, Any]) -> VPSDE:
    """The :class:`VPSDE` (``schedule="table"``, ``T = 1``) of a diffusers scheduler config.

    Raises:
        UserInputError: a scheduler with no VP equivalent (VE, flow matching, ...).
    """
    name = config.get("_class_name", "DDPMScheduler")
    if name not in VP_SCHEDULERS:
        raise UserInputError(f"scheduler {name} has no VP-SDE equivalent; supported: "
                             f"{', '.join(VP_SCHEDULERS[:3])} and other DDPM-chain schedulers")
    return VPSDE(schedule="table", betas=diffusers_betas(config))


def _sampler_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """The sampler options the scheduler config implies (see the module docstring)."""
    out: dict[str, Any] = {}
    if config.get("thresholding"):
        out["threshold"] = float(_field(config, "dynamic_thresholding_ratio", 0.995, "number"))
        out["clip_sample"] = float(_field(config, "sample_max_value", 1.0, "number"))
    elif config.get("clip_sample", config.get("_class_name") in ("DDPMScheduler", "DDIMScheduler")):
        out["clip_sample"] = float(_field(config, "clip_sample_range", 1.0, "number"))
    variance_type = config.get("variance_type", "fixed_small")
    variance = VARIANCE_TYPES.get(variance_type) if isinstance(variance_type, str) else None
    if variance is not None:
        out["variance"] = variance
    return out


class DiffusersEpsModel(nn.Module):
    """A diffusers ``UNet2DModel`` as an sde-gen eps-model ``model(x, t)`` (continuous ``t``).

    Args:
        unet: the network, called ``unet(x, timestep).sample``.
        sde: the :class:`VPSDE` of its scheduler (``schedule="table"``).
        prediction_type: diffusers' ``epsilon``, ``v_prediction`` or ``sample``.
        learned_variance: the UNet has twice the channels, the second half diffusers'
            ``learned_range`` output in ``[-1, 1]`` (``v = (out + 1) / 2`` in [Nichol21] Eq. 15).
        sampler_defaults: sampler options from the scheduler config.

    Shapes: ``x (B, C, H, W)``, ``t (B,)`` -> ``(B, C, H, W)``.
    """

    num_classes = None

    def __init__(self, unet: nn.Module, sde: VPSDE, *, prediction_type: str = "epsilon",
                 learned_variance: bool = False,
                 sampler_defaults: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise UserInputError(f"prediction_type {prediction_type!r} is not supported; choose "
                                 f"one of {', '.join(PREDICTION_TYPES)}")
        self.unet, self.sde, self.prediction_type = unet, sde, prediction_type
        self.prediction = PREDICTION_TYPES[prediction_type]
        self.learn_variance = bool(learned_variance)
        self.sampler_defaults = dict(sampler_defaults or {})
        cfg = unet.config
        self.image_shape = (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """diffusers' timestep of continuous ``t``: ``t N / T - 1`` in ``[0, N - 1]``, float64,
        rounded within 1e-3 of an integer (the inverse of ``VPSDE.index_to_time``)."""
        k = (t.to(torch.float64) * (self.sde.N / self.sde.T) - 1).clamp(0, self.sde.N - 1)
        r = torch.round(k)
        return torch.where((k - r).abs() < 1e-3, r, k)

    def _net(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        weights = next(self.unet.parameters())
        out = self.unet(x.to(weights.dtype), self.timestep(t).to(weights.dtype)).sample
        return out.to(x.dtype)

    def eps_and_variance(
        self, x: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(eps_hat, v)``; ``v`` ([Nichol21] Eq. 15) only for a learned-variance UNet."""
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise UserInputError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        out = self._net(x, t)
        v = None
        if self.learn_variance:
            out, raw = out.chunk(2, dim=1)
            v = (raw + 1) / 2  # diffusers' learned_range: frac = (out + 1) / 2
        alpha_t, sigma_t = (c.to(x.dtype) for c in self.sde.marginal_coeffs(t.to(torch.float64)))
        if self.prediction == "x0":
            out = x0_to_eps(x, out, alpha_t, sigma_t)
        elif self.prediction == "v":
            out = v_to_eps(x, out, alpha_t, sigma_t)
        return out, v

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_hat(x, t)."""
        return self.eps_and_variance(x, t)[0]


def _read_json(path: Path) -> dict:
    """The JSON object in ``path``; a one-line error for an unreadable file, malformed JSON or
    JSON that is not an object (a list, a number)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # also json.JSONDecodeError and UnicodeDecodeError
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserInputError(f"cannot read {path}: {reason}") from None
    if not isinstance(value, dict):
        raise UserInputError(f"{path} must hold a JSON object ({{...}}), got a "
                             f"{type(value).__name__}")
    return value


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder with a diffusers ``model_index.json`` or a UNet2DModel
    ``config.json``."""
    p = Path(path)
    if (p / "model_index.json").is_file():
        return True
    return (p / "config.json").is_file() and _read_json(p / "config.json").get(
        "_class_name") == "UNet2DModel"


def _locate(path: Path, scheduler: str | os.PathLike | Mapping | None
            ) -> tuple[Path, dict, str]:
    """The UNet folder and the scheduler config of a pipeline or UNet folder, and where that
    config came from (for messages)."""
    if not path.is_dir():
        raise UserInputError(f"{path} is not a folder (a diffusers pipeline has model_index.json)")
    if (path / "model_index.json").is_file():
        index = _read_json(path / "model_index.json")
        unet = index.get("unet")
        if unet is None or not (path / "unet").is_dir():
            raise UserInputError(f"{path} is a diffusers pipeline without a unet/ folder "
                                 f"({index.get('_class_name', 'unknown pipeline')})")
        if isinstance(unet, list) and len(unet) == 2 and unet[1] != "UNet2DModel":
            raise UserInputError(f"{path}: {unet[1]} is not supported (only unconditional "
                                 f"UNet2DModel pipelines)")
        unet_dir = path / "unet"
        if scheduler is None:
            scheduler = path / "scheduler"
    elif is_diffusers_folder(path):
        unet_dir = path
        if scheduler is None and (path / "scheduler_config.json").is_file():
            scheduler = path / "scheduler_config.json"
        if scheduler is None:
            raise UserInputError(
                f"{path} is a UNet2DModel folder without a scheduler config: copy the pipeline's "
                f"scheduler_config.json into it, or use the whole pipeline folder (model_index."
                f"json, unet/, scheduler/)")
    else:
        raise UserInputError(f"{path} is not a diffusers pipeline (no model_index.json, nor a "
                             f"UNet2DModel config.json)")
    if isinstance(scheduler, Mapping):
        return unet_dir, dict(scheduler), "the scheduler config"
    s = Path(scheduler)
    s = s / "scheduler_config.json" if s.is_dir() else s
    if not s.is_file():
        raise UserInputError(f"no scheduler config at {s}")
    return unet_dir, _read_json(s), str(s)


def load_diffusers(
    path: str | os.PathLike,
    *,
    scheduler: str | os.PathLike | Mapping[str, Any] | None = None,
    shape: tuple[int, int, int] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, SDE]:
    """Load a local diffusers pipeline folder (``model_index.json``, ``unet/``, ``scheduler/``)
    or a ``UNet2DModel`` folder plus a scheduler config, offline, as ``(model, sde)``.

    A flow-matching scheduler (``FlowMatchEulerDiscreteScheduler``, or UniPC / DPM-Solver++
    with ``prediction_type="flow_prediction"`` and ``use_flow_sigmas``) gives a
    :class:`~.diffusers_flow.DiffusersFlowModel` (velocity network) and a
    :class:`~sde_gen.flow_paths.FlowSDE` with the folder's static shift
    (:mod:`.diffusers_flow`); every other scheduler a DDPM chain, below.

    Args:
        path: the folder.
        scheduler: a scheduler folder, ``scheduler_config.json`` or config dict (default: the
            pipeline's ``scheduler/``, or ``scheduler_config.json`` beside a UNet's config).
        shape: the ``(C, H, W)`` the caller expects; a UNet of another size is an error.
        device: where the model goes (in eval mode, gradients off).

    Returns:
        ``(model, sde)``: a :class:`DiffusersEpsModel` (``model(x, t) -> eps``) and the
        :class:`VPSDE` whose discrete chain is the scheduler's; or, for a flow-matching
        scheduler, a :class:`~.diffusers_flow.DiffusersFlowModel` and its ``FlowSDE``.

    Raises:
        UserInputError: diffusers missing (the message names the extra), not a diffusers
            folder, a scheduler with no VP or flow equivalent, a flow option that cannot be
            honoured exactly (``use_dynamic_shifting``, ...), or a UNet that contradicts
            ``shape``.
    """
    path = Path(path)
    unet_dir, config, source = _locate(path, scheduler)
    flow = is_flow_config(config)
    try:
        sde = flow_sde_from_config(config) if flow else sde_from_scheduler_config(config)
        defaults = flow_sampler_defaults(config) if flow else _sampler_defaults(config)
    except UserInputError as e:
        raise UserInputError(f"{source}: {e}") from None
    unet_json = unet_dir / "config.json"
    unet_config = _read_json(unet_json)
    if unet_config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise UserInputError(f"{unet_dir}: {unet_config['_class_name']} is not supported (only "
                             f"UNet2DModel)")
    if unet_config.get("num_class_embeds") or unet_config.get("class_embed_type"):
        raise UserInputError(f"{unet_dir}: class-conditional UNets are not supported")
    try:
        c_in = _field(unet_config, "in_channels", 3, "positive integer")
        c_out = _field(unet_config, "out_channels", 3, "positive integer")
    except UserInputError as e:
        raise UserInputError(f"{unet_json}: {e}") from None
    size = unet_config.get("sample_size")
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 1):
        raise UserInputError(f"{unet_dir}: sample_size must be one positive integer (square "
                             f"images), got {_show(size)}")
    learned = config.get("variance_type") in ("learned", "learned_range")
    if c_out != c_in * (2 if learned else 1):
        raise UserInputError(f"{unet_dir}: out_channels={c_out} does not fit in_channels={c_in} "
                             f"with variance_type={config.get('variance_type', 'fixed_small')}")
    if shape is not None and tuple(shape) != (c_in, size, size):
        raise UserInputError(f"the UNet makes {c_in}x{size}x{size} images, not "
                             f"{'x'.join(map(str, shape))}")
    if config.get("variance_type") == "learned":
        raise UserInputError("variance_type=learned (log-variance output) is not supported; "
                             "learned_range is")
    if flow:
        model: nn.Module = DiffusersFlowModel(_load_unet(unet_dir), sde, sampler_defaults=defaults)
        model.to(device).eval().requires_grad_(False)
        return model, sde
    prediction_type = config.get("prediction_type", "epsilon")
    if not isinstance(prediction_type, str) or prediction_type not in PREDICTION_TYPES:
        raise UserInputError(f"{source}: prediction_type {_show(prediction_type)} is not "
                             f"supported; choose one of {', '.join(PREDICTION_TYPES)}")
    unet = _load_unet(unet_dir)
    model = DiffusersEpsModel(unet, sde, prediction_type=prediction_type,
                              learned_variance=learned, sampler_defaults=defaults)
    model.to(device).eval().requires_grad_(False)
    return model, sde


#: The weight files of a UNet folder that ``UNet2DModel.from_pretrained`` reads (one of them).
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "diffusion_pytorch_model.safetensors.index.json",
                "diffusion_pytorch_model.bin.index.json")


def _load_unet(unet_dir: Path) -> nn.Module:
    """``UNet2DModel.from_pretrained(unet_dir)`` offline, with diffusers' log silenced and a
    one-line :class:`UserInputError` for missing or unreadable weights, a ``config.json`` that
    diffusers cannot build, or weights that do not fit it."""
    diffusers = _require_diffusers()
    weights = next((unet_dir / f for f in WEIGHT_FILES if (unet_dir / f).is_file()), None)
    if weights is None:
        raise UserInputError(f"{unet_dir} has no UNet weights (expected {WEIGHT_FILES[0]} "
                             "beside its config.json)")
    if weights.suffix == ".safetensors":
        _check_safetensors(weights)
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # no "An error occurred ..." lines before ours
    try:
        unet, info = diffusers.UNet2DModel.from_pretrained(unet_dir, local_files_only=True,
                                                           output_loading_info=True)
    except Exception as e:  # diffusers raises OSError, ValueError, TypeError, RuntimeError, ...
        reason = _diffusers_reason(e)
        if reason.startswith(MISMATCH):
            raise UserInputError(f"the UNet weights {weights} do not fit {unet_dir / 'config.json'}"
                                 f": {reason[len(MISMATCH):]}") from None
        raise UserInputError(f"cannot load the UNet in {unet_dir} (its config.json and "
                             f"{weights.name}): {reason}") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
    for kind in ("missing", "unexpected"):  # diffusers only warns about these
        keys = info.get(f"{kind}_keys") or []
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > 3 else ""
            raise UserInputError(f"the UNet weights {weights} do not fit {unet_dir / 'config.json'}"
                                 f": {kind} keys {', '.join(keys[:3])}{more}")
    return unet


def _check_safetensors(path: Path) -> None:
    """Raise a one-line :class:`UserInputError` unless ``path`` is a complete safetensors file
    (its header parses and every tensor lies within the file)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)
    except Exception as e:  # SafetensorError, OSError
        raise UserInputError(f"cannot read the UNet weights {path}: "
                             f"{_diffusers_reason(e)} (a truncated or corrupt file?)") from None


def _diffusers_reason(e: BaseException) -> str:
    """The first sentence of a diffusers or safetensors error, without its advice."""
    text = " ".join(str(e).split()).split(". If you want")[0]
    return text[:240] or type(e).__name__


#: How diffusers begins the error for a weight whose shape differs from the config's.
MISMATCH = "Cannot load because "
