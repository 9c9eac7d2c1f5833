"""Training batch sources with a common interface: ``next()`` and an exact-resume state.

``next()`` returns ``x0`` for an unconditional model and ``(x0, y)`` for a class-conditional one
(``num_classes`` given): ``y`` holds the labels, each replaced by the null label ``num_classes``
with probability ``label_dropout``, so that one network learns the conditional and the
unconditional model, as classifier-free guidance needs ([Ho22] Alg. 1, ``p_uncond``).

The dropout draws come from a generator of their own (seeded ``seed + LABEL_SEED_OFFSET``; the
loss's noise uses ``seed + 1``), so the data stream is the same with or without labels, and an
unconditional run draws exactly what it drew before labels existed. Its state is part of
:meth:`state_dict`, so a resumed conditional run is bit-identical too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UserInputError
from .images import DeviceBatches, ImageData
from .toy2d import Toy2D

#: Seed of the label-dropout generator: the run's seed plus this (``seed + 1`` seeds the noise).
LABEL_SEED_OFFSET = 2

Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class LabelDropout:
    """Replace each label by the null label ``num_classes`` with probability ``p``.

    Args:
        num_classes: the number of classes K; labels are ``0..K-1``, the null label is K.
        p: the dropout probability, in ``[0, 1)``.
        device: where the generator draws (the labels' device).
        seed: its seed.
    """

    def __init__(self, num_classes: int, p: float, *, device: torch.device, seed: int) -> None:
        if num_classes < 1:
            raise UserInputError(f"num_classes must be positive, got {num_classes}")
        if not 0.0 <= p < 1.0:
            raise UserInputError(f"label dropout must be in [0, 1), got {p}")
        self.num_classes, self.p, self.device = num_classes, p, torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """Shapes: ``(B,)`` int64 on :attr:`device` -> ``(B,)``."""
        drop = torch.rand(y.shape, generator=self.generator, device=self.device) < self.p
        return torch.where(drop, torch.full_like(y, self.num_classes), y)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())  # set_state takes a CPU ByteTensor


def _label_dropout(num_classes: int | None, p: float, device: torch.device,
                   seed: int) -> LabelDropout | None:
    if num_classes is None:
        return None
    return LabelDropout(num_classes, p, device=device, seed=seed + LABEL_SEED_OFFSET)


def _state(base: dict[str, Any], labels: LabelDropout | None) -> dict[str, Any]:
    return base if labels is None else {**base, "label_dropout": labels.state_dict()}


def _load_labels(labels: LabelDropout | None, state: dict[str, Any]) -> None:
    if labels is None:
        return
    if "label_dropout" not in state:
        raise UserInputError("the saved batch state has no label-dropout state (it is from an "
                             "unconditional run)")
    labels.load_state_dict(state["label_dropout"])


class ToyBatches:
    """Fresh draws from a built-in 2-D distribution, from a seeded CPU generator.

    Args:
        data: the distribution.
        batch_size: examples per batch.
        device: where the batches go.
        seed: seed of the data generator (label dropout: ``seed + LABEL_SEED_OFFSET``).
        num_classes: class-conditional batches ``(x0, y)`` (the data's labels); ``None``: ``x0``.
        label_dropout: probability of the null label (with ``num_classes``).
    """

    def __init__(self, data: Toy2D, *, batch_size: int, device: torch.device, seed: int,
                 num_classes: int | None = None, label_dropout: float = 0.0) -> None:
        if num_classes is not None and num_classes != data.num_classes:
            raise UserInputError(f"dataset {data.name!r} has "
                                 f"{data.num_classes or 'no'} classes, not {num_classes}")
        self.data, self.batch_size, self.device = data, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)
        self.labels = _label_dropout(num_classes, label_dropout, torch.device("cpu"), seed)

    def next(self) -> Batch:
        if self.labels is None:
            return self.data.sample(self.batch_size, generator=self.generator).to(self.device)
        x, y = self.data.sample(self.batch_size, generator=self.generator, return_labels=True)
        return x.to(self.device), self.labels(y).to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return _state({"generator": self.generator.get_state()}, self.labels)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())
        _load_labels(self.labels, state)


@dataclass(frozen=True)
class LatentData:
    """A split encoded by a latent-diffusion autoencoder: float latents and the images' labels;
    :class:`ImageBatches` serves it as it serves :class:`~.images.ImageData` (no rescaling).

    Shapes: ``x: (N, c, h, w)`` float32; ``y: (N,)`` int64 or ``None``.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    num_classes: int | None
    name: str
    source: str | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])

    @property
    def origin(self) -> str:
        return f"the latents of {self.source or self.name}"

    def empty_error(self) -> UserInputError:
        return UserInputError(f"{self.origin}: the split holds no images")


class ImageBatches:
    """Batches of images scaled to [-1, 1], resident on the device; labels (with dropout) only
    for a class-conditional model (``num_classes``), else dropped.

    Args:
        data: the split.
        batch_size, device, seed, flip: as :class:`~sde_gen.data.images.DeviceBatches`.
        channels_last: return the images in channels-last memory format.
        num_classes: class-conditional batches ``(x0, y)``; ``None``: ``x0``.
        label_dropout: probability of the null label (with ``num_classes``).
    """

    def __init__(self, data: ImageData | LatentData, *, batch_size: int, device: torch.device,
                 seed: int, flip: bool, channels_last: bool, num_classes: int | None = None,
                 label_dropout: float = 0.0) -> None:
        if num_classes is not None and (data.y is None or data.num_classes != num_classes):
            raise UserInputError(f"{data.origin} has {data.num_classes or 'no'} labelled "
                                 f"classes, not {num_classes}")
        self.source = DeviceBatches(data, batch_size=batch_size, device=device, flip=flip,
                                    seed=seed)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.labels = _label_dropout(num_classes, label_dropout, self.source.device, seed)

    def next(self) -> Batch:
        x, y = self.source.next()
        x = x.contiguous(memory_format=self.memory_format)
        return x if self.labels is None else (x, self.labels(y))

    def state_dict(self) -> dict[str, Any]:
        return _state(self.source.state_dict(), self.labels)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)
        _load_labels(self.labels, state)
