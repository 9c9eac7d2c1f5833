"""Inpainting a trained digits model: each method on the same held-out digits, bottom half unknown.

There is no exact answer for real images; this is the picture (and the cost) of each method on
one model: replacement with PC ([Song21] App. I.2), RePaint's resampling ([Lugmayr22]) and the
twisted SMC sampler ([Wu23], [Cardoso23]). The exact comparisons are in
``benchmarks/results/conditional.md``.

    python -m benchmarks.inpaint_digits [--run runs/images_quality/digits/after]
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import RESULTS, header, table, write_result
from benchmarks.restore_digits import held_out_digits
from sde_gen.app.plots import image_table, save_figure
from sde_gen.sampling import impute
from sde_gen.scaling import from_model

METHODS = {  # name (a column title: two short lines) -> impute keyword arguments
    "replacement\npc 500": dict(solver="pc", steps=500),
    "RePaint\n200 x 5": dict(solver="ancestral", steps=200, resample=5),
    "SMC\nK=64": dict(method="smc", particles=64),
}


def main() -> None:
    args, run, x0 = held_out_digits("runs/images_quality/digits/after")
    model = run.model
    mask = torch.zeros(1, *x0.shape[2:])
    mask[:, : x0.shape[2] // 2] = 1  # top half known
    rows, results = [], {}
    for name, kw in METHODS.items():
        t0 = time.perf_counter()
        res = impute(model, run.sde, x0, mask, generator=torch.Generator().manual_seed(1), **kw)
        wall = time.perf_counter() - t0
        evals = res.nfe * kw.get("particles", 1)
        mse_known = float(((res.x - x0) * mask).pow(2).mean())
        rows.append({"method": name.replace("\n", " "), "NFE": res.nfe,
                     "evaluations per image": evals, "wall s": wall,
                     "known-pixel error": mse_known})
        results[name] = res.x
    masked = x0 * mask  # the unknown half shown mid-grey
    cells = [[from_model(v[i]) for v in [x0, masked, *results.values()]] for i in range(args.n)]
    fig = image_table(cells, col_titles=["held-out", "known\n(top half)", *METHODS],
                      title="Inpainting the bottom half of held-out digits", cell_inches=0.9)
    png = RESULTS / "inpaint_digits.png"
    save_figure(fig, png)
    text = (header("Inpainting a trained digits model") + f"- run: `{args.run}`\n"
            f"- {args.n} held-out test digits, top half known, same seed for every method\n\n"
            + table(rows, list(rows[0])) + "\n\n![inpainting](inpaint_digits.png)\n")
    print(table(rows, list(rows[0])))
    write_result("inpaint_digits", text)


if __name__ == "__main__":
    main()
