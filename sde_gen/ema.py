"""Exponential moving average of model weights: fixed decay, warm-up, or EDM2's power EMA."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import UserInputError

EMA_MODES = ("fixed", "warmup", "power")


def power_ema_gamma(sigma_rel: float) -> float:
    """The power-EMA exponent with relative std ``sigma_rel`` ([Karras24] Eq. 3, solved for
    gamma)."""
    import numpy as np

    # sigma_rel^2 = (g + 1) / ((g + 2)^2 (g + 3)): the cubic s^2 g^3 + 7 s^2 g^2 + (16 s^2 - 1) g
    # + (12 s^2 - 1) = 0 has one root above -1.
    s2 = sigma_rel**2
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


class EMA:
    """``ema <- beta_k ema + (1 - beta_k) params`` after update ``k = 1, 2, ...``; buffers are
    copied.

    ``beta_k`` by mode:

    - ``fixed``: ``decay`` ([Ho20] App. B: 0.9999). The random initial weights keep the share
      ``decay^k`` of the average: 13% after 2000 steps at 0.999.
    - ``warmup``: ``min(decay, (1 + k) / (10 + k))``, the TensorFlow / score_sde warm-up, which
      forgets the initial weights quickly and reaches ``decay`` after ``~ 9 / (1 - decay)`` steps.
    - ``power``: ``(1 - 1/k)^(gamma + 1)`` ([Karras24] Eq. 1-2): an average over a fixed
      *fraction* of training, with relative width ``sigma_rel`` (``decay`` is not used). The first
      update copies the weights, so nothing of the initialization remains.

    The copy is put in eval mode (dropout off) and stays there: it is only ever used to sample.

    Args:
        model: the trained module.
        decay: EMA decay for ``fixed`` and ``warmup``.
        mode: ``"fixed"``, ``"warmup"`` or ``"power"``.
        sigma_rel: relative width of the power EMA (EDM2's default 0.05-0.10).
    """

    def __init__(self, model: nn.Module, decay: float, *, mode: str = "fixed",
                 sigma_rel: float = 0.1) -> None:
        if not 0.0 <= decay <= 1.0:
            raise UserInputError(f"EMA decay must be in [0, 1], got {decay}")
        if mode not in EMA_MODES:
            raise UserInputError(f"unknown EMA mode {mode!r}; choose one of {', '.join(EMA_MODES)}")
        if not 0.0 < sigma_rel < 0.28:
            raise UserInputError(f"sigma_rel must be in (0, 0.28), got {sigma_rel}")
        self.decay, self.mode = decay, mode
        self.gamma = power_ema_gamma(sigma_rel)
        self.num_updates = 0
        self.module = copy.deepcopy(model).requires_grad_(False).eval()

    def beta(self, k: int) -> float:
        """The decay of update ``k`` (1-based)."""
        if self.mode == "fixed":
            return self.decay
        if self.mode == "warmup":
            return min(self.decay, (1 + k) / (10 + k))
        return (1 - 1 / k) ** (self.gamma + 1)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        ema_p = list(self.module.parameters())
        p = [q.detach() for q in model.parameters()]
        torch._foreach_lerp_(ema_p, p, 1.0 - self.beta(self.num_updates))
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        """The averaged module's weights (loadable into the model; ``num_updates`` is kept
        apart)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict, *, num_updates: int = 0) -> None:
        self.module.load_state_dict(state)
        self.num_updates = int(num_updates)
