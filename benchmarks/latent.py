"""Pixel diffusion against latent diffusion (f = 2 and f = 4) on MNIST at an equal CPU budget.

    python -m benchmarks.latent                 # ~22 CPU-minutes of one thread
    python -m benchmarks.latent --smoke         # the pipeline in a minute (numbers meaningless)

Every method gets the same budget of single-thread CPU seconds (``--budget``) for everything it
trains: the pixel model all of it; a latent model its first stage (``--ae-budget``), the encoding
of the training images, and the score model in what is left. Step counts come from short probes
of each network (:func:`benchmarks.images_quality.calibrate`), then the CPU time actually spent is
measured and reported. All train on the same first ``--n-train`` MNIST training images (from
``../shared/data/mnist.npz``), with the image recipe of ``configs/mnist_vp.yaml`` on the reduced
CPU U-Net of ``benchmarks/images_quality.py`` (ch 32; latents: sigma_data 1, since they are
scaled to unit variance).

Scores: FD-classifier (the Frechet distance of features of sde-gen's MNIST classifier, trained on
all 60k training images for ``--classifier-steps``; not FID, comparable only within this file)
of ``--n-samples`` DDIM samples at 50 NFE against as many training images, its floor (held-out
test images against the same training images), and for the latent models the FD-classifier and
PSNR of the autoencoder's reconstructions of test images: what a perfect latent score model
would reach. Sample time per image at the same 50 NFE, CPU seconds, decoding included. Grids
of 64 samples go beside the results file.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmarks.common import RESULTS, header, table, write_result
from benchmarks.images_quality import save_grid
from sde_gen.app.config import load_config
from sde_gen.app.generate import generate
from sde_gen.app.latent_report import evaluate_autoencoder
from sde_gen.app.runs import load_run
from sde_gen.app.sample_quality import _features, load_or_train_classifier
from sde_gen.app.train import train
from sde_gen.data.images import load_images
from sde_gen.metrics import frechet_distance
from sde_gen.scaling import uint8_to_model

ROOT = Path(__file__).resolve().parents[1]
NAME = "latent"
MNIST = Path("/work/shared/data/mnist.npz")
#: Every run: CPU, seed 0, no grids during training and a final grid of 4 (an image run always
#: writes one; 64 pixel samples at 50 NFE would cost ~25 CPU s of the budget).
COMMON = ["train.device=cpu", "train.seed=0", "train.sample_every=0", "train.ema_decay=0.999",
          "train.batch_size=32", "train.lr=0.001", "train.warmup=100", "train.sample_n=4",
          "train.log_every=50"]
#: The score model of every row: the image recipe (EDM preconditioning, log-SNR conditioning,
#: EDM weighting, log-normal times) on the reduced CPU U-Net of images_quality.py.
UNET = ["model.name=unet", "model.ch=32", "model.num_res_blocks=1", "model.dropout=0.0",
        "model.attn_resolutions=[7]"]
#: Each method: its first stage (None: pixels) and the score model's extra keys.
METHODS: dict[str, dict] = {
    "pixel": {"ae": None, "unet": ["model.ch_mult=[1, 2]", "model.sigma_data=0.5"]},
    "ldm-f2": {"ae": ["model.factor=2", "model.latent_channels=2", "model.ch_mult=[1, 2]"],
               "unet": ["model.ch_mult=[1, 2]", "model.sigma_data=1.0"]},
    "ldm-f4": {"ae": ["model.factor=4", "model.latent_channels=4", "model.ch_mult=[1, 2, 2]"],
               "unet": ["model.ch_mult=[1]", "model.sigma_data=1.0"]},
}
AE_COMMON = ["model.name=autoencoder", "model.ch=16", "model.num_res_blocks=1",
             "train.kl_weight=1e-6"]


def _subset(path: Path, src: Path, n: int, n_test: int | None = None) -> Path:
    """The first ``n`` training images (and ``n_test`` test images) of ``src`` as an .npz."""
    if not path.exists():
        d = np.load(src)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, x_train=d["x_train"][:n], y_train=d["y_train"][:n],
                 x_test=d["x_test"][:n_test], y_test=d["y_test"][:n_test])
    return path


def _cpu(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def _cached(path: Path, compute: Callable[[], dict]) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


def _config(sets: list[str], steps: int):
    return load_config(ROOT / "configs" / "mnist_vp.yaml" if "model.name=unet" in sets else None,
                       [*sets, f"train.steps={steps}", f"train.ckpt_every={steps}"])


def _steps(sets: list[str], budget: float, probe: int, probe_sets: list[str] = (),
           min_gap: float = 5.0) -> dict:
    """Steps of ``sets`` that fill ``budget`` CPU seconds: the CPU cost of a step is the
    difference of a ``p``-step and a ``2p``-step run, ``p`` grown 4x until that difference is at
    least ``min_gap`` seconds (the fixed cost of a run varies by a few tenths of a second);
    ``probe_sets``: what the probes change, e.g. a small dataset so that encoding it is free.
    The fixed cost (data, model, final grid) is charged to the budget too."""
    def run_steps(k: int) -> float:
        with tempfile.TemporaryDirectory() as d:
            return _cpu(lambda: train(_config([*sets, *probe_sets], k), d, progress=False))[1]

    run_steps(2)  # warm-up: imports, data, caches
    for _ in range(4):
        t1, t2 = run_steps(probe), run_steps(2 * probe)
        if t2 - t1 >= min_gap:
            break
        probe *= 4
    per_step = max((t2 - t1) / probe, 1e-3)
    fixed = max(t1 - probe * per_step, 0.0)
    return {"steps": max(2 * probe, int((budget - fixed) / per_step)), "probe_step_s": per_step,
            "probe_fixed_s": fixed, "probe": probe}


def train_method(name: str, args) -> dict:
    """Train one method's models in ``<runs>/<name>/`` within the budget; their CPU seconds."""
    spec, root = METHODS[name], args.runs / name
    data = ["data.name=npz", f"data.path={args.data}"]
    out: dict = {"method": name}
    left = args.budget
    ae_dir = root / "autoencoder"
    if spec["ae"] is not None:
        ae_sets = [*AE_COMMON, *spec["ae"], *COMMON, *data]
        cal = _cached(root / "ae_calibration.json",
                      lambda: _steps(ae_sets, args.ae_budget, args.probe))
        res, cpu = _cpu(lambda: train(_config(ae_sets, cal["steps"]), ae_dir, progress=False))
        out.update(ae_steps=res.step, ae_cpu_s=cpu)
        left -= cpu
    sets = [*UNET, *spec["unet"], *COMMON, *data]
    probe_sets = []
    if spec["ae"] is not None:
        sets.append(f"model.autoencoder={ae_dir}")
        probe_sets = [f"data.path={args.probe_data}"]
        # The encoding of the training images is part of the latent model's cost: measured once.
        opened = load_run(ae_dir)
        x = load_images("npz", path=args.data).x[:2000]
        _, enc = _cpu(lambda: opened.model.posterior(uint8_to_model(x)))
        left -= enc * args.n_train / len(x)
    cal = _cached(root / "calibration.json",
                  lambda: _steps(sets, max(left, 10.0), args.probe, probe_sets))
    res, cpu = _cpu(lambda: train(_config(sets, cal["steps"]), root / "score", progress=False))
    out.update(steps=res.step, score_cpu_s=cpu, probe_step_s=cal["probe_step_s"])
    out["train_cpu_s"] = cpu + out.get("ae_cpu_s", 0.0)
    return out


