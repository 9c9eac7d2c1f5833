"""The figures of a 2-D run (:mod:`.figures`): scatter and path versions.

Refs: [Ho20] Sec. 4.3 (Fig. 6), Sec. 4.4 (Fig. 8); [Song21ddim] Sec. 5.2, 5.3; [Song21] Fig. 2.
"""

from __future__ import annotations

import torch

from .figure_context import INTERP_LEVELS, FigureContext, nearest_index, time_label
from .plots import fit_title, pyplot

TOY_TIMES = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)
TOY_PROGRESSIVE_TIMES = (1.0, 0.6, 0.4, 0.3, 0.2, 0.1)
PATHS = 12  # reverse trajectories drawn as lines
PATH_STEPS = 100  # intervals of the drawn chains (DDPM's respaced; DDIM's)
PAIRS = 6  # interpolated pairs
TOY_WEIGHTS = torch.linspace(0, 1, 33)
DATA_STYLE = {"s": 2, "color": "#bbbbbb", "alpha": 0.5, "linewidths": 0}


def toy_figures(ctx: FigureContext, n: int) -> dict[str, object]:
    """Every 2-D figure (a matplotlib figure each) with ``n`` points a scatter."""
    data = ctx.data(n, offset=1).cpu()
    return {
        "forward": forward(ctx, data),
        "progressive": progressive(ctx, n, data),
        "trajectories": trajectories(ctx, data),
        "ddim_consistency": ddim_consistency(ctx, n, data),
        "interpolation": interpolation(ctx, data),
    }


def _panels(rows: int, cols: int, size: float = 2.6):
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(cols * size, rows * size + 0.5))
    for ax in axes.flat:
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    return fig, axes


def _finish(fig, title: str):
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    fit_title(fig, title)
    return fig


def _lim(ax, lim: float) -> None:
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)


def _scatter(ax, pts: torch.Tensor, **kw) -> None:
    pts = pts.detach().float().cpu()
    ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), **{"s": 2, "alpha": 0.5, "linewidths": 0,
                                                         **kw})


def _data_lim(data: torch.Tensor) -> float:
    return 1.15 * float(data.abs().max())


def _marginal_lim(ctx: FigureContext, data: torch.Tensor, t: float) -> float:
    """Axes for ``x_t``: the data scaled by ``alpha_t`` plus four ``sigma_t``."""
    alpha, sigma = ctx.sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64))
    return float(alpha) * _data_lim(data) + 4 * float(sigma)


def forward(ctx: FigureContext, data: torch.Tensor):
    """``x_t`` of the data at :data:`TOY_TIMES`."""
    noise = torch.randn(data.shape, generator=torch.Generator().manual_seed(ctx.seed + 1))
    fig, axes = _panels(1, len(TOY_TIMES))
    for ax, t in zip(axes[0], TOY_TIMES):
        _scatter(ax, ctx.diffuse(data, t, noise))
        _lim(ax, _marginal_lim(ctx, data, t))
        ax.set_title(time_label(t), fontsize=10)
    return _finish(fig, r"Forward process on the data: $x_t = \alpha_t x_0 + \sigma_t \epsilon$")


def progressive(ctx: FigureContext, n: int, data: torch.Tensor):
    """``x_t`` (top) and ``x0_hat(x_t, t)`` (bottom, over the data in grey) along one ancestral
    trajectory of ``n`` points ([Ho20] Fig. 6)."""
    res = ctx.ancestral(ctx.prior((n, 2), offset=2), offset=2, return_trajectory=True)
    idx = sorted({nearest_index(res.ts, t) for t in TOY_PROGRESSIVE_TIMES})
    fig, axes = _panels(2, len(idx) + 1, size=2.3)
    for j, k in enumerate(idx):
        x_t, t = res.trajectory[k], float(res.ts[k])
        tt = res.ts[k].to(x_t.dtype).expand(x_t.shape[0]).to(x_t.device)
        _scatter(axes[0][j], x_t)
        _lim(axes[0][j], _marginal_lim(ctx, data, t))
        axes[0][j].set_title(time_label(t), fontsize=10)
        _scatter(axes[1][j], data, **DATA_STYLE)
        _scatter(axes[1][j], ctx.x0_hat(x_t, tt), color="C3")
        _lim(axes[1][j], _data_lim(data))
    for r in (0, 1):
        _scatter(axes[r][-1], data, **DATA_STYLE)
        _scatter(axes[r][-1], res.x, color="C3" if r else "C0")
        _lim(axes[r][-1], _data_lim(data))
    axes[0][-1].set_title("sample", fontsize=10)
    axes[0][0].set_ylabel(r"$x_t$", fontsize=11)
    axes[1][0].set_ylabel(r"$\hat{x}_0(x_t, t)$", fontsize=11)
    return _finish(fig, "Progressive generation: one DDPM ancestral run "
                        f"({len(res.ts) - 1} steps); "
                        r"top $x_t$, bottom its prediction $\hat{x}_0$ (data in grey)")


def _paths(ax, traj: torch.Tensor, ts: torch.Tensor, cmap: str = "viridis"):
    """Lines of ``traj (K, B, 2)`` coloured by the grid time ``ts (K,)``."""
    import numpy as np
    from matplotlib.collections import LineCollection

    traj = traj.detach().float().cpu().numpy()
    seg = np.stack([traj[:-1], traj[1:]], axis=2)  # (K-1, B, 2, 2)
    t_mid = ((ts[:-1] + ts[1:]) / 2).double().cpu().numpy()
    lines = LineCollection(seg.transpose(1, 0, 2, 3).reshape(-1, 2, 2), cmap=cmap,
                           linewidths=0.7)
    lines.set_array(np.tile(t_mid, traj.shape[1]))
    lines.set_clim(0, float(ts[0]))
    ax.add_collection(lines)
    return lines


