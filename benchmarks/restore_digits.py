"""Restoring held-out digits with a trained model: every method of ``sde_gen.inverse.restore``
on three linear measurements (bottom half unknown; 2x average pooling with noise; Gaussian blur
with noise), the same digits and seed for every method.

Real images have no exact posterior: this is the picture and the cost of each method on one
model, with the measurement residual ``||A x - y||`` and the distance to the held-out truth. The
comparisons against the exact posterior are in ``benchmarks/results/inverse.md``.

    python -m benchmarks.restore_digits [--run runs/digits_restore] [--n 6]

The run: ``sde-gen train --config configs/digits_vp.yaml --workdir runs/digits_restore
--set train.steps=1500`` (about 6 CPU minutes; the 3000-step recipe is better).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.common import RESULTS, header, table, write_result
from sde_gen.app.factory import build_data
from sde_gen.app.plots import image_table, save_figure
from sde_gen.app.runs import load_run
from sde_gen.inverse import Blur, Downsample, Mask, restore
from sde_gen.scaling import from_model, uint8_to_model

#: method label -> restore options (per task where they differ).
METHODS = {
    "DPS": dict(method="dps", clip_sample=1.0),
    "PiGDM": dict(method="pgdm", clip_sample=1.0),
    "MMPS": dict(method="mmps", clip_sample=1.0),
    "MMPS\n(dpm 50)": dict(method="mmps", clip_sample=1.0, solver="dpm", steps=50),
    "SMC K=16": dict(method="smc", particles=16, steps=100),
}


def tasks(shape: tuple[int, ...]) -> dict:
    """name -> (operator, noise std, ``show(x0, y)``: the measurement as an image of ``shape``;
    unknown pixels mid-grey, the pooled image upscaled by repetition)."""
    mask = torch.zeros(shape)
    mask[:, : shape[1] // 2] = 1  # top half known
    down = Downsample(2)
    return {
        "inpaint (bottom half), s = 0": (Mask(mask), 0.0,
                                          lambda x, y: x * mask),
        "2x super-resolution, s = 0.05": (down, 0.05,
                                          lambda x, y: down.adjoint(y) * 4),
        "deblur (sigma 1 px), s = 0.05": (Blur(1.0), 0.05, lambda x, y: y),
    }


def held_out_digits(default_run: str) -> tuple[argparse.Namespace, Any, torch.Tensor]:
    """``(args, run, x0)``: the command line (``--run``, ``--n``), the loaded run and ``n``
    test-split images of its data in the model's scale (the same ones for a given ``n``)."""
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=default_run)
    ap.add_argument("--n", type=int, default=6)
    args = ap.parse_args()
    run = load_run(args.run)
    run.model.eval()
    data = build_data(run.cfg.data, "test")
    g = torch.Generator().manual_seed(0)
    return args, run, uint8_to_model(data.x[torch.randperm(len(data), generator=g)[:args.n]])


def main() -> None:
    args, run, x0 = held_out_digits("runs/digits_restore")
    model = run.model
    rows, figures = [], []
    for k, (task, (op, s, show)) in enumerate(tasks(tuple(x0.shape[1:])).items()):
        y = op(x0) + s * torch.randn(op(x0).shape, generator=torch.Generator().manual_seed(7))
        methods = dict(METHODS)
        if s == 0 and isinstance(op, Mask):
            methods = {"replacement\n(pc 500)": dict(method="replacement", solver="pc",
                                                     steps=500), **methods}
        out = {}
        for name, kw in methods.items():
            t0 = time.perf_counter()
            res = restore(model, run.sde, y, op, noise_std=s, shape=tuple(x0.shape),
                          generator=torch.Generator().manual_seed(1), **kw)
            wall = time.perf_counter() - t0
            steps = res.nfe - 1 if "solver" not in kw else res.nfe  # the kernel's last: none
            backward = {"dps": steps, "pgdm": steps, "mmps": 6 * steps}.get(kw["method"], 0)
            rows.append({"task": task, "method": name.replace("\n", " "),
                         "forward evals": res.nfe * kw.get("particles", 1),
                         "backward passes": backward, "wall s": wall,
                         "mean ||A x - y||": float((op(res.x) - y).flatten(1).norm(dim=1).mean()),
                         "RMSE to truth": float((res.x - x0).pow(2).mean().sqrt())})
            out[name] = res.x.clamp(-1, 1)
            print(rows[-1], flush=True)
        shown = show(x0, y).clamp(-1, 1)
        cells = [[from_model(v[i]) for v in [x0, shown, *out.values()]] for i in range(args.n)]
        fig = image_table(cells, col_titles=["held-out", "measured", *methods],
                          title=f"Restoring held-out digits: {task}", cell_inches=0.9)
        png = RESULTS / f"restore_digits_{k}.png"
        save_figure(fig, png)
        figures.append(f"![{task}]({png.name})")
    text = (header("Restoring held-out digits with every inverse-problem method")
            + f"- run: `{args.run}` (step {run.step})\n"
            f"- {args.n} held-out test digits, the same noise draw and seed for every method; "
            f"200 log-SNR steps of DDPM's kernel unless stated (dpm: DPM-Solver++ on the guided "
            f"model); DPS, PiGDM and MMPS clip the guided x0 to [-1, 1] (`clip_sample=1`, what "
            f"`sde-gen restore` does on image runs); per image: forward evaluations of the network "
            f"(SMC: K particles each) and the backward passes of the guidance (DPS, PiGDM: one "
            f"per step; MMPS: cg_steps + 1 = 6)\n\n" + table(rows, list(rows[0])) + "\n\n"
            + "\n\n".join(figures) + "\n")
    print(table(rows, list(rows[0])))
    write_result("restore_digits", text)


if __name__ == "__main__":
    main()
