"""Figures: model samples beside data for 2-D distributions."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..data.toy2d import Toy2D
from ..sampling import sample
from ..sde import SDE


def scatter_compare(samples: torch.Tensor | dict[str, torch.Tensor], data: torch.Tensor,
                    path: Path, title: str = "samples") -> Path:
    """Save data (left) beside one panel per sample set (``{title: samples}``, or one tensor).

    The axes are those of the data; samples outside them are counted in the panel's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"data": data, **(samples if isinstance(samples, dict) else {title: samples})}
    lim = 1.1 * float(data.abs().max())
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), sharex=True,
                             sharey=True, squeeze=False)
    for ax, (name, pts) in zip(axes[0], panels.items()):
        pts = pts.detach().cpu().double()
        outside = int((pts.abs() > lim).any(dim=1).sum())
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=2, alpha=0.5)
        ax.set_title(name + (f"\n{outside} outside the axes" if outside else ""))
        ax.set_aspect("equal")
    axes[0][0].set_xlim(-lim, lim)
    axes[0][0].set_ylim(-lim, lim)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path


@torch.no_grad()
def plot_toy_samples(
    model: torch.nn.Module, sde: SDE, data: Toy2D, path: Path, *, n: int = 2000, seed: int = 0
) -> Path:
    """Sample the reverse SDE and the probability-flow ODE with ``model``; save both beside data."""
    device = next(model.parameters()).device
    panels = {}
    for solver, kw in (("sde", {"steps": 500}), ("ode", {})):
        g = torch.Generator(device=device).manual_seed(seed)
        out = sample(model, sde, (n, 2), solver, generator=g, device=device, **kw)
        name = "reverse SDE" if solver == "sde" else "probability-flow ODE (dopri5)"
        panels[f"{name}, {out.nfe} NFE"] = out.x
    ref = data.sample(n, generator=torch.Generator().manual_seed(seed))
    tmp = path.with_name(".tmp_" + path.name)  # atomic: an interrupted plot leaves no torn file
    try:
        scatter_compare(panels, ref, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
