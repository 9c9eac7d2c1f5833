"""The figures of an image run (:mod:`.figures`): labelled tables of images, nearest-neighbour.

Refs: [Ho20] Sec. 4.3 (Fig. 6), Sec. 4.4 (Fig. 8); [Song21ddim] Sec. 5.2, 5.3.
"""

from __future__ import annotations

import torch

from .figure_context import (
    FORWARD_TIMES,
    INTERP_LEVELS,
    PROGRESSIVE_TIMES,
    FigureContext,
    nearest_index,
    time_label,
)
from .plots import image_table

INTERP_WEIGHTS = torch.linspace(0, 1, 9)


def image_figures(ctx: FigureContext, rows: int) -> dict[str, object]:
    """Every image figure (a matplotlib figure each) with ``rows`` examples a figure."""
    pairs = max(1, rows // 2)
    x0 = ctx.data(2 * pairs, offset=3)
    return {
        "forward": forward(ctx, rows),
        "progressive": progressive(ctx, max(1, rows // 2)),
        "ddim_consistency": ddim_consistency(ctx, rows),
        "interpolation_ode": interpolation_ode(ctx, x0[:pairs], x0[pairs:]),
        "interpolation_ddpm": interpolation_ddpm(ctx, x0[:min(pairs, 2)],
                                                 x0[pairs:pairs + min(pairs, 2)]),
    }


def forward(ctx: FigureContext, rows: int):
    """``x_t`` of ``rows`` data images at :data:`FORWARD_TIMES` (the same noise along a row),
    divided by ``sqrt(alpha_t^2 + sigma_t^2)`` for display (1 for VP; VE's ``x_t`` would be
    mostly clipped otherwise)."""
    x0 = ctx.data(rows, offset=1)
    noise = torch.randn(x0.shape, generator=ctx.generator(1), device=x0.device)
    cols, rescaled = [], False
    for t in FORWARD_TIMES:
        alpha, sigma = ctx.sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64))
        scale = float(torch.sqrt(alpha**2 + sigma**2))
        rescaled |= abs(scale - 1) > 1e-3
        cols.append(ctx.show(ctx.diffuse(x0, t, noise) / scale))
    note = " (shown divided by sqrt(alpha_t^2 + sigma_t^2))" if rescaled else ""
    return image_table(
        [[c[i] for c in cols] for i in range(rows)],
        col_titles=[time_label(t) for t in FORWARD_TIMES],
        title=r"Forward process $x_t = \alpha_t x_0 + \sigma_t \epsilon$ on held-out data, "
              r"one $\epsilon$ per row" + note)


def progressive(ctx: FigureContext, k: int):
    """``x_t`` and ``x0_hat(x_t, t)`` along one ancestral trajectory for ``k`` samples (two rows
    each), and the final sample ([Ho20] Fig. 6)."""
    shape = (k, *ctx.data(1).shape[1:])
    res = ctx.ancestral(ctx.prior(shape, offset=2), offset=2, return_trajectory=True)
    idx = sorted({nearest_index(res.ts, t) for t in PROGRESSIVE_TIMES})
    cells, labels = [], []
    for i in range(k):
        cells.append([ctx.show(res.trajectory[j][i]) for j in idx] + [ctx.show(res.x[i])])
        t = [res.ts[j].to(res.trajectory.dtype).expand(1).to(res.x.device) for j in idx]
        cells.append([ctx.show(ctx.x0_hat(res.trajectory[j][i:i + 1], tj)[0])
                      for j, tj in zip(idx, t)] + [ctx.show(res.x[i])])
        labels += [f"#{i + 1}  $x_t$", r"$\hat{x}_0(x_t, t)$"]
    return image_table(
        cells, row_labels=labels,
        col_titles=[time_label(float(res.ts[j])) for j in idx] + ["sample"],
        title=f"Progressive generation: one DDPM ancestral trajectory ({len(res.ts) - 1} steps), "
              r"$x_t$ and its prediction $\hat{x}_0$")


def ddim_consistency(ctx: FigureContext, rows: int):
    """The same ``x_T`` by DDIM (eta = 0) with the steps of :meth:`FigureContext.ddim_steps` and
    by DDPM's chain ([Song21ddim] Sec. 5.2)."""
    x_T = ctx.prior((rows, *ctx.data(1).shape[1:]), offset=4)
    steps = ctx.ddim_steps()
    cols = [ctx.show(ctx.ddim(x_T, s).x) for s in steps]
    ddpm = ctx.ancestral(x_T, offset=4)
    cols.append(ctx.show(ddpm.x))
    return image_table(
        [[c[i] for c in cols] for i in range(rows)],
        col_titles=[f"{s} steps" for s in steps] + [f"DDPM\n{len(ddpm.ts) - 1} steps"],
        title="DDIM consistency: one $x_T$ per row,\n"
              rf"DDIM ($\eta = 0$) with {_step_range(steps)} steps, and DDPM's chain")


def _step_range(steps: tuple[int, ...]) -> str:
    return f"{steps[0]} to {steps[-1]}" if len(steps) > 1 else str(steps[0])


def _pair_table(ctx, x0, x1, mixed, row_labels, title, weight):
    cells = [[ctx.show(x0[i])] + [ctx.show(m[i]) for m in mixed] + [ctx.show(x1[i])]
             for i in range(x0.shape[0])]
    return image_table(
        cells, row_labels=row_labels, title=title,
        col_titles=["data A"] + [f"{weight} = {float(w):g}" for w in INTERP_WEIGHTS] + ["data B"])


def interpolation_ode(ctx: FigureContext, x0: torch.Tensor, x1: torch.Tensor):
    """Decoded slerps of PF-ODE latents ([Song21ddim] Sec. 5.3); the ends are reconstructions."""
    mixed = ctx.ode_interpolation(x0, x1, INTERP_WEIGHTS)
    return _pair_table(ctx, x0, x1, mixed, None, weight=r"$\alpha$",
                       title="Interpolation through the probability-flow ODE: slerp of the "
                             r"encoded latents $x_T$ of A and B, decoded")


def interpolation_ddpm(ctx: FigureContext, x0: torch.Tensor, x1: torch.Tensor):
    """DDPM interpolation at each level of :data:`INTERP_LEVELS` (on the chain:
    :meth:`FigureContext.interp_times`) ([Ho20] Sec. 4.4, Fig. 8)."""
    levels = ctx.interp_times(INTERP_LEVELS)
    by_level = [ctx.ddpm_interpolation(x0, x1, t, INTERP_WEIGHTS, offset=10 + k)
                for k, t in enumerate(levels)]  # each (weights, pairs, *D)
    rows_a, rows_b, mixed, labels = [], [], [], []
    for p in range(x0.shape[0]):
        for t, m in zip(levels, by_level):
            rows_a.append(x0[p])
            rows_b.append(x1[p])
            mixed.append(m[:, p])
            labels.append(f"pair {p + 1}\n{time_label(t)}")
    mixed = torch.stack(mixed, dim=1)  # (weights, rows, *D)
    return _pair_table(ctx, torch.stack(rows_a), torch.stack(rows_b), mixed, labels,
                       weight=r"$\lambda$",
                       title=r"DDPM interpolation: $(1-\lambda)\,x_t + \lambda\,x'_t$ at noise "
                             r"level $t$, denoised by the reverse chain (its noise fixed)")
