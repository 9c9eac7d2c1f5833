"""The sampler result and the per-step callback type (the model wrapper that counts calls is
:class:`~sde_gen.parameterization.CountingModel`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

#: ``callback(k, x, x_mean)`` after grid interval ``k``: the state at ``ts[k + 1]`` and its
#: noise-free mean (equal to ``x`` for deterministic solvers).
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class SampleResult:
    """Samples and how they were made.

    Attributes:
        x: final samples ``(B, *D)`` (denoised if requested).
        x_mean: the last step's noise-free mean ``(B, *D)`` (equals ``x`` for deterministic
            solvers).
        nfe: batched model calls actually made, counted by :class:`CountingModel`.
        ts: the time grid walked, decreasing, ``(steps + 1,)``.
        trajectory: optional ``(steps + 1, B, *D)`` states on ``ts``, when requested.

    A diverged run (a NaN-weight model, an unstable solver) is not an error of :func:`sample`:
    check :attr:`n_nonfinite` (the ``sde-gen sample`` command refuses to write such samples).
    """

    x: torch.Tensor
    x_mean: torch.Tensor
    nfe: int
    ts: torch.Tensor
    trajectory: torch.Tensor | None = None

    @property
    def n_nonfinite(self) -> int:
        """How many of the ``B`` samples have a NaN or infinite entry (0 for a healthy run).

        Computed on access (one reduction and one device synchronisation)."""
        return count_nonfinite(self.x)


def count_nonfinite(x: torch.Tensor) -> int:
    """How many examples of ``x (B, *D)`` have a NaN or infinite entry."""
    return int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1).sum())
