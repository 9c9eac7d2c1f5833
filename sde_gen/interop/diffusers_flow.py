"""diffusers flow-matching folders as an sde-gen ``(model, FlowSDE)`` pair.

Three scheduler configs describe a rectified-flow model ([Esser24] Sec. 3.1: ``x_t = (1 - t) x0
+ t eps``, the network predicts the velocity ``v = eps - x0``): ``FlowMatchEulerDiscreteScheduler``
(``shift``), and ``UniPCMultistepScheduler`` / ``DPMSolverMultistepScheduler`` with
``prediction_type="flow_prediction"`` and ``use_flow_sigmas=True`` (``flow_shift``). diffusers'
``sigma`` is the path's time ``t`` and the network gets ``timestep = sigma N`` (``N =
num_train_timesteps``), so the model here is ``v(x, t) = net(x, t N)``, unrounded (what
FlowMatchEuler feeds; UniPC and DPM-Solver in flow mode cast their timesteps to int64, i.e.
``floor(t N)``, a rounding of the time input that sde-gen does not copy). The path is
:class:`~sde_gen.flow_paths.FlowSDE` with ``N`` and ``grid_shift = shift`` (the ``shifted``
spacing, SD3's ``s t / (1 + (s - 1) t)``).

What is refused, each with one line naming the option, because sde-gen cannot reproduce it
exactly: ``use_dynamic_shifting`` (the shift depends on the image size at sampling time),
``shift_terminal``, ``invert_sigmas``, Karras / exponential / beta sigmas, ``stochastic_sampling``,
a UniPC ``disable_corrector`` or ``predict_x0=False``, DPM-Solver's ``algorithm_type`` other than
``dpmsolver++``, its ``heun`` solver type or learned variances, ``final_sigmas_type="sigma_min"``
and ``flow_prediction`` without ``use_flow_sigmas`` (or the reverse).

Refs: [Esser24] Sec. 3.1, Sec. 5.3.2 (shift); [Lipman23] Eq. (15) (velocity); [Liu23].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import UserInputError
from ..flow_paths import FlowSDE
from ..tensor_utils import append_dims

__all__ = ["FLOW_SCHEDULERS", "DiffusersFlowModel", "default_t_min", "flow_sde_from_config",
           "is_flow_config"]

#: diffusers schedulers that can describe a flow-matching model.
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "UniPCMultistepScheduler",
                   "DPMSolverMultistepScheduler")
#: Options that must keep their default (``False`` / ``None``) for the mapping to be exact.
_OFF = ("use_dynamic_shifting", "shift_terminal", "invert_sigmas", "use_karras_sigmas",
        "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "stochastic_sampling")
_WHY = {"use_dynamic_shifting": "its shift depends on the image size at sampling time (mu); "
                                "save the folder with a static shift instead",
        "stochastic_sampling": "a re-noising sampler sde-gen does not have"}


def is_flow_config(config: Mapping[str, Any]) -> bool:
    """Whether a scheduler config describes a flow-matching model (see the module docstring)."""
    name = config.get("_class_name")
    flow_mode = config.get("prediction_type") == "flow_prediction" or bool(
        config.get("use_flow_sigmas"))
    return name == FLOW_SCHEDULERS[0] or (name in FLOW_SCHEDULERS and flow_mode)


def _shift_of(config: Mapping[str, Any]) -> float:
    key = "shift" if config.get("_class_name") == FLOW_SCHEDULERS[0] else "flow_shift"
    value = config.get(key, 1.0)
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            and value < float("inf")):
        raise UserInputError(f"{key} must be a positive number, got {value!r}")
    return float(value)


def _check(config: Mapping[str, Any]) -> None:
    """Refuse, in one line naming the option, what the FlowSDE mapping cannot honour exactly."""
    name = config.get("_class_name")
    for key in _OFF:
        if config.get(key):
            why = _WHY.get(key, "sde-gen walks its own grids and cannot reproduce it exactly")
            raise UserInputError(f"{name}: {key}={config[key]!r} is not supported ({why})")
    if name == FLOW_SCHEDULERS[0]:
        return
    if config.get("prediction_type") != "flow_prediction" or not config.get("use_flow_sigmas"):
        raise UserInputError(f"{name}: a flow-matching folder needs prediction_type="
                             f"flow_prediction together with use_flow_sigmas=true, got "
                             f"prediction_type={config.get('prediction_type')!r}, "
                             f"use_flow_sigmas={config.get('use_flow_sigmas')!r}")
    if config.get("final_sigmas_type", "zero") != "zero":
        raise UserInputError(f"{name}: final_sigmas_type={config['final_sigmas_type']!r} is not "
                             f"supported (sde-gen ends with a denoise to sigma 0, or none: "
                             f"--no-denoise)")
    if name == "UniPCMultistepScheduler":
        if config.get("disable_corrector"):
            raise UserInputError(f"{name}: disable_corrector={config['disable_corrector']!r} is "
                                 f"not supported (sde-gen's UniC corrects every step or none)")
        if config.get("predict_x0", True) is not True:
            raise UserInputError(f"{name}: predict_x0=false (noise-prediction UniPC) is not "
                                 f"supported; sde-gen's UniPC is the data-prediction form")
    else:
        if config.get("algorithm_type", "dpmsolver++") != "dpmsolver++":
            raise UserInputError(f"{name}: algorithm_type={config['algorithm_type']!r} is not "
                                 f"supported (only dpmsolver++)")
        if config.get("solver_type", "midpoint") != "midpoint":
            raise UserInputError(f"{name}: solver_type={config['solver_type']!r} is not "
                                 f"supported (sde-gen's 2M is the midpoint form)")
        if config.get("variance_type"):
            raise UserInputError(f"{name}: variance_type={config['variance_type']!r} (a learned "
                                 f"variance) is not supported on the flow path")


def flow_sde_from_config(config: Mapping[str, Any]) -> FlowSDE:
    """The :class:`FlowSDE` of a flow-matching scheduler config: ``N = num_train_timesteps``,
    ``shift`` (``flow_shift``) as its grid shift and :func:`default_t_min` as its end time.

    Raises:
        UserInputError: an option the mapping cannot honour (see the module docstring).
    """
    _check(config)
    n = config.get("num_train_timesteps", 1000)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise UserInputError(f"num_train_timesteps must be an integer >= 2, got {n!r}")
    sde = FlowSDE(n, shift=_shift_of(config))
    sde.default_t_min = default_t_min(config)
    return sde


def default_t_min(config: Mapping[str, Any]) -> float:
    """The smallest nonzero sigma diffusers samples at: FlowMatchEuler's last inference sigma,
    ``shift(shift(1/N))`` for any step count (its ``set_timesteps`` spaces the once-shifted
    training sigmas and shifts again, so sde-gen's ``shifted`` grid with this ``t_min`` is
    diffusers' grid); for UniPC / DPM-Solver, whose last sigma depends on the step count, the
    training schedule's smallest, ``shift(1/N)``."""
    s, u = _shift_of(config), 1.0 / config.get("num_train_timesteps", 1000)

    def shift(v: float) -> float:
        return s * v / (1 + (s - 1) * v)

    return shift(shift(u)) if config.get("_class_name") == FLOW_SCHEDULERS[0] else shift(u)


def sampler_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """UniPC / DPM-Solver's dynamic thresholding of x0 as sde-gen's ``threshold`` and
    ``clip_sample`` (``sample_max_value``); nothing else carries over."""
    if not config.get("thresholding"):
        return {}
    return {"threshold": float(config.get("dynamic_thresholding_ratio", 0.995)),
            "clip_sample": float(config.get("sample_max_value", 1.0))}


class DiffusersFlowModel(nn.Module):
    """A diffusers velocity network on the flow path as an sde-gen model: ``model(x, t) -> eps``
    and ``model.predict(x, t) -> (eps, x0)``, finite at ``t = 1`` where ``alpha = 0``.

    With ``v = net(x, t N)`` ([Esser24] Sec. 3.1, ``v = eps - x0``) and ``x = (1 - t) x0 + t eps``:
    ``x0 = x - t v``, ``eps = x + (1 - t) v``.

    Args:
        net: the network, called ``net(x, timestep).sample``.
        sde: its :class:`FlowSDE` (``N`` scales the timestep).
        sampler_defaults: sampler options from the scheduler config.

    Shapes: ``x (B, C, H, W)``, ``t (B,)`` -> ``(B, C, H, W)``.
    """

    num_classes = None
    learn_variance = False
    predicts_x0 = True

    def __init__(self, net: nn.Module, sde: FlowSDE, *,
                 sampler_defaults: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.unet, self.sde = net, sde
        self.sampler_defaults = dict(sampler_defaults or {})
        cfg = net.config
        self.image_shape = (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """diffusers' timestep of time ``t``: ``sigma N`` with ``sigma = t``."""
        return t.to(torch.float64) * self.sde.N

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's ``v = eps - x0`` at ``(x, t)``, in ``x``'s dtype."""
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise UserInputError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        weights = next(self.unet.parameters())
        return self.unet(x.to(weights.dtype), self.timestep(t).to(weights.dtype)).sample.to(x.dtype)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eps, x0)`` from one network call. Refs: [Lipman23] Eq. (15) with alpha = 1 - t."""
        v = self.velocity(x, t)
        tc = append_dims(t.to(x.dtype), x.ndim)
        return x + (1 - tc) * v, x - tc * v

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_hat(x, t)."""
        return self.predict(x, t)[0]
