"""Clipping and dynamic thresholding of the x0 prediction, as diffusers' schedulers do it.

Image models trained on data in ``[-1, 1]`` may predict an ``x0_hat`` outside it at high noise;
diffusers' DDPM and DDIM schedulers clip it (``clip_sample=True``, ``clip_sample_range=1``, the
value a saved DDPM pipeline carries) or threshold it dynamically ([Saharia22] Sec. 3.3:
``s = clamp(quantile(|x0_hat|, p), 1, s_max)``, then ``x0_hat <- clamp(x0_hat, -s, s) / s``;
``thresholding=True``, ``dynamic_thresholding_ratio=p``, ``sample_max_value=s_max``).

The ``ancestral`` and ``ddim`` solvers take ``clip_sample`` and ``threshold`` options and apply
them where diffusers does (DDPM: the posterior mean from the processed x0; DDIM with
``use_clipped_model_output=False``: the processed x0, the model's own eps direction). The other
solvers that step on x0 (``dpm``, ``unipc``, ``deis``, ``ipndm``, ``heun``) take the same options,
and ``sample()`` applies them by wrapping the model (:func:`clip_x0_model`): eps is recomputed
from the processed x0, ``eps = (x_t - alpha_t x0) / sigma_t``, so the x0 such a solver forms is
exactly the processed one (diffusers' DPM-Solver++ and UniPC threshold the same x0). The score
solvers (``sde``, ``pc``, ``ode``) integrate the model's score and take neither option.

Refs: [Saharia22] Sec. 3.3 (dynamic thresholding); [Ho20] Eq. (7).
"""

from __future__ import annotations

import torch

from ..parameterization import EpsModel, eps_to_x0, model_prediction, predicts_x0, x0_to_eps
from ..sde import SDE


def process_x0(
    x0: torch.Tensor, *, clip_sample: float | None = None, threshold: float | None = None
) -> torch.Tensor:
    """``x0`` clipped to ``[-clip_sample, clip_sample]`` or, with ``threshold = p``, dynamically
    thresholded per example with ``s_max = clip_sample`` (no upper bound if ``None`` or 0).

    ``None`` or 0 for both: ``x0`` unchanged. Thresholding takes precedence, as in diffusers.

    Shapes: ``x0: (B, *D)``. Refs: [Saharia22] Sec. 3.3.
    """
    if threshold:
        flat = x0.reshape(x0.shape[0], -1).abs()
        dtype = flat.dtype if flat.dtype in (torch.float32, torch.float64) else torch.float32
        s = torch.quantile(flat.to(dtype), threshold, dim=1).to(x0.dtype)
        s = s.clamp(min=1, max=clip_sample or None)  # diffusers' sample_max_value
        s = s.reshape(-1, *([1] * (x0.ndim - 1)))
        return torch.clamp(x0, -s, s) / s
    if clip_sample:
        return x0.clamp(-clip_sample, clip_sample)
    return x0


def clip_x0_model(
    model: EpsModel, sde: SDE, *, clip_sample: float | None = None,
    threshold: float | None = None,
) -> EpsModel:
    """``model`` with eps recomputed from the processed x0 (:func:`process_x0`) at the continuous
    ``marginal_coeffs``: clipping for solvers that do not form x0 themselves. ``model`` itself
    when both options are off. The options are checked by the solver spec
    (:func:`~.spec.x0_options`).

    Shapes: ``x (B, *D)``, ``t (B,)``.
    """
    if not clip_sample and not threshold:
        return model
    return _Clipped(model, sde, clip_sample, threshold)


class _Clipped:
    """:func:`clip_x0_model`'s model: eps from the processed x0; ``predict`` gives both (with the
    model's own x0 where it has one, as at a flow path's ``T``)."""

    def __init__(self, model: EpsModel, sde: SDE, clip_sample: float | None,
                 threshold: float | None) -> None:
        self.model, self.sde = model, sde
        self.clip_sample, self.threshold = clip_sample, threshold

    @property
    def predicts_x0(self) -> bool:
        return predicts_x0(self.model)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_t, sigma_t = self.sde.marginal_coeffs(t)
        if predicts_x0(self.model):
            _, x0 = model_prediction(self.model, x, t)
        else:
            x0 = eps_to_x0(x, self.model(x, t), alpha_t, sigma_t)
        x0 = process_x0(x0, clip_sample=self.clip_sample, threshold=self.threshold)
        return x0_to_eps(x, x0, alpha_t, sigma_t), x0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_t, sigma_t = self.sde.marginal_coeffs(t)
        x0 = eps_to_x0(x, self.model(x, t), alpha_t, sigma_t)
        x0 = process_x0(x0, clip_sample=self.clip_sample, threshold=self.threshold)
        return x0_to_eps(x, x0, alpha_t, sigma_t)
