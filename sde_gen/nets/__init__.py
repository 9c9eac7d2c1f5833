"""Networks ``net(x, t)`` (class-conditional: ``net(x, t, y)``); they know nothing about SDEs."""

from torch import nn

from .classifier import FeatureClassifier
from .mlp import MLP
from .unet import UNET_PRESETS, UNet

#: The score networks by config name (``model.name``): MLP for 2-D data, U-Net for images.
NETWORKS: dict[str, type[nn.Module]] = {"mlp": MLP, "unet": UNet}

__all__ = ["MLP", "NETWORKS", "UNET_PRESETS", "FeatureClassifier", "UNet"]
