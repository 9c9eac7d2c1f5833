"""Inverse problems with a linear measurement ``y = A x0 + s z``: operators with exact adjoints.

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

__all__ = ["Blur", "Colorize", "Downsample", "FunctionOperator", "LinearOperator", "Mask",
           "Projection", "check_linear"]
