"""Bits per dimension of 8-bit data from a continuous log-density in the model's range.

For ``y = (x + u)/256 in [0, 1)^D`` and the model variable ``z = LOW + SCALE y``:

    log p_y(y) = log p_z(z) + D log SCALE                       (change of variables)
    log P(x)  >= E_u[log p_y(y)] - D log 256                      (Jensen over the bin of volume 256^-D)

so ``bpd = -(log p_z(z) + D log SCALE) / (D ln 2) + log2 256``. With ``[-1, 1]`` (SCALE = 2) the
offset is ``8 - 1 = 7`` bits: score_sde's constant, derived.

Refs: [Song21] Appendix D.2; [Ho20] Sec. 3.3; [Theis16] (dequantization bound).
"""

from __future__ import annotations

import math

import torch

from ..scaling import SCALE


def bits_per_dim(
    logp: torch.Tensor,
    x_shape: tuple[int, ...] | torch.Size,
    *,
    scale: float = SCALE,
    n_bins: int = 256,
) -> torch.Tensor:
    """Per-example bits/dim of dequantized 8-bit data.

    Args:
        logp: ``(B,)`` log-density in nats of the dequantized data in model units.
        x_shape: shape of one example, e.g. ``(3, 32, 32)`` (pass ``x.shape[1:]``).
        scale: model units per unit of ``[0, 1)`` pixel range (2 for ``[-1, 1]``).
        n_bins: quantization levels (256 for 8 bits).

    Returns:
        ``(B,)`` upper bound on ``-log2 P(x) / D``.
    """
    d = math.prod(tuple(x_shape))
    if d < 1:
        raise ValueError(f"x_shape must be the shape of one example, got {tuple(x_shape)}")
    log_py = logp + d * math.log(scale)  # change of variables z -> y
    return -log_py / (d * math.log(2)) + math.log2(n_bins)
