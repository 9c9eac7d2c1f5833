"""Inverse problems with a linear measurement ``y = A x0 + s z``: operators with exact adjoints
and ``restore`` (DPS, PiGDM, MMPS) sampling ``x0 | y`` with an unconditional model.

Refs: [Chung23] DPS; [Song23pgdm] PiGDM; [Rozet24] MMPS.
"""

from .operators import (
    Blur,
    Colorize,
    Downsample,
    FunctionOperator,
    LinearOperator,
    Mask,
    Projection,
    check_linear,
)
from .posterior_model import PosteriorModel
from .restore import METHODS, restore

__all__ = ["METHODS", "Blur", "Colorize", "Downsample", "FunctionOperator", "LinearOperator",
           "Mask", "PosteriorModel", "Projection", "check_linear", "restore"]
