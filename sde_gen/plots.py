"""Figures: model samples beside data for 2-D distributions."""

from __future__ import annotations

from pathlib import Path

import torch

from .data.toy2d import Toy2D
from .sampling import sample
from .sde import SDE


def scatter_compare(samples: torch.Tensor, data: torch.Tensor, path: Path, title: str) -> Path:
    """Save a two-panel scatter: data (left) and model samples (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    for ax, pts, name in zip(axes, (data, samples), ("data", title)):
        pts = pts.detach().cpu().numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        ax.set_title(name)
        ax.set_aspect("equal")
    lim = 1.1 * float(data.abs().max())
    axes[0].set_xlim(-lim, lim)
    axes[0].set_ylim(-lim, lim)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path


@torch.no_grad()
def plot_toy_samples(
    model: torch.nn.Module, sde: SDE, data: Toy2D, path: Path, *, n: int = 2000, seed: int = 0
) -> Path:
    """Sample the reverse SDE with ``model`` and save a scatter beside fresh data."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    out = sample(model, sde, (n, 2), "sde", steps=500, generator=g, device=device)
    ref = data.sample(n, generator=torch.Generator().manual_seed(seed))
    return scatter_compare(out.x, ref, path, f"samples (reverse SDE, {out.nfe} NFE)")
