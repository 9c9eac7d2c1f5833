"""Built-in 2-D datasets, sampled on the fly from a ``torch.Generator``.

The mixtures (``8gaussians``, ``25gaussians``) are :class:`~sde_gen.analytic.GaussianMixture`
objects, so their exact log-density is known; the others are sample-only. All are scaled to a
per-coordinate standard deviation near 1.

Three have class labels for class-conditional training (:data:`TOY2D_CLASSES`): a mixture's
label is the component an example was drawn from, the pinwheel's the arm.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..analytic import GaussianMixture
from ..errors import UserInputError

Sampler = Callable[[int, torch.Generator | None], torch.Tensor]


def eight_gaussians() -> GaussianMixture:
    """Eight isotropic Gaussians (std 0.1) on a circle of radius sqrt(2)."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = math.sqrt(2) * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(means, torch.full((8,), 0.1**2))


def twenty_five_gaussians() -> GaussianMixture:
    """A 5x5 grid of isotropic Gaussians (std 0.05), spacing 0.7."""
    g = torch.arange(-2, 3, dtype=torch.float64) * 0.7
    means = torch.cartesian_prod(g, g)
    return GaussianMixture(means, torch.full((25,), 0.05**2))


def _uniform(n: int, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64)


def _normal(shape: tuple[int, ...], g: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float64)


def moons(n: int, g: torch.Generator | None = None) -> torch.Tensor:
    """Two interleaved half circles with Gaussian noise 0.05."""
    upper = torch.rand(n, generator=g) < 0.5
    a = math.pi * _uniform(n, g)
    x = torch.where(upper, torch.cos(a), 1 - torch.cos(a))
    y = torch.where(upper, torch.sin(a), 0.5 - torch.sin(a))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) + 0.05 * _normal((n, 2), g)
    return 1.4 * pts


def swissroll(n: int, g: torch.Generator | None = None) -> torch.Tensor:
    """A 2-D Swiss roll ``r = t`` for ``t in [1.5 pi, 4.5 pi]``, noise 0.25 before scaling."""
    t = 1.5 * math.pi * (1 + 2 * _uniform(n, g))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) + 0.25 * _normal((n, 2), g)
    return pts / 7.5


def checkerboard(n: int, g: torch.Generator | None = None) -> torch.Tensor:
    """Uniform on the dark squares of a 4x4 board on ``[-2, 2]^2``, scaled by 0.85."""
    x1 = 4 * _uniform(n, g) - 2
    x2 = _uniform(n, g) - 2 * torch.randint(0, 2, (n,), generator=g).double()
    x2 = x2 + torch.floor(x1) % 2
    return 0.85 * torch.stack([x1, x2], dim=1)


def circles(n: int, g: torch.Generator | None = None) -> torch.Tensor:
    """Two concentric circles, radii 1.6 and 0.8, noise 0.04."""
    r = torch.where(torch.rand(n, generator=g) < 0.5, 1.6, 0.8).double()
    a = 2 * math.pi * _uniform(n, g)
    return r[:, None] * torch.stack([torch.cos(a), torch.sin(a)], 1) + 0.04 * _normal((n, 2), g)


PINWHEEL_ARMS = 5


def pinwheel(n: int, g: torch.Generator | None = None, *, return_labels: bool = False
             ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Five curved arms ([Grathwohl19] FFJORD's pinwheel), rescaled; with ``return_labels`` also
    the arm of each point, ``(n,)`` int64 (the same draws either way)."""
    arms, rate = PINWHEEL_ARMS, 0.25
    labels = torch.randint(0, arms, (n,), generator=g)
    feats = _normal((n, 2), g) * torch.tensor([0.3, 0.05], dtype=torch.float64)
    feats[:, 0] += 1.0
    angles = 2 * math.pi * labels.double() / arms + rate * torch.exp(feats[:, 0])
    c, s = torch.cos(angles), torch.sin(angles)
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    x = 1.2 * torch.einsum("nij,nj->ni", rot, feats)
    return (x, labels) if return_labels else x


MIXTURES: dict[str, Callable[[], GaussianMixture]] = {
    "8gaussians": eight_gaussians,
    "25gaussians": twenty_five_gaussians,
}
SAMPLERS: dict[str, Sampler] = {
    "moons": moons,
    "swissroll": swissroll,
    "checkerboard": checkerboard,
    "circles": circles,
    "pinwheel": pinwheel,
}
TOY2D = tuple(MIXTURES) + tuple(SAMPLERS)
#: The number of classes of each labelled 2-D dataset (the others have no labels).
TOY2D_CLASSES: dict[str, int] = {"8gaussians": 8, "25gaussians": 25, "pinwheel": PINWHEEL_ARMS}


class Toy2D:
    """A built-in 2-D distribution: ``sample(n, generator)`` and, for mixtures, ``log_prob``."""

    def __init__(self, name: str) -> None:
        if name not in TOY2D:
            raise UserInputError(f"unknown 2-D dataset {name!r}; choose one of "
                                 f"{', '.join(TOY2D)}")
        self.name = name
        self.mixture: GaussianMixture | None = MIXTURES[name]() if name in MIXTURES else None

    @property
    def has_density(self) -> bool:
        return self.mixture is not None

    @property
    def num_classes(self) -> int | None:
        """Number of classes (:data:`TOY2D_CLASSES`), or ``None`` for an unlabelled dataset."""
        return TOY2D_CLASSES.get(self.name)

    def sample(
        self, n: int, *, generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32, return_labels: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``(n, 2)`` fresh samples; with ``return_labels`` also their classes ``(n,)`` int64
        (labelled datasets only), from the same draws as without.

        Raises:
            UserInputError: ``return_labels`` for a dataset without labels.
        """
        if return_labels and self.num_classes is None:
            raise UserInputError(f"dataset {self.name!r} has no class labels; labelled 2-D "
                                 f"datasets: {', '.join(TOY2D_CLASSES)}")
        if self.mixture is not None:
            return self.mixture.sample(n, generator=generator, dtype=dtype,
                                       return_labels=return_labels)
        if return_labels:
            x, y = SAMPLERS[self.name](n, generator, return_labels=True)
            return x.to(dtype), y
        return SAMPLERS[self.name](n, generator).to(dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density (mixtures only). Shapes: ``(B, 2) -> (B,)``."""
        if self.mixture is None:
            raise UserInputError(f"dataset {self.name!r} has no closed-form density")
        return self.mixture.log_prob(x)
