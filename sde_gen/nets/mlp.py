"""Residual MLP eps-network for low-dimensional data."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UserInputError
from .embeddings import SinusoidalEmbedding


class _ResidualBlock(nn.Module):
    """``h + W2 act(W1 act(norm(h) (1 + s) + b))`` with FiLM ``(s, b)`` from the noise embedding.

    Without FiLM the embedding is added after ``W1`` (DDPM's residual block). ``W2`` starts at
    zero, so every block starts as the identity.

    Refs: [Perez18] FiLM; [Dhariwal21] Sec. 3 (adaptive group normalization).
    """

    def __init__(self, width: int, emb_dim: int, *, film: bool) -> None:
        super().__init__()
        self.film = film
        self.norm = nn.LayerNorm(width, elementwise_affine=not film)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, 2 * width if film else width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.SiLU()
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        e = self.emb(emb)
        if self.film:
            scale, shift = e.chunk(2, dim=1)
            r = self.fc1(self.act(self.norm(h) * (1 + scale) + shift))
        else:
            r = self.fc1(self.act(self.norm(h))) + e
        return h + self.fc2(self.act(r))


class FourierFeatures(nn.Module):
    """Random Fourier features ``[x, sin(2 pi x B), cos(2 pi x B)]``, ``B ~ N(0, scale^2)`` fixed.

    Low-dimensional inputs mapped this way let an MLP fit fine detail ([Tancik20] Sec. 5). ``B``
    is a persistent buffer, so it travels with checkpoints.
    """

    def __init__(self, dim: int, n: int, scale: float) -> None:
        super().__init__()
        self.register_buffer("B", scale * torch.randn(dim, n))
        self.out_dim = dim + 2 * n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = 2 * math.pi * x @ self.B.to(x.dtype)
        return torch.cat([x, torch.sin(p), torch.cos(p)], dim=1)


class MLP(nn.Module):
    """``net(x, c_noise, y=None)``: residual MLP with a sinusoidal embedding of the noise level.

    The embedding is of ``time_scale * c_noise``: 1000 for the time ``t`` in ``[0, 1]`` (DDPM's
    index range), about 1 for the log-SNR (:class:`~sde_gen.parameterization.ScoreModel`'s
    ``noise_cond``). The output layer starts at zero.

    With ``num_classes`` the network is class-conditional: a learned embedding of the label is
    added to the noise embedding, as in guided-diffusion's U-Net ([Dhariwal21]); label
    ``num_classes`` is the null label ("no class", used when ``y`` is None), which label
    dropout trains for classifier-free guidance ([Ho22] Sec. 3.2).

    Args:
        dim: data dimension D.
        width: hidden width.
        depth: number of residual blocks.
        emb_dim: size of the noise embedding.
        time_scale: multiplier of ``c_noise`` before the sinusoidal features.
        film: FiLM conditioning (scale and shift) instead of an additive embedding.
        fourier_features: random Fourier features of the input (0: the raw input only).
        fourier_scale: standard deviation of their frequencies.
        out_dim: output size (default D; 2 D for a learned variance, [Nichol21] Sec. 3.1).
        num_classes: number of classes for class conditioning (``None``: unconditional).

    Shapes: ``x (B, D)``, ``c_noise (B,)``, ``y (B,)`` int64 in ``0..num_classes`` or None ->
    ``(B, out_dim)``.
    """

    def __init__(self, dim: int = 2, *, width: int = 256, depth: int = 3, emb_dim: int = 128,
                 time_scale: float = 1000.0, film: bool = True, fourier_features: int = 0,
                 fourier_scale: float = 1.0, out_dim: int | None = None,
                 num_classes: int | None = None) -> None:
        super().__init__()
        out_dim = dim if out_dim is None else out_dim
        if min(dim, width, depth, emb_dim, out_dim) < 1 or fourier_features < 0:
            raise UserInputError("MLP sizes must be positive")
        if num_classes is not None and num_classes < 1:
            raise UserInputError(f"num_classes must be positive, got {num_classes}")
        self.dim, self.num_classes = dim, num_classes
        self.time_embed = nn.Sequential(
            SinusoidalEmbedding(emb_dim, scale=time_scale), nn.Linear(emb_dim, emb_dim), nn.SiLU(),
            nn.Linear(emb_dim, emb_dim), nn.SiLU(),
        )
        self.features = FourierFeatures(dim, fourier_features, fourier_scale) \
            if fourier_features else None
        self.inp = nn.Linear(self.features.out_dim if self.features else dim, width)
        self.blocks = nn.ModuleList(_ResidualBlock(width, emb_dim, film=film) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, out_dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        # Built last, so the other weights start as an unconditional MLP's of the same seed.
        self.label_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise UserInputError(f"MLP expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        emb = self.time_embed(c_noise)
        if self.label_embed is not None:
            if y is None:  # the null label
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_embed(y)
        elif y is not None:
            raise UserInputError("this MLP is unconditional (num_classes=None); it takes no labels")
        h = self.inp(self.features(x) if self.features is not None else x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
