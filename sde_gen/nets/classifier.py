"""A small CNN classifier whose penultimate features define the FD-classifier metric."""

from __future__ import annotations

import torch
from torch import nn


class FeatureClassifier(nn.Module):
    """Three conv stages (32-64-128 channels, GroupNorm, SiLU, pooling) and a linear head.

    ``features(x)`` returns the 128-d global-average-pooled features used by the Fréchet
    distance; ``forward`` returns class logits. Input: images in [-1, 1], ``(B, C, H, W)``.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for width in (32, 64, 128):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
                       nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU()]
            if width != 128:
                layers.append(nn.AvgPool2d(2, ceil_mode=True))
            c = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
