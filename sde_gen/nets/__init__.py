"""Networks ``net(x, t)``; they know nothing about SDEs."""

from .classifier import FeatureClassifier
from .mlp import MLP
from .unet import UNET_PRESETS, UNet

__all__ = ["MLP", "UNET_PRESETS", "FeatureClassifier", "UNet"]
