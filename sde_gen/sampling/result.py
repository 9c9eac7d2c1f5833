"""The sampler result and the model wrapper that counts function evaluations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..parameterization import learned_variance_fn

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SampleResult:
    """Samples and how they were made.

    Attributes:
        x: final samples ``(B, *D)`` (denoised if requested).
        x_mean: the last step's noise-free mean ``(B, *D)`` (equals ``x`` for deterministic solvers).
        nfe: batched model calls actually made, counted by :class:`CountingModel`.
        ts: the time grid walked, decreasing, ``(steps + 1,)``.
        trajectory: optional ``(steps + 1, B, *D)`` states, when requested.
    """

    x: torch.Tensor
    x_mean: torch.Tensor
    nfe: int
    ts: torch.Tensor
    trajectory: torch.Tensor | None = None


class CountingModel:
    """Wraps ``model(x, t)`` and counts calls; the count is the reported NFE."""

    def __init__(self, model: EpsModel) -> None:
        self.model, self.nfe = model, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.model(x, t)

    @property
    def learn_variance(self) -> bool:
        """Whether the wrapped model learns its reverse variance ([Nichol21] Eq. 15)."""
        return bool(getattr(self.model, "learn_variance", False))

    def eps_and_variance(self, x: torch.Tensor, t: torch.Tensor):
        """The wrapped model's ``(eps, v)``, counted as one call."""
        fn = learned_variance_fn(self.model)
        self.nfe += 1
        return fn(x, t)
