"""End-to-end race: train for a fixed wall-clock budget, then images/s, test bits/dim, DDIM grid.

    # GPU (the issue's setting): DDPM-size U-Net on the JPEG CIFAR-10 of ../shared/data, 4 minutes
    python benchmarks/cifar10_budget.py --device cuda --seconds 240 --preset ddpm_cifar10 \\
        --data-path ../shared/data/cifar10.npz --n-bpd 256
    # CPU smoke run (default): tiny U-Net on the offline digits, 60 s
    python benchmarks/cifar10_budget.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import RESULTS, header, table, write_result
from benchmarks.peers import resolve_device
from sde_gen.app.config import load_config
from sde_gen.app.factory import data_shape
from sde_gen.app.generate import generate
from sde_gen.app.likelihood_report import evaluate_likelihood
from sde_gen.app.outputs import write_samples
from sde_gen.app.runs import load_run
from sde_gen.app.train import train

PRESETS = {
    "ddpm_cifar10": ["model.ch=128", "model.ch_mult=[1,2,2,2]", "model.num_res_blocks=2",
                     "model.attn_resolutions=[16]", "model.dropout=0.1"],
    "tiny": ["model.ch=32", "model.ch_mult=[1,2]", "model.num_res_blocks=1",
             "model.attn_resolutions=[4]", "model.dropout=0.0"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, ...")
    p.add_argument("--seconds", type=float, default=60.0, help="training budget")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--data-path", default="", help="CIFAR-10 .npz (default: offline digits)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--n-bpd", type=int, default=64)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--workdir", default="", help="keep the run here (default: a temp dir)")
    args = p.parse_args()
    args.device = str(resolve_device(args.device))
    data = (["data.name=cifar10", f"data.path={args.data_path}", "data.flip=true"]
            if args.data_path else ["data.name=digits"])
    sets = data + PRESETS[args.preset] + [
        "model.name=unet", f"train.batch_size={args.batch}", "train.lr=2e-4", "train.warmup=500",
        "train.ema_decay=0.999", "train.steps=100000000", f"train.max_seconds={args.seconds}",
        "train.log_every=50", "train.ckpt_every=100000000", f"train.device={args.device}",
        f"train.compile={'true' if args.compile else 'false'}"]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="budget_"))
    res = train(load_config(None, sets), workdir, progress=True)
    recs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    img_s = res.step * args.batch / args.seconds
    run = load_run(workdir, device=args.device)
    grid = RESULTS / "cifar10_budget_samples.png"
    gen = generate(run.model, run.sde, 64, data_shape(run.cfg.data), "ddim", steps=49,
                   device=args.device, progress=False)
    write_samples(gen.x, run.cfg, grid, title="DDIM 50 NFE")
    grid.with_suffix(".npz").unlink(missing_ok=True)
    ll = evaluate_likelihood(run, n=args.n_bpd, batch_size=min(64, args.n_bpd), split="test",
                             device=args.device, progress=False)
    rows = [{"steps": res.step, "images/s (end to end)": img_s,
             "last logged loss": recs[-1]["loss"] if recs else float("nan"),
             "test bpd": ll["bpd"], "bpd stderr": ll["bpd_stderr"],
             "likelihood s/image": ll["seconds"] / ll["n"], "NFE/batch": ll["nfe"]}]
    text = header("Fixed wall-clock budget: train, then bits/dim and a DDIM grid", args.device)
    text += (f"\nData: {'CIFAR-10 ' + args.data_path if args.data_path else 'digits (offline)'}; "
             f"U-Net `{args.preset}`; batch {args.batch}; budget {args.seconds:g} s; test bits/dim "
             f"over {ll['n']} images (uniform dequantization, rtol=atol=1e-5, Hutchinson); "
             f"DDIM grid: `cifar10_budget_samples.png`.\n\n")
    text += table(rows, list(rows[0]))
    if args.device == "cpu":
        text += ("\n\nCPU smoke run only: the issue's race (DDPM U-Net, CIFAR-10, 4 minutes on an "
                 "H100, against diffusers' 1,926 img/s and 3.10 bits/dim) needs the GPU device.\n")
    print(text)
    write_result("cifar10_budget", text + "\n")


if __name__ == "__main__":
    main()