def trajectories(ctx: FigureContext, data: torch.Tensor):
    """:data:`PATHS` paths from the same ``x_T``: DDPM's chain and DDIM's (the PF-ODE)."""
    x_T = ctx.prior((PATHS, 2), offset=5)
    steps = ctx.fit_steps(PATH_STEPS)
    ts = ctx.chain_from(ctx.sde.T, steps)
    runs = {f"reverse SDE: DDPM ancestral,\n{len(ts) - 1} respaced steps":
            ctx.ancestral(x_T, offset=5, ts=ts, return_trajectory=True),
            f"PF-ODE: DDIM ($\\eta = 0$),\n{steps} steps":
            ctx.ddim(x_T, steps, return_trajectory=True)}
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, squeeze=False, figsize=(8.4, 4.3), layout="constrained")
    lim = max(_data_lim(data), 1.1 * float(x_T.abs().max()))
    lines = None
    for ax, (name, res) in zip(axes[0], runs.items()):
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        _scatter(ax, data, **DATA_STYLE)
        lines = _paths(ax, torch.cat([res.trajectory, res.x[None]]),
                       torch.cat([res.ts, res.ts[-1:] * 0]))
        _scatter(ax, x_T, color="black", s=12, alpha=1, marker="x", linewidths=0.8)
        _scatter(ax, res.x, color="C3", s=14, alpha=1)
        _lim(ax, lim)
        ax.set_title(name, fontsize=10)
    fig.colorbar(lines, ax=axes[0].tolist(), shrink=0.8, label="t")
    fig.suptitle(r"Reverse trajectories from the same $x_T$ (x) to the samples (red), "
                 "data in grey", fontsize=10)
    return fig


def ddim_consistency(ctx: FigureContext, n: int, data: torch.Tensor):
    """The same ``x_T`` decoded by DDIM with the steps of :meth:`FigureContext.ddim_steps` and
    DDPM's chain; each point coloured by the angle of its ``x_T`` ([Song21ddim] Sec. 5.2)."""
    x_T = ctx.prior((n, 2), offset=4)
    colour = torch.atan2(x_T[:, 1], x_T[:, 0]).cpu().numpy()
    style = {"c": colour, "cmap": "hsv", "vmin": -3.1416, "vmax": 3.1416, "s": 3, "alpha": 0.8}
    steps = ctx.ddim_steps()
    outs = {f"DDIM, {s} steps": ctx.ddim(x_T, s).x for s in steps}
    ddpm = ctx.ancestral(x_T, offset=4)
    outs[f"DDPM, {len(ddpm.ts) - 1} steps"] = ddpm.x
    fig, axes = _panels(1, len(outs) + 1)
    _scatter(axes[0][0], x_T, **style)
    _lim(axes[0][0], 1.1 * float(x_T.abs().max()))
    axes[0][0].set_title(r"$x_T$ (colour = angle)", fontsize=10)
    for ax, (name, x) in zip(axes[0][1:], outs.items()):
        _scatter(ax, x, **style)
        _lim(ax, _data_lim(data))
        ax.set_title(name, fontsize=10)
    which = f"{steps[0]} to {steps[-1]}" if len(steps) > 1 else str(steps[0])
    return _finish(fig, r"DDIM consistency: the same $x_T$ (coloured by angle) decoded with "
                        f"{which} DDIM steps keeps its colours; DDPM's chain mixes them")


def interpolation(ctx: FigureContext, data: torch.Tensor):
    """Interpolation paths between :data:`PAIRS` data pairs: slerp of PF-ODE latents, and DDPM's
    mix at each level of :data:`INTERP_LEVELS` ([Song21ddim] Sec. 5.3; [Ho20] Sec. 4.4)."""
    ends = ctx.data(6 * PAIRS, offset=3)
    a, b = ends[:3 * PAIRS], ends[3 * PAIRS:]
    z = ctx.encode(torch.cat([a, b]))  # slerp is ill-defined between (near-)antipodal latents
    cos = torch.nn.functional.cosine_similarity(z[:3 * PAIRS], z[3 * PAIRS:], dim=1)
    keep = (cos > -0.8).nonzero()[:PAIRS, 0]
    x0, x1 = a[keep], b[keep]
    paths = {"PF-ODE: slerp of the\nencoded latents": ctx.ode_interpolation(x0, x1, TOY_WEIGHTS)}
    for k, t in enumerate(ctx.interp_times(INTERP_LEVELS)):
        paths[f"DDPM: mix at {time_label(t)},\nthen the reverse chain"] = ctx.ddpm_interpolation(
            x0, x1, t, TOY_WEIGHTS, offset=10 + k)
    fig, axes = _panels(1, len(paths), size=3.2)
    for ax, (name, path) in zip(axes[0], paths.items()):
        _scatter(ax, data, **DATA_STYLE)
        path = path.cpu()
        for p in range(x0.shape[0]):
            colour = f"C{p % 10}"
            ax.plot(path[:, p, 0].numpy(), path[:, p, 1].numpy(), ".-", color=colour, lw=0.6,
                    ms=3, alpha=0.8)
            ax.plot(*x0[p].cpu().numpy(), "o", color=colour, ms=5)
            ax.plot(*x1[p].cpu().numpy(), "s", color=colour, ms=5)
        _lim(ax, _data_lim(data))
        ax.set_title(name, fontsize=10)
    return _finish(fig, "Interpolation from data A (circle) to B (square): each line joins one "
                        f"pair's outputs for {len(TOY_WEIGHTS)} weights from 0 to 1 (pairs with "
                        "near-antipodal latents skipped)")
