"""The one map between 8-bit pixels and the model's data range, and uniform dequantization.

Training images ``x in {0..255}`` are scaled by ``to_model(x / 255)``; likelihood evaluation
dequantizes ``y = (x + u) / 256``, ``u ~ U[0, 1)^D`` (so ``y in [0, 1)``) and scores
``to_model(y)``. ``to_model`` is affine, ``[0, 1] -> [LOW, HIGH] = [-1, 1]``, with Jacobian
``HIGH - LOW`` per dimension, which :func:`~sde_gen.likelihood.bits_per_dim` accounts for.

Refs: [Ho20] Sec. 3.3 (data scaled to [-1, 1]); [Song21] Appendix D.2 (dequantization).
"""

from __future__ import annotations

import torch

from .errors import UserInputError
from .noise import Generator, rand

LOW, HIGH = -1.0, 1.0
SCALE = HIGH - LOW  # dz/dy of the affine map [0, 1] -> [LOW, HIGH]


def to_model(y: torch.Tensor) -> torch.Tensor:
    """``[0, 1] -> [-1, 1]``."""
    return LOW + SCALE * y


def from_model(z: torch.Tensor) -> torch.Tensor:
    """``[-1, 1] -> [0, 1]`` (clamped), the inverse of :func:`to_model`."""
    return ((z - LOW) / SCALE).clamp(0.0, 1.0)


def uint8_to_model(x: torch.Tensor) -> torch.Tensor:
    """Training scaling of 8-bit images: ``to_model(x / 255)``, float32."""
    return to_model(x.float() / 255.0)


def model_to_uint8(z: torch.Tensor) -> torch.Tensor:
    """Model output to 8-bit pixels (round to nearest)."""
    return torch.round(from_model(z) * 255.0).to(torch.uint8)


def dequantize(
    x_uint8: torch.Tensor, *, generator: Generator = None, dtype=torch.float32
) -> torch.Tensor:
    """Uniformly dequantize 8-bit data into the model range: ``to_model((x + u) / 256)``
    (``generator`` as in :func:`sde_gen.noise.rand`: an IndexedGenerator gives each image its
    own noise)."""
    if x_uint8.dtype != torch.uint8:
        raise UserInputError(f"dequantize expects uint8 pixels, got {x_uint8.dtype}")
    u = rand(x_uint8.shape, generator, device=x_uint8.device, dtype=dtype)
    return to_model((x_uint8.to(dtype) + u) / 256.0)
