"""Colorization as imputation in a decorrelated colour basis ([Song21] App. I.3).

A grey image fixes one linear function of each pixel's colour, the channel mean. In the
orthonormal basis ``Q`` (rows: ``(1, 1, 1)/sqrt(3)``, ``(1, -1, 0)/sqrt(2)``,
``(1, 1, -2)/sqrt(6)``) the first channel of ``x' = Q x`` (per pixel) is ``sqrt(3)`` times the
grey value and the other two are free, so colorization is imputation of channels 1 and 2 of
``x'`` given channel 0. Because ``Q`` is orthogonal and the forward noise isotropic,
``x'_t = alpha_t x'_0 + sigma_t (Q z)`` with ``Q z ~ N(0, I)``: the eps-model of ``x'`` is exactly
``eps'(x', t) = Q eps(Q^T x', t)`` and no retraining is needed.

Refs: [Song21] App. I.3.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import UserInputError
from ..noise import Generator
from ..parameterization import EpsModel
from ..sde import SDE
from .impute import impute
from .result import SampleResult

__all__ = ["COLOUR_BASIS", "colorize", "decorrelated_model", "from_decorrelated",
           "to_decorrelated"]

#: The orthogonal colour basis ``Q`` (rows), float64; the first row is ``(1, 1, 1)/sqrt(3)``.
COLOUR_BASIS = torch.tensor([
    [1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)],
    [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0],
    [1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)],
], dtype=torch.float64)


def _basis(x: torch.Tensor) -> torch.Tensor:
    return COLOUR_BASIS.to(device=x.device, dtype=x.dtype)


def to_decorrelated(x: torch.Tensor) -> torch.Tensor:
    """``x' = Q x`` per pixel. Shapes: ``(B, 3, *S) -> (B, 3, *S)``."""
    return torch.einsum("ij,bj...->bi...", _basis(x), x)


def from_decorrelated(x: torch.Tensor) -> torch.Tensor:
    """``x = Q^T x'`` per pixel, the inverse of :func:`to_decorrelated`."""
    return torch.einsum("ji,bj...->bi...", _basis(x), x)


def decorrelated_model(model: EpsModel) -> EpsModel:
    """The eps-model of ``x' = Q x``: ``eps'(x', t) = Q eps(Q^T x', t)``, exact (one call of
    ``model`` per call). Shapes: ``x' (B, 3, *S)``."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return to_decorrelated(model(from_decorrelated(x), t))

    return eps


def _check_grey(grey: Any) -> torch.Tensor:
    """The grey image as ``(B, 1, H, W)``, checked."""
    if not torch.is_tensor(grey) or grey.ndim != 4 or grey.shape[1] not in (1, 3) or \
            grey.numel() == 0:
        shape = tuple(grey.shape) if torch.is_tensor(grey) else type(grey).__name__
        raise UserInputError(f"grey must be a (B, 1, H, W) or (B, 3, H, W) image tensor, got "
                             f"{shape}")
    if not grey.is_floating_point():
        raise UserInputError(f"grey must be a floating-point tensor, got {grey.dtype}")
    if not bool(torch.isfinite(grey).all()):
        raise UserInputError("grey has a NaN or infinite value")
    if grey.shape[1] == 3:
        spread = float((grey.amax(1) - grey.amin(1)).max())
        if spread > 1e-5:
            raise UserInputError(f"a 3-channel grey image must have equal channels; they differ "
                                 f"by up to {spread:.3g} (pass (B, 1, H, W) or average them)")
        grey = grey.mean(1, keepdim=True)
    lo, hi = float(grey.min()), float(grey.max())
    if lo < -1 - 1e-6 or hi > 1 + 1e-6:
        raise UserInputError(f"grey values must lie in [-1, 1] (the data range), got "
                             f"{lo:.3g}..{hi:.3g}")
    return grey


def colorize(
    model: EpsModel,
    sde: SDE,
    grey: torch.Tensor,
    *,
    solver: str = "pc",
    steps: int | None = None,
    resample: int = 1,
    generator: Generator = None,
    **options: Any,
) -> SampleResult:
    """Colour images whose channel mean is ``grey``, with an unconditional RGB model.

    :func:`~sde_gen.sampling.impute.impute` on ``x' = Q x`` with channel 0 known
    (``sqrt(3) grey``) and the exact decorrelated model :func:`decorrelated_model`, mapped back.

    Args:
        model: eps-model ``model(x, t)`` of 3-channel images ``(B, 3, H, W)`` in ``[-1, 1]``.
        sde: the forward SDE.
        grey: ``(B, 1, H, W)``, or ``(B, 3, H, W)`` with equal channels, in ``[-1, 1]``.
        solver, steps, resample, generator: as for :func:`~sde_gen.sampling.impute.impute`.
        **options: the rest of ``impute``'s arguments (``t_min``, ``denoise``, ``method``,
            ``particles``, ``progress``, ``spacing``) and the solver's options.

    Returns:
        :class:`SampleResult` in RGB: ``x (B, 3, H, W)``, whose channel mean equals ``grey`` up
        to rounding (the decorrelated channel 0 is set exactly); ``x_mean`` likewise mapped back;
        ``nfe``; ``ts``. Values are not clipped to ``[-1, 1]``.

    Raises:
        UserInputError: a ``grey`` of the wrong shape, with unequal channels, non-finite or out
            of range, and everything :func:`~sde_gen.sampling.impute.impute` refuses.

    Shapes: ``grey: (B, 1 | 3, H, W)``, ``x: (B, 3, H, W)``.

    Refs: [Song21] App. I.3.
    """
    grey = _check_grey(grey)
    b, _, h, w = grey.shape
    x_known = torch.zeros(b, 3, h, w, dtype=grey.dtype, device=grey.device)
    x_known[:, :1] = math.sqrt(3) * grey  # channel 0 of Q x: (r + g + b) / sqrt(3)
    mask = torch.zeros(3, 1, 1, dtype=torch.bool, device=grey.device)
    mask[0] = True
    res = impute(decorrelated_model(model), sde, x_known, mask, solver=solver, steps=steps,
                 resample=resample, generator=generator, **options)
    return SampleResult(x=from_decorrelated(res.x), x_mean=from_decorrelated(res.x_mean),
                        nfe=res.nfe, ts=res.ts)