def score_method(name: str, args, classifier, real_feats: torch.Tensor) -> dict:
    """FD-classifier and sample time of the method's score model; its autoencoder's floor."""
    root = args.runs / name
    run = load_run(root / "score")
    out: dict = {}
    with torch.no_grad():
        t0, w0 = time.process_time(), time.perf_counter()
        gen = generate(run.model, run.sde, args.n_samples, run.shape, "ddim", steps=49,
                       batch_size=100, seed=0, progress=False)
        t1 = time.process_time()
        x = run.decode(gen.x)
        t2, w2 = time.process_time(), time.perf_counter()
    out.update(nfe=gen.nfe, sample_cpu_ms=1000 * (t2 - t0) / args.n_samples,
               decode_cpu_ms=1000 * (t2 - t1) / args.n_samples,
               sample_wall_ms=1000 * (w2 - w0) / args.n_samples,
               fd=frechet_distance(_features(classifier, x, "cpu"), real_feats),
               nonfinite=int((~torch.isfinite(x)).flatten(1).any(1).sum()))
    save_grid(x, args.grids / f"{NAME}_{name}.png", scale=2)
    if run.codec is not None:
        ae = load_run(root / "autoencoder")
        rec = evaluate_autoencoder(ae, n=1000, seed=0)
        test = load_images("npz", path=args.data, split="test").x[:args.n_samples]
        with torch.no_grad():
            recon = run.codec.decode(run.codec.encode(uint8_to_model(test)))
        out.update(psnr=rec["psnr_db"], psnr_se=rec["psnr_stderr"], vae_bpd=rec["vae_bpd"],
                   recon_fd=frechet_distance(_features(classifier, recon, "cpu"), real_feats),
                   latent_shape="x".join(map(str, run.shape)),
                   scaling=run.codec.scaling_factor)
        save_grid(torch.cat([uint8_to_model(test[:32]), recon[:32].float()]),
                  args.grids / f"{NAME}_{name}_reconstructions.png", scale=2)
    return out


