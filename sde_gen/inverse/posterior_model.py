"""The guided model ``eps(x_t | y)``: any registered solver samples ``x0 | y`` with it.

By Tweedie's formula a method's estimate ``x0_g`` of ``E[x0 | x_t, y]`` is the posterior score
``grad log p(x_t | y) = (alpha x0_g - x_t) / sigma^2`` ([Chung23] Eq. (5)-(6): the prior score
plus the likelihood score), so the eps a solver needs is

    eps(x_t | y) = (x_t - alpha x0_g) / sigma = eps(x_t) - sigma g,

``g`` the method's likelihood score (:func:`~.guidance.guided_x0`). Wrapped this way, DPS's
likelihood step, PiGDM and MMPS run on every solver of :data:`~sde_gen.sampling.SOLVERS` (ODE,
SDE, multistep), not only on the DDPM kernel of :func:`~.restore.restore`: on Gaussian data with
MMPS the posterior score is exact, so every convergent solver converges to ``p(x0 | y)``. DPS's
paper and constant steps correct the next *state* of DDPM's kernel and have no score form.

Refs: [Chung23] Eq. (5)-(6), (15); [Song23pgdm] Eq. (7); [Rozet24] Eq. (11).
"""

from __future__ import annotations

from typing import Any

import torch

from ..parameterization import model_prediction, predicts_x0
from ..sde import SDE
from .guidance import denoise_with_graph, guided_x0
from .operators import LinearOperator

__all__ = ["PosteriorModel"]


class PosteriorModel:
    """``model(x, t) -> eps(x_t | y)`` for the measurement ``y = op(x0) + noise_std z`` (see the
    module docstring). Each call is one forward pass of ``model`` plus the method's
    vector-Jacobian products (DPS, PiGDM: 1; MMPS: ``cg_steps + 1``); ``y`` is ``(B, *M)`` for
    the batch the solver walks. Where ``alpha_t = 0`` (a flow path's ``T``) ``p(y | x_t)`` is
    flat: the model's own prediction."""

    def __init__(self, model: Any, sde: SDE, y: torch.Tensor, op: LinearOperator, *,
                 noise_std: float, method: str, options: dict[str, Any]) -> None:
        self.model, self.sde, self.y, self.op = model, sde, y, op
        self.noise_std, self.method, self.options = noise_std, method, options

    @property
    def predicts_x0(self) -> bool:
        """Whether the wrapped model gives its own x0 (needed at a flow path's ``T``)."""
        return predicts_x0(self.model)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eps(x_t | y), x0_g)``."""
        alpha, sigma = (float(c) for c in self.sde.marginal_coeffs(t[:1].to(torch.float64)))
        if alpha == 0:
            with torch.no_grad():
                return model_prediction(self.model, x, t)
        with torch.enable_grad():
            x0, leaf, alpha, sigma = denoise_with_graph(self.model, self.sde, x, t)
            x0_g, _ = guided_x0(self.method, x0, leaf, alpha, sigma, self.y, self.op,
                                self.noise_std, self.options)
        return ((x - alpha * x0_g) / sigma).to(x.dtype), x0_g.to(x.dtype)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.predict(x, t)[0]
