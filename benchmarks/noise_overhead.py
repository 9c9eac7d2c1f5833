"""What per-example noise costs: the same sampler with one ``torch.Generator`` for the batch and
with :class:`~sde_gen.noise.IndexedGenerator` (sample i depends on (seed, i) alone).

Cases: the 2-D quickstart MLP (batch 512) and the digits U-Net preset (1x8x8, batch 64), each
with ``ancestral`` (one noise draw per step) and ``ddim`` (the prior draw only), and the pure
noise draw per step. Reported: wall seconds per run (median of ``--repeats``), the overhead
ratio indexed / single, and the largest difference between samples 0..B-1 drawn as one batch
and as batches of 7 (0 for the indexed generator, up to float rounding of the network).

Usage::

    python -m benchmarks.noise_overhead            # CPU, one thread
    python -m benchmarks.noise_overhead --quick
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import header, table, write_result
from sde_gen.nets.mlp import MLP
from sde_gen.nets.unet import UNet
from sde_gen.noise import IndexedGenerator, block_size_for, randn
from sde_gen.parameterization import ScoreModel
from sde_gen.sampling import sample
from sde_gen.sde import VPSDE


def _models(sde: VPSDE) -> dict[str, tuple[torch.nn.Module, tuple[int, ...], int]]:
    torch.manual_seed(0)
    mlp = ScoreModel(MLP(2, width=128, depth=3), sde).eval()
    unet = ScoreModel(UNet(1, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                           resolution=8, dropout=0.0, groups=8), sde).eval()
    return {"2-D MLP": (mlp, (2,), 512), "digits U-Net 1x8x8": (unet, (1, 8, 8), 64)}


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _generator(kind: str, b: int, shape: tuple[int, ...], start: int = 0):
    if kind == "single":
        return torch.Generator().manual_seed(0)
    return IndexedGenerator(0, start, b, block=block_size_for(shape))


def _batch_gap(model, sde, solver: str, steps: int, shape: tuple[int, ...], b: int) -> float:
    """Max |x_whole - x_batched| for samples 0..b-1 drawn at once and in batches of 7."""
    def run(start: int, n: int) -> torch.Tensor:
        g = IndexedGenerator(0, start, n, block=block_size_for(shape))
        return sample(model, sde, (n, *shape), solver, steps=steps, generator=g).x

    whole = run(0, b)
    parts = torch.cat([run(s, min(7, b - s)) for s in range(0, b, 7)])
    return float((whole - parts).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10 steps, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = 10, 1
    torch.set_num_threads(1)
    sde = VPSDE()
    rows = []
    with torch.no_grad():
        for name, (model, shape, b) in _models(sde).items():
            for solver in ("ancestral", "ddim", "noise only"):
                secs = {}
                for kind in ("single", "indexed"):
                    if solver == "noise only":
                        def fn(kind=kind):
                            g = _generator(kind, b, shape)
                            for _ in range(args.steps):
                                randn((b, *shape), g)
                    else:
                        def fn(kind=kind, solver=solver):
                            sample(model, sde, (b, *shape), solver, steps=args.steps,
                                   generator=_generator(kind, b, shape))
                    secs[kind] = _time(fn, args.repeats)
                gap = (_batch_gap(model, sde, solver, args.steps, shape, min(b, 64))
                       if solver != "noise only" else float("nan"))
                rows.append({"model": name, "batch": b, "solver": solver,
                             "single generator s": secs["single"],
                             "indexed s": secs["indexed"],
                             "indexed / single": secs["indexed"] / secs["single"],
                             "max |batched - whole|": gap})
                print(rows[-1], flush=True)
    cols = ["model", "batch", "solver", "single generator s", "indexed s", "indexed / single",
            "max |batched - whole|"]
    text = (header("Per-example noise: IndexedGenerator against one torch.Generator") + "\n"
            + f"{args.steps} grid intervals per run; median of {args.repeats} runs; "
            "`noise only` is the draw of one (B, *D) noise tensor per step without a model.\n\n"
            + table(rows, cols) + "\n\n"
            "`max |batched - whole|`: samples 0..63 drawn as one batch and as batches of 7 with "
            "the indexed generator (the noise is identical; what remains is the float32 rounding "
            "of the network's batched matrix products).\n")
    write_result("noise_overhead", text)


if __name__ == "__main__":
    main()
