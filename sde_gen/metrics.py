"""Two-sample distances used to judge samplers against exact data samples.

Refs: [Bonneel15] sliced Wasserstein; [Szekely13] energy distance.
"""

from __future__ import annotations

import torch

from .errors import UserInputError


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_projections: int = 256,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sliced Wasserstein-2 distance between two equal-size samples ``(n, D)``.

    ``SW2^2 = E_u W2^2(u.x, u.y)`` over random unit directions ``u``; each 1-D ``W2`` is the
    distance of sorted projections. Returns ``SW2`` (0-d, float64).
    """
    if x.ndim != 2 or x.shape != y.shape:
        raise UserInputError(f"need two (n, D) samples of equal shape, "
                             f"got {tuple(x.shape)}, {tuple(y.shape)}")
    x, y = x.to(torch.float64), y.to(torch.float64)
    u = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    u = (u / u.norm(dim=0, keepdim=True)).to(x.device)
    px, _ = torch.sort(x @ u, dim=0)
    py, _ = torch.sort(y @ u, dim=0)
    return ((px - py) ** 2).mean().sqrt()


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (V-statistic, float64, 0-d)."""
    x, y = x.to(torch.float64), y.to(torch.float64)
    return 2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(n, F)``.

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` ([Heusel17] Eq. 6; FID when the
    features are Inception's).
    """
    import numpy as np
    from scipy import linalg

    a, b = a.double().cpu().numpy(), b.double().cpu().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.real(linalg.sqrtm(s_a @ s_b))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))
