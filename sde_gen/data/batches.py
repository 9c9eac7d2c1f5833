"""Training batch sources with a common interface: ``next() -> x0`` and an exact-resume state."""

from __future__ import annotations

from typing import Any

import torch

from .images import DeviceBatches, ImageData
from .toy2d import Toy2D


class ToyBatches:
    """Fresh draws from a built-in 2-D distribution, from a seeded CPU generator."""

    def __init__(self, data: Toy2D, *, batch_size: int, device: torch.device, seed: int) -> None:
        self.data, self.batch_size, self.device = data, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        return self.data.sample(self.batch_size, generator=self.generator).to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())


class ImageBatches:
    """Batches of images scaled to [-1, 1] (labels dropped), resident on the device."""

    def __init__(self, data: ImageData, *, batch_size: int, device: torch.device, seed: int,
                 flip: bool, channels_last: bool) -> None:
        self.source = DeviceBatches(data, batch_size=batch_size, device=device, flip=flip, seed=seed)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def next(self) -> torch.Tensor:
        x, _ = self.source.next()
        return x.contiguous(memory_format=self.memory_format)

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)
