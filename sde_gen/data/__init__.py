"""Datasets: built-in 2-D toys (exact densities for the mixtures) and 8-bit image sets.

Importing the package is light: the image loaders (:mod:`.images`: NumPy, PIL) load on first
use of one of their names.
"""

from __future__ import annotations

from typing import Any

from ..scaling import dequantize, from_model, to_model, uint8_to_model
from .registry import DATASETS, IMAGE_DATASETS, IMAGE_SHAPES, is_image_dataset
from .toy2d import TOY2D, Toy2D

_FROM_IMAGES = ("DeviceBatches", "ImageData", "ImageDataset", "load_images", "make_loader")

__all__ = [
    "DATASETS", "IMAGE_DATASETS", "IMAGE_SHAPES", "TOY2D", "DeviceBatches", "ImageData",
    "ImageDataset", "Toy2D", "dequantize", "from_model", "is_image_dataset", "load_images",
    "make_loader", "to_model", "uint8_to_model",
]


def __getattr__(name: str) -> Any:  # PEP 562: import .images only when one of its names is used
    if name in _FROM_IMAGES:
        from . import images

        return getattr(images, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
