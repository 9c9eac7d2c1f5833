"""Networks ``net(x, t)``; they know nothing about SDEs."""

from .mlp import MLP

__all__ = ["MLP"]
