"""Datasets: built-in 2-D toys (with exact densities for the mixtures)."""

from .toy2d import TOY2D, Toy2D

__all__ = ["TOY2D", "Toy2D"]
