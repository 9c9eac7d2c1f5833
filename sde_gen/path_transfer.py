"""One model on any path: a model trained on one Gaussian path, used on another.

Every path here is ``x_t = alpha_t x0 + sigma_t eps``, so a state is determined by the scaled
state ``y = x / alpha`` and the noise level ``sigma~ = sigma / alpha`` (equivalently the
log-SNR ``lambda = -log sigma~``), which every path shares ([Karras22] Eq. 4; [Kingma21]
Sec. 3): at time ``t`` of a target path, the trained path's time ``s`` with the same log-SNR and
the scale ``c = alpha_trained(s) / alpha_target(t)`` give

    eps_target(x, t) = eps_trained(c x, s),        x0_target(x, t) = x0_trained(c x, s),

and the probability-flow ODE of one path maps onto the other's (in ``(y, sigma~)`` both are
``dy/dsigma~ = eps``), so their endpoints agree to solver tolerance. A model knows only the
noise levels it was trained on: the target times it covers are those whose log-SNR lies in the
trained path's ``[lambda(T), lambda(t_min)]`` (a VP model on the flow path starts below the flow
path's ``T``, where ``alpha = 0``; a flow model covers every VP time).

Refs: [Karras22] Sec. 2 (Eq. 4); [Kingma21] Sec. 3 (invariance to the noise schedule);
[Albergo23] (one interpolant, many paths).
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import UserInputError
from .parameterization import EpsModel, model_name, model_prediction, predicts_x0
from .sde import SDE
from .tensor_utils import append_dims

__all__ = ["OnPath", "on_path"]


def _scaled(source: SDE, dest: SDE, x: torch.Tensor, t: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c x, s)``: ``dest``'s state and time with the log-SNR of ``source`` at ``t``,
    ``c = alpha_dest(s) / alpha_source(t) = sigma_dest(s) / sigma_source(t)`` (the ratio of
    the larger pair, finite where alpha or sigma vanishes)."""
    t64 = t.to(torch.float64)
    s = dest.t_from_log_snr(source.log_snr(t64)).clamp(0, dest.T)
    a_src, s_src = source.marginal_coeffs(t64)
    a_dst, s_dst = dest.marginal_coeffs(s)
    use_alpha = a_src >= s_src
    scale = torch.where(use_alpha, a_dst / torch.where(use_alpha, a_src, 1.0),
                        s_dst / torch.where(use_alpha, 1.0, s_src))
    return append_dims(scale.to(x.dtype), x.ndim) * x, s.to(t.dtype)


class OnPath:
    """``model(x, t) -> eps`` of ``model`` (trained on ``trained``) for the path ``target``.

    Attributes:
        t_max, t_min: the target times this model covers (the trained path's log-SNR range
            mapped onto the target path), ``t_max <= target.T``.
        start_scale, start_std: the start at ``t_max``: the target's own prior when ``t_max``
            is its ``T`` (scale 1), else a prior draw of ``trained`` times ``start_scale``
            (standard deviation ``start_std``).
    """

    def __init__(self, model: EpsModel, trained: SDE, target: SDE, *,
                 t_min: float | None = None) -> None:
        self.model, self.trained, self.target = model, trained, target
        ends = torch.tensor([trained.T, trained.default_t_min if t_min is None else t_min],
                            dtype=torch.float64)
        lam = trained.log_snr(ends)
        t = target.t_from_log_snr(lam).clamp(0, target.T)
        self.t_max = float(target.T) if bool(lam[0] <= target.log_snr(
            torch.tensor([target.T], dtype=torch.float64))[0]) else float(t[0])
        self.t_min = max(float(t[1]), float(target.default_t_min))  # inside both ranges
        if self.t_max == float(target.T):  # the target's own prior is inside the trained range
            self.start_scale, self.start_std = 1.0, float(target.prior_std)
        else:  # the trained prior at its T, carried to t_max
            one = torch.ones(1, 1, dtype=torch.float64)
            mapped, _ = _scaled(trained, target, one, ends[:1])
            self.start_scale = float(mapped)
            self.start_std = self.start_scale * float(trained.prior_std)

    @property
    def predicts_x0(self) -> bool:
        return predicts_x0(self.model)

    @property
    def num_classes(self) -> Any:
        return getattr(self.model, "num_classes", None)

    def _map(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The trained path's state and time for the target's ``(x, t)``."""
        return _scaled(self.target, self.trained, x, t)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x_s, s = self._map(x, t)
        return self.model(x_s, s)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_s, s = self._map(x, t)
        return model_prediction(self.model, x_s, s)


def on_path(model: EpsModel, trained: SDE, target: SDE, *,
            t_min: float | None = None) -> OnPath:
    """``model``, trained on the path ``trained``, as an eps-model of the path ``target``.

    Sample it on ``target`` between :attr:`OnPath.t_max` and :attr:`OnPath.t_min` (the noise
    levels it was trained on), starting from ``start_scale`` times a prior draw of
    ``trained``; the probability-flow endpoints equal those of ``trained`` to solver tolerance.

    Raises:
        UserInputError: either SDE is not an SDE of this package, or their noise-level ranges
            do not overlap.
    """
    for name, sde in (("trained", trained), ("target", target)):
        if not isinstance(sde, SDE):
            raise UserInputError(f"{name} must be an SDE (sde_gen.sde.SDES), got "
                                 f"{type(sde).__name__}")
    out = OnPath(model, trained, target, t_min=t_min)
    if not out.t_min < out.t_max:
        raise UserInputError(f"the noise levels of {type(trained).__name__} and "
                             f"{type(target).__name__} do not overlap; {model_name(model)} "
                             f"cannot be used on the target path")
    return out
