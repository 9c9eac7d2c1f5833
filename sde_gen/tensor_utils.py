"""Small tensor helpers shared by every module: broadcasting per-example scalars and
reducing over the non-batch dimensions."""

from __future__ import annotations

import torch

from .errors import UserInputError


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims to ``v`` so that it broadcasts against a tensor of ``ndim``.

    Args:
        v: per-example values. Shapes: ``(B,)``.
        ndim: number of dims of the target tensor, e.g. 4 for ``(B, C, H, W)``.
    """
    if v.ndim > ndim:
        raise UserInputError(f"cannot broadcast a {v.ndim}-d tensor to {ndim} dims")
    return v.reshape(*v.shape, *([1] * (ndim - v.ndim)))


def sum_flat(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dim but the first. Shapes: ``(B, *D) -> (B,)``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dim but the first. Shapes: ``(B, *D) -> (B,)``."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def batch_time(t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A ``(B,)`` time tensor on ``x``'s device and dtype, from a scalar or a ``(B,)`` tensor."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise UserInputError(
            f"t must be a scalar or of shape ({x.shape[0]},), got {tuple(t.shape)}"
        )
    return t
