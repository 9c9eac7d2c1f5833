"""DDPM / DDPM++-style U-Net ``net(x, t, y=None)`` for images; it knows nothing about SDEs.

Residual blocks (GroupNorm, SiLU, 3x3 convs, additive time/label embedding, dropout), self-
attention at chosen resolutions, strided-conv downsampling and nearest-neighbour upsampling, skip
connections at every block. Output layers are zero-initialized, so a fresh network predicts 0.

Time: ``t`` is embedded with sinusoidal features of ``time_scale * t`` (1000: DDPM's index range
for continuous VP/sub-VP time in [0, 1]); the network does not interpret it further, so a VE model
can pass ``t`` as well (its log-sigma is linear in t).

Refs: [Ho20] Appendix B (architecture); [Song21] Appendix H (DDPM++); [Nichol21] (class embedding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserInputError
from .embeddings import SinusoidalEmbedding


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with at most ``groups`` groups of at least 4 channels each.

    A group of one channel would subtract the per-channel time-embedding shift right after it is
    added, erasing the time dependence of small networks.
    """
    g = max(1, min(groups, channels // 4))
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """``x + conv(drop(act(norm(conv(act(norm(x))) + emb))))`` with a 1x1 skip on channel change."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.drop = _norm(c_out, groups), nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over the H*W positions (scaled_dot_product_attention)."""

    def __init__(self, channels: int, num_heads: int, groups: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise UserInputError(f"{channels} channels do not split into {num_heads} heads")
        self.norm, self.heads = _norm(channels, groups), num_heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, HW, c/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        if with_conv:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """``net(x, t, y=None) -> (B, C_out, H, W)``.

    Args:
        in_channels, out_channels: image channels (out defaults to in).
        ch: base channels; level ``i`` has ``ch * ch_mult[i]``.
        ch_mult: channel multipliers per resolution level.
        num_res_blocks: residual blocks per level.
        attn_resolutions: feature-map sizes (relative to ``resolution``) with self-attention.
        resolution: input size, to place the attention blocks.
        dropout: dropout in residual blocks.
        num_classes: enables class conditioning; label ``num_classes`` is the null label (used
            when ``y`` is None), so classifier-free guidance can be trained by label dropout.
        resamp_with_conv: strided-conv / conv-after-upsample resampling (else pooling only).
        num_heads: attention heads.
        groups: GroupNorm groups (reduced to a divisor of the channels for small nets).
        time_scale: the sinusoidal embedding sees ``time_scale * t``.

    Shapes: ``x (B, C, H, W)``, ``t (B,)``, ``y (B,)`` int64 or None.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        *,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (16,),
        resolution: int = 32,
        dropout: float = 0.1,
        num_classes: int | None = None,
        resamp_with_conv: bool = True,
        num_heads: int = 1,
        groups: int = 32,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        if min(in_channels, ch, num_res_blocks, resolution, len(ch_mult)) < 1:
            raise UserInputError("UNet sizes must be positive")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.factor = 2 ** (len(ch_mult) - 1)
        emb_dim = 4 * ch
        self.time_embed = nn.Sequential(
            SinusoidalEmbedding(ch, scale=time_scale), nn.Linear(ch, emb_dim), nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.label_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips, c, res = [ch], ch, resolution
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                blocks = [ResBlock(c, ch * mult, emb_dim, dropout, groups)]
                c = ch * mult
                if res in attn_resolutions:
                    blocks.append(AttnBlock(c, num_heads, groups))
                self.down.append(nn.ModuleList(blocks))
                skips.append(c)
            if level < len(ch_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(c, resamp_with_conv)]))
                skips.append(c)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, dropout, groups),
                                  AttnBlock(c, num_heads, groups),
                                  ResBlock(c, c, emb_dim, dropout, groups)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                blocks = [ResBlock(c + skips.pop(), ch * mult, emb_dim, dropout, groups)]
                c = ch * mult
                if res in attn_resolutions:
                    blocks.append(AttnBlock(c, num_heads, groups))
                self.up.append(nn.ModuleList(blocks))
            if level > 0:
                self.up.append(nn.ModuleList([Upsample(c, resamp_with_conv)]))
                res *= 2
        self.norm_out = _norm(c, groups)
        self.conv_out = _zero(nn.Conv2d(c, out_channels or in_channels, 3, padding=1))

    def _run(self, blocks: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return h

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise UserInputError(f"UNet expects x of shape (B, {self.in_channels}, H, W), "
                                 f"got {tuple(x.shape)}")
        if x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise UserInputError(
                f"image size {tuple(x.shape[2:])} must be divisible by {self.factor}"
            )
        emb = self.time_embed(t)
        if self.label_embed is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.label_embed(y)
        elif y is not None:
            raise UserInputError(
                "this UNet is unconditional (num_classes=None); it takes no labels"
            )
        h = self.conv_in(x)
        hs = [h]
        for blocks in self.down:
            h = self._run(blocks, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for blocks in self.up:
            if isinstance(blocks[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(blocks, h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


UNET_PRESETS: dict[str, dict] = {
    "ddpm_cifar10": dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                         dropout=0.1, resolution=32),
    "mnist": dict(ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(14,),
                  dropout=0.1, resolution=28, in_channels=1),
    "tiny": dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                 resolution=8),
}
