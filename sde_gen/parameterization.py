"""The one place where the network output becomes eps, score or x0.

The package-wide model contract is a callable ``model(x, t) -> eps_hat`` with ``t`` a ``(B,)``
tensor of continuous SDE time. With ``x_t = alpha_t x0 + sigma_t eps``:

- score ``s = -eps / sigma_t``                                   [Song21] Eq. (7) with DSM target
- denoiser ``x0_hat = (x_t - sigma_t eps) / alpha_t``            (Tweedie's formula)
- velocity ``v = alpha_t eps - sigma_t x0``                       [Salimans22] Eq. (7), generalized

Refs: [Ho20] Eq. (11); [Karras22] Table 1 (c_in).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .sde import SDE
from .tensor_utils import append_dims

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PREDICTIONS = ("eps", "x0", "v")


def eps_to_score(eps: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
    """``score = -eps / sigma_t``. Shapes: ``eps (B, *D)``, ``sigma_t (B,)``."""
    return -eps / append_dims(sigma_t, eps.ndim)


def score_to_eps(score: torch.Tensor, sigma_t: torch.Tensor) -> torch.Tensor:
    """``eps = -sigma_t score``, the inverse of :func:`eps_to_score`."""
    return -append_dims(sigma_t, score.ndim) * score


def eps_to_x0(
    x: torch.Tensor, eps: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor
) -> torch.Tensor:
    """``x0_hat = (x_t - sigma_t eps) / alpha_t``."""
    n = x.ndim
    return (x - append_dims(sigma_t, n) * eps) / append_dims(alpha_t, n)


def x0_to_eps(
    x: torch.Tensor, x0: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor
) -> torch.Tensor:
    """``eps = (x_t - alpha_t x0) / sigma_t``."""
    n = x.ndim
    return (x - append_dims(alpha_t, n) * x0) / append_dims(sigma_t, n)


def v_to_eps(
    x: torch.Tensor, v: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor
) -> torch.Tensor:
    """``eps = (alpha_t v + sigma_t x_t) / (alpha_t^2 + sigma_t^2)`` for ``v = alpha_t eps - sigma_t x0``."""
    n = x.ndim
    a, s = append_dims(alpha_t, n), append_dims(sigma_t, n)
    return (a * v + s * x) / (a**2 + s**2)


def score_fn(model: EpsModel, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap an eps-model as the score function ``s(x, t) = -model(x, t) / sigma_t``."""

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return eps_to_score(model(x, t), sde.marginal_coeffs(t)[1])

    return score


def denoise_fn(model: EpsModel, sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap an eps-model as the Tweedie denoiser ``x0_hat(x, t)``."""

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_t, sigma_t = sde.marginal_coeffs(t)
        return eps_to_x0(x, model(x, t), alpha_t, sigma_t)

    return denoise


class ScoreModel(nn.Module):
    """An eps-model built from a network ``net(x_in, t)`` that knows nothing about SDEs.

    The network sees the input scaled to unit variance, ``x_in = x_t / sqrt(alpha_t^2 s_d^2 +
    sigma_t^2)`` ([Karras22] ``c_in``; the identity for VP with unit-variance data, essential for
    VE where ``sigma_t`` reaches 50), and the continuous time ``t`` itself; how it embeds ``t`` is
    the network's business. Its raw output is read as eps, x0 or v (``prediction``) and converted
    to eps here. ``forward`` returns eps; ``score`` and ``denoise`` give the other two views.
    The module never changes train/eval mode.

    Args:
        net: ``net(x_in, t) -> output`` of the shape of ``x``.
        sde: the forward SDE whose ``marginal_coeffs`` define the conversions.
        prediction: what the network predicts: ``"eps"`` (default), ``"x0"`` or ``"v"``.
        sigma_data: data standard deviation used in the input scaling.
    """

    def __init__(
        self, net: nn.Module, sde: SDE, *, prediction: str = "eps", sigma_data: float = 1.0
    ) -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.net, self.sde, self.prediction, self.sigma_data = net, sde, prediction, sigma_data

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_hat(x, t). Shapes: ``x (B, *D)``, ``t (B,)`` -> ``(B, *D)``."""
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        alpha_t, sigma_t = self.sde.marginal_coeffs(t)
        c_in = torch.rsqrt(alpha_t**2 * self.sigma_data**2 + sigma_t**2)
        out = self.net(x * append_dims(c_in, x.ndim).to(x.dtype), t)
        if self.prediction == "eps":
            return out
        if self.prediction == "x0":
            return x0_to_eps(x, out, alpha_t, sigma_t)
        return v_to_eps(x, out, alpha_t, sigma_t)

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Score ``-eps_hat / sigma_t``."""
        return eps_to_score(self(x, t), self.sde.marginal_coeffs(t)[1])

    def denoise(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Tweedie estimate of x0."""
        alpha_t, sigma_t = self.sde.marginal_coeffs(t)
        return eps_to_x0(x, self(x, t), alpha_t, sigma_t)
