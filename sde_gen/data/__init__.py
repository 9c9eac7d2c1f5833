"""Datasets: built-in 2-D toys (exact densities for the mixtures) and 8-bit image sets."""

from .images import IMAGE_SHAPES, DeviceBatches, ImageData, ImageDataset, load_images, make_loader
from ..scaling import dequantize, from_model, to_model, uint8_to_model
from .toy2d import TOY2D, Toy2D

__all__ = [
    "IMAGE_SHAPES", "TOY2D", "DeviceBatches", "ImageData", "ImageDataset", "Toy2D", "dequantize",
    "from_model", "load_images", "make_loader", "to_model", "uint8_to_model",
]
