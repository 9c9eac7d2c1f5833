"""Figures: model samples beside data for 2-D distributions, and legible image grids.

Image grids are upscaled with nearest-neighbour (each pixel becomes a ``scale x scale`` block, no
smoothing), so 8x8 digits stay crisp: :func:`image_grid` makes a cell at least
:data:`MIN_CELL` pixels on its longer side.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ..data.toy2d import Toy2D
from ..sampling import sample
from ..sde import SDE


def scatter_compare(samples: torch.Tensor | dict[str, torch.Tensor], data: torch.Tensor,
                    path: Path, title: str = "samples", *, labels: torch.Tensor | None = None,
                    data_labels: torch.Tensor | None = None) -> Path:
    """Save data (left) beside one panel per sample set (``{title: samples}``, or one tensor).

    The axes are those of the data; samples outside them are counted in the panel's title.
    ``labels`` (of one sample tensor) and ``data_labels`` colour the points by class.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"data": data, **(samples if isinstance(samples, dict) else {title: samples})}
    lim = 1.1 * float(data.abs().max())
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), sharex=True,
                             sharey=True, squeeze=False)
    colours = {"data": data_labels, **({} if isinstance(samples, dict) else {title: labels})}
    for ax, (name, pts) in zip(axes[0], panels.items()):
        pts = pts.detach().cpu().double()
        outside = int((pts.abs() > lim).any(dim=1).sum())
        c = colours.get(name)
        style = {} if c is None else {"c": c.cpu().numpy() % 20, "cmap": "tab20", "vmin": 0,
                                      "vmax": 19}
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=2, alpha=0.5, **style)
        ax.set_title(name + (f"\n{outside} outside the axes" if outside else ""))
        ax.set_aspect("equal")
    axes[0][0].set_xlim(-lim, lim)
    axes[0][0].set_ylim(-lim, lim)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path


MIN_CELL = 64  # pixels on a grid cell's longer side, at least
SEPARATOR = 160  # grey level of the lines between cells (neither the black nor the white of digits)


def grid_scale(height: int, width: int, *, min_cell: int = MIN_CELL) -> int:
    """The integer nearest-neighbour factor that makes an ``height x width`` image at least
    ``min_cell`` pixels on its longer side (1 for images already that large)."""
    return max(1, math.ceil(min_cell / max(height, width)))


def image_grid(
    x: torch.Tensor, *, nrow: int | None = None, scale: int | None = None, pad: int = 2,
    pad_value: int = SEPARATOR,
) -> np.ndarray:
    """Tile images into one 8-bit grid, each upscaled by nearest-neighbour.

    Args:
        x: images in ``[0, 1]`` (values outside are clamped).
        nrow: images in each row (torchvision's meaning); default ``ceil(sqrt(B))``.
        scale: the integer upscaling factor; default :func:`grid_scale` (a cell >= 64 px).
        pad: separator width in pixels, between cells and around the grid.
        pad_value: the separator's grey level (0..255).

    Returns:
        ``(H, W, C)`` uint8 with ``C`` 1 or 3; ``H = rows * (h * scale + pad) + pad``.

    Shapes:
        x: ``(B, C, h, w)``.
    """
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"image_grid expects a non-empty (B, C, H, W) batch, got {tuple(x.shape)}")
    b, c, h, w = x.shape
    nrow = max(1, min(nrow if nrow is not None else math.ceil(math.sqrt(b)), b))
    scale = grid_scale(h, w) if scale is None else int(scale)
    if scale < 1 or pad < 0:
        raise ValueError(f"image_grid needs scale >= 1 and pad >= 0, got {scale}, {pad}")
    pix = torch.round(x.detach().float().cpu().clamp(0, 1) * 255).to(torch.uint8)
    pix = pix.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)  # nearest-neighbour
    rows, ch, cw = math.ceil(b / nrow), h * scale, w * scale
    grid = np.full((rows * (ch + pad) + pad, nrow * (cw + pad) + pad, c), pad_value, np.uint8)
    for i, img in enumerate(pix.permute(0, 2, 3, 1).numpy()):
        r, q = divmod(i, nrow)
        top, left = pad + r * (ch + pad), pad + q * (cw + pad)
        grid[top:top + ch, left:left + cw] = img
    return grid


def save_grid(grid: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an :func:`image_grid` array as a PNG at ``path`` (not atomic; callers rename)."""
    from PIL import Image

    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    with open(path, "wb") as f:
        img.save(f, format="png", optimize=True)
    return Path(path)


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


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_table(
    cells: list[list[torch.Tensor]], *, col_titles: list[str] | None = None,
    row_labels: list[str] | None = None, title: str | None = None, cell_inches: float = 0.8,
):
    """A labelled table of images, one axes per cell, drawn with nearest-neighbour (no smoothing).

    Args:
        cells: rows of images, each ``(C, h, w)`` in ``[0, 1]`` (clamped), ``C`` 1 or 3.
        col_titles: one title per column (above the first row).
        row_labels: one label per row (left of the first column).
        title: the figure's title.
        cell_inches: a cell's size; at the 100 dpi of :func:`save_figure`, 0.8 in is 80 px.

    Returns:
        the matplotlib figure (save it with :func:`save_figure`).
    """
    plt = pyplot()
    rows, cols = len(cells), len(cells[0])
    label_w = 0.9 if row_labels else 0.1
    title_h = 0.3 + (0.22 * (title.count("\n") + 1) + 0.1 if title else 0.0)
    fig, axes = plt.subplots(
        rows, cols, squeeze=False, gridspec_kw={"wspace": 0.04, "hspace": 0.04},
        figsize=(cols * cell_inches + label_w + 0.1, rows * cell_inches + title_h + 0.1))
    for i, row in enumerate(cells):
        for j, img in enumerate(row):
            ax = axes[i][j]
            img = img.detach().float().cpu().clamp(0, 1)
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color("#999999")
            if i == 0 and col_titles:
                ax.set_title(col_titles[j], fontsize=9)
            if j == 0 and row_labels:
                ax.set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=9)
    w, h = fig.get_figwidth(), fig.get_figheight()
    fig.subplots_adjust(left=label_w / w, right=1 - 0.05 / w, bottom=0.05 / h, top=1 - title_h / h)
    if title:
        fit_title(fig, title)
    return fig


def fit_title(fig, title: str, *, fontsize: float = 10.0) -> None:
    """``fig.suptitle(title)`` at the top, its font shrunk until it fits the figure's width."""
    text = fig.suptitle(title, fontsize=fontsize, y=1 - 0.08 / fig.get_figheight(), va="top")
    width = text.get_window_extent(fig.canvas.get_renderer()).width
    if width > 0.97 * fig.bbox.width:
        text.set_fontsize(fontsize * 0.97 * fig.bbox.width / width)


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Save a matplotlib figure as a PNG at ``path`` and close it (not atomic; callers rename)."""
    plt = pyplot()
    with open(path, "wb") as f:
        fig.savefig(f, dpi=dpi, format="png")
    plt.close(fig)
    return Path(path)
