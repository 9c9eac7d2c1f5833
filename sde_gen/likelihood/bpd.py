"""Bits per dimension of 8-bit data from a continuous log-density in the model's range.

For ``y = (x + u)/256 in [0, 1)^D`` and the model variable ``z = LOW + SCALE y``:

    log p_y(y) = log p_z(z) + D log SCALE       (change of variables)
    log P(x)  >= E_u[log p_y(y)] - D log 256    (Jensen over the bin of volume 256^-D)

so ``bpd = -(log p_z(z) + D log SCALE) / (D ln 2) + log2 256``. With ``[-1, 1]`` (SCALE = 2) the
offset is ``8 - 1 = 7`` bits: score_sde's constant, derived.

Refs: [Song21] Appendix D.2; [Ho20] Sec. 3.3; [Theis16] (dequantization bound).
"""

from __future__ import annotations

import math

import torch

from ..errors import UserInputError
from ..scaling import SCALE


def bits_per_dim(
    logp: torch.Tensor,
    x: torch.Tensor | None = None,
    *,
    shape: tuple[int, ...] | torch.Size | None = None,
    scale: float = SCALE,
    n_bins: int = 256,
) -> torch.Tensor:
    """Per-example bits/dim of dequantized 8-bit data.

    ``D`` comes from the data batch ``x`` itself (one example's size), so that the batch shape
    cannot be passed by mistake; without the data, give one example's ``shape`` by keyword.

    Args:
        logp: ``(B,)`` log-density in nats of the dequantized data in model units.
        x: the data ``(B, *D)`` that ``logp`` scores, e.g. ``bits_per_dim(res.logp, x)``.
        shape: instead of ``x``: the shape of one example, e.g. ``shape=(3, 32, 32)``.
        scale: model units per unit of ``[0, 1)`` pixel range (2 for ``[-1, 1]``).
        n_bins: quantization levels (256 for 8 bits).

    Returns:
        ``(B,)`` upper bound on ``-log2 P(x) / D``.

    Raises:
        UserInputError: neither or both of ``x`` and ``shape``; ``x`` not a batch tensor matching
            ``logp`` (a shape passed positionally is rejected: it is ambiguous); an empty shape.
    """
    if (x is None) == (shape is None):
        raise UserInputError("bits_per_dim needs the data x (B, *D) or shape= of one example "
                             "(exactly one of them)")
    if x is not None:
        if not torch.is_tensor(x):
            raise UserInputError(f"bits_per_dim's x must be the data tensor (B, *D), got "
                                 f"{x!r}; pass one example's shape as "
                                 f"shape=...")
        if x.ndim < 2 or (torch.is_tensor(logp) and logp.ndim == 1 and len(logp) != len(x)):
            raise UserInputError(f"x must be the batch (B, *D) that logp {tuple(logp.shape)} "
                                 f"scores, got shape {tuple(x.shape)}")
        d = x[0].numel()
    else:
        d = math.prod(tuple(shape))
    if d < 1:
        raise UserInputError(f"one example must have at least one dimension, got D = {d}")
    log_py = logp + d * math.log(scale)  # change of variables z -> y
    return -log_py / (d * math.log(2)) + math.log2(n_bins)
