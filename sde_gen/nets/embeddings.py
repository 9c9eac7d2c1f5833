"""Time embeddings shared by the networks."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UserInputError


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal features of a scalar, ``[cos(s t w_k), sin(s t w_k)]``.

    ``scale`` maps continuous time ``t in [0, 1]`` onto DDPM's index range (1000), so the
    frequencies ``w_k = 10000^{-k/half}`` cover it as in [Ho20]'s U-Net.

    Refs: [Vaswani17] Sec. 3.5; [Ho20] Appendix B.
    """

    def __init__(self, dim: int, *, scale: float = 1000.0, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise UserInputError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = scale

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Shapes: ``(B,) -> (B, dim)``."""
        args = (self.scale * t.float())[:, None] * self.freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=1)