def report(rows: list[dict], floor: float, args) -> str:
    cols = ["method", "latent", "train CPU s", "score-model steps", "AE steps", "FD-classifier",
            "AE recon FD (floor)", "AE PSNR dB", "CPU ms/image (50 NFE)", "of it decode"]
    table_rows = []
    for r in rows:
        table_rows.append({
            "method": r["method"], "latent": r.get("latent_shape", "1x28x28 (pixels)"),
            "train CPU s": f"{r['train_cpu_s']:.0f}", "score-model steps": r["steps"],
            "AE steps": r.get("ae_steps", "-"), "FD-classifier": f"{r['fd']:.2f}",
            "AE recon FD (floor)": f"{r['recon_fd']:.2f}" if "recon_fd" in r else "-",
            "AE PSNR dB": f"{r['psnr']:.2f} ± {r['psnr_se']:.2f}" if "psnr" in r else "-",
            "CPU ms/image (50 NFE)": f"{r['sample_cpu_ms']:.1f}",
            "of it decode": f"{r['decode_cpu_ms']:.1f}" if "recon_fd" in r else "-"})
    parts = []
    for r in rows:
        if "ae_cpu_s" not in r:
            parts.append(f"- `{r['method']}`: score model {r['score_cpu_s']:.0f} CPU s "
                         f"({r['probe_step_s']:.2f} s/step in the probe)")
            continue
        parts.append(f"- `{r['method']}`: first stage {r['ae_cpu_s']:.0f} CPU s "
                     f"({r['ae_steps']} steps; VAE {r['vae_bpd']:.2f} bits/dim), score model "
                     f"{r['score_cpu_s']:.0f} CPU s with the encoding of the training images "
                     f"({r['probe_step_s']:.2f} s/step in the probe); latent scaling s = "
                     f"{r['scaling']:.3f}")
    grids = ", ".join(f"`{NAME}_{r['method']}.png`" for r in rows)
    return (header("Latent diffusion against pixel diffusion on MNIST, equal CPU budget")
            + f"- budget: {args.budget:.0f} CPU s of one thread per method (latent: first stage "
            f"{args.ae_budget:.0f} s, the encoding of the training images, then the score model "
            f"in the rest); steps from short probes, the CPU actually spent below; training "
            f"images: the first {args.n_train} of MNIST; {args.n_samples} DDIM samples at 50 NFE "
            f"each; FD-classifier with the {args.classifier_steps}-step MNIST classifier\n"
            f"- FD-classifier of held-out test images (the floor of any model): {floor:.2f}\n"
            "- first stages: diffusers' AutoencoderKL, ch 16, one block per level, KL weight "
            "1e-6 (Gaussian decoder, learned scale); f = 2 with c = 2 (2x14x14 latents), f = 4 "
            "with c = 4 (4x7x7); score models: the image recipe on a U-Net with ch 32 (pixels "
            "and f = 2: two levels, f = 4: one level at 7x7), sigma_data 0.5 for pixels, 1 for "
            "the unit-variance latents\n\n"
            + table(table_rows, cols) + "\n\n"
            + "\n".join(parts) + "\n\n"
            + f"Grids (64 samples, 2x nearest-neighbour): {grids}; the first stages' test "
            "reconstructions (4 rows of originals over 4 rows of reconstructions): "
            + ", ".join(f"`{NAME}_{r['method']}_reconstructions.png`" for r in rows
                        if "recon_fd" in r) + ".\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=300.0, help="CPU s per method")
    p.add_argument("--ae-budget", type=float, default=100.0, help="CPU s of a first stage")
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--n-samples", type=int, default=300)
    p.add_argument("--probe", type=int, default=10, help="first calibration probe, steps")
    p.add_argument("--classifier-steps", type=int, default=200,
                   help="training steps of the FD-classifier's network (cached)")
    p.add_argument("--mnist", type=Path, default=MNIST)
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "latent")
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--smoke", action="store_true", help="tiny budget, results not written")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.smoke:
        args.budget, args.ae_budget, args.n_train, args.n_samples = 20.0, 6.0, 512, 40
        args.probe, args.runs = 2, Path(tempfile.mkdtemp()) / "latent"
    args.grids = args.runs if args.smoke else RESULTS
    args.data = _subset(args.runs / f"mnist_{args.n_train}.npz", args.mnist, args.n_train)
    args.probe_data = _subset(args.runs / "mnist_probe.npz", args.mnist, 256, 64)
    full = load_images("npz", path=args.mnist)
    classifier = load_or_train_classifier(full, steps=args.classifier_steps)
    idx = torch.randperm(len(full), generator=torch.Generator().manual_seed(0))[:args.n_samples]
    real = _features(classifier, uint8_to_model(full.x[idx]), "cpu")
    test = load_images("npz", path=args.mnist, split="test").x[:args.n_samples]
    floor = frechet_distance(_features(classifier, uint8_to_model(test), "cpu"), real)
    rows = []
    for name in args.methods:
        row = _cached(args.runs / name / "train.json", lambda: train_method(name, args))
        row.update(_cached(args.runs / name / "score.json",
                           lambda: score_method(name, args, classifier, real)))
        print(json.dumps(row), flush=True)
        rows.append(row)
    text = report(rows, floor, args)
    print(text)
    if not args.smoke:
        write_result(NAME, text)


if __name__ == "__main__":
    main()
