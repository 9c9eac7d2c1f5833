"""Names of the built-in datasets and their kind, without importing the image loaders.

The config validates ``data.name`` against :data:`DATASETS` and the factory dispatches on its
kind, so neither needs :mod:`.images` (NumPy, PIL) to be imported to know a name.
"""

from __future__ import annotations

from .toy2d import TOY2D

#: Shape ``(C, H, W)`` of the image sets with a fixed shape.
IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}
#: Image sources: the sets above, any ``.npz`` file (``npz``) and a folder of files (``folder``).
IMAGE_DATASETS: tuple[str, ...] = (*IMAGE_SHAPES, "npz", "folder")

TOY = "toy2d"
IMAGE = "image"
#: Every dataset name (``data.name``) and its kind: :data:`TOY` or :data:`IMAGE`.
DATASETS: dict[str, str] = {**{name: TOY for name in TOY2D},
                            **{name: IMAGE for name in IMAGE_DATASETS}}


def is_image_dataset(name: str) -> bool:
    """Whether ``name`` is an image dataset (else a built-in 2-D distribution)."""
    return DATASETS.get(name) == IMAGE
