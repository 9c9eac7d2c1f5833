"""Residual MLP eps-network for low-dimensional data."""

from __future__ import annotations

import torch
from torch import nn

from .embeddings import SinusoidalEmbedding


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, emb_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        r = self.fc1(self.act(self.norm(h))) + self.emb(emb)
        return h + self.fc2(self.act(r))


class MLP(nn.Module):
    """``net(x, t)``: residual MLP with a sinusoidal time embedding (of ``1000 t``), SiLU, LayerNorm.

    Args:
        dim: data dimension D.
        width: hidden width.
        depth: number of residual blocks.
        emb_dim: size of the time embedding.

    Shapes: ``x (B, D)``, ``t (B,)`` -> ``(B, D)``.
    """

    def __init__(self, dim: int = 2, *, width: int = 256, depth: int = 3, emb_dim: int = 128) -> None:
        super().__init__()
        if min(dim, width, depth, emb_dim) < 1:
            raise ValueError("MLP sizes must be positive")
        self.dim = dim
        self.time_embed = nn.Sequential(
            SinusoidalEmbedding(emb_dim), nn.Linear(emb_dim, emb_dim), nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_ResidualBlock(width, emb_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        emb = self.time_embed(t)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
