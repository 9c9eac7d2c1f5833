"""The training-recipe ablation on images (digits, MNIST) at a fixed single-thread CPU budget.

Every row trains one model for the same budget of **single-thread CPU seconds** (``--budget``,
default 600) and scores it the same way:

- ``bpd``: test bits/dim through the probability-flow ODE (Hutchinson trace, dopri5 at 1e-5,
  uniform dequantization) of ``--n-bpd`` test images with its standard error
  (:func:`sde_gen.app.likelihood_report.evaluate_likelihood`);
- ``VLB``: DDPM's discrete variational bound in bits/dim (discretized decoder, reverse variance
  ``beta_tilde``, the middle terms estimated from ``n_t = 50`` sampled steps per image) on the same
  images, with its standard error (:func:`~sde_gen.app.likelihood_report.evaluate_vlb`);
- ``FD-classifier``: Fréchet distance of ``--n-samples`` DDIM samples (49 steps, 50 NFE) to as
  many training images in the features of sde-gen's cached dataset classifier (as ``sde-gen
  eval`` computes it; not FID), next to the same distance for held-out test images;
- an 8x8 grid of the first 64 samples, upscaled with nearest-neighbour (in the run directory,
  copied to ``results/`` with the report).

Rows (``--recipes``): ``before`` (the shipped recipe: eps prediction, the net conditioned on
``t``, simple weighting, uniform t, fixed EMA, constant LR), ``after`` (EDM preconditioning with
``sigma_data = 0.5``, log-SNR conditioning, EDM weighting, log-normal t with EDM's
``P_mean = -1.2, P_std = 1.2``, warm-up EMA, cosine LR), ``after-*`` rows that change one
component of ``after``, and ``peer``: diffusers' ``DDPMScheduler`` trained with the loop of its
unconditional example (``benchmarks/peers.py``) on the same data and batch size, a
``UNet2DModel`` of the same layout. Every recipe key is passed explicitly, so the rows do not
move when a config default changes.

Budget: the CPU time of a single-threaded process depends much less than wall time on what else
runs on a shared machine. The step count is calibrated once per dataset and network family
(ours, all recipes: one network; the peer): after a warm-up call, calls of ``P`` and ``2P`` steps
give the CPU cost of a step and the fixed cost of a call (data, checkpoint, final grid), and the
rows train ``(budget - fixed) / per_step`` steps in one call, so that a cosine LR schedule ends
with the budget. All our recipes thus train the same steps of the same network (the same
compute, whatever the load); ``--steps`` sets the count directly (e.g. from the per-step cost
measured over a whole run). The table reports the steps, the CPU seconds and the wall seconds
that each training took.

The peer is scored through our code: its network is wrapped as our eps-model
``model(x, t) = unet(x, 1000 t - 1).sample`` (DDPM's index ``i`` sits at ``t = (i + 1) / 1000``)
with our VP SDE (whose discrete chain is DDPM's linear betas), and handed to the same likelihood,
VLB and DDIM code as ours (our DDIM, not diffusers' scheduler).

Usage (one process each; at most two at once on a 2-core machine)::

    python benchmarks/images_quality.py --dataset digits --recipes before after
    python benchmarks/images_quality.py --dataset mnist --recipes peer
    python benchmarks/images_quality.py --report          # rebuild the markdown from the runs
    python benchmarks/images_quality.py --smoke           # minutes: the whole path, tiny sizes

Runs live under ``runs/images_quality/<dataset>/<recipe>/``. A command that is stopped can be
run again: our training resumes from its checkpoints (every 200 steps; the CPU and wall seconds
then add up the pieces, including steps redone after the last checkpoint), and each finished
score (``ll.json``, ``vlb.json``, ``fd.json``) is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import RESULTS, header, table, write_result
from benchmarks.peers import import_diffusers, train_image_peer
from sde_gen.app.config import Config, ModelConfig, load_config
from sde_gen.app.factory import build_data, build_sde, data_shape
from sde_gen.app.generate import generate
from sde_gen.app.likelihood_report import evaluate_likelihood, evaluate_vlb
from sde_gen.app.runs import LoadedRun, load_run
from sde_gen.app.sample_quality import _features, load_or_train_classifier
from sde_gen.app.train import train
from sde_gen.metrics import frechet_distance
from sde_gen.scaling import from_model, uint8_to_model

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "images_quality"
NAME = "images_quality"
CKPT_EVERY = 200

# The reduced CPU U-Net for MNIST: the digits size (ch 32, mult 1-2, one residual block per
# level), no attention (with two levels there is no 7x7 level), no dropout. Batch 32 rather than
# mnist_vp.yaml's 128: a step at 28x28 costs ~12x one at 8x8, and four times the updates of a
# quarter of the batch are worth more at a few hundred CPU seconds. lr and warmup are
# digits_vp.yaml's (1e-3, 100; EMA decay 0.999 for both, in COMMON): mnist_vp.yaml's (2e-4, 1000,
# 0.9999) are sized for 20k GPU steps and would leave a CPU run inside its warmup with an EMA
# that is mostly the initialization.
MNIST_CPU = ["data.path=/work/shared/data/mnist.npz", "model.ch=32", "model.ch_mult=[1,2]",
             "model.num_res_blocks=1", "model.attn_resolutions=[7]", "model.dropout=0.0",
             "train.batch_size=32", "train.lr=0.001", "train.warmup=100"]
DATASETS: dict[str, tuple[str, list[str]]] = {
    "digits": ("configs/digits_vp.yaml", []),
    "mnist": ("configs/mnist_vp.yaml", MNIST_CPU),
}
# Every row, ours and the peer: CPU, seed 0, no intermediate sample grids (they would eat the
# budget), EMA decay 0.999.
COMMON = ["train.device=cpu", "train.seed=0", "train.sample_every=0", "train.ema_decay=0.999",
          "train.ema_sigma_rel=0.1", "train.min_snr_gamma=5.0"]

BEFORE = ["model.prediction=eps", "model.sigma_data=1.0", "model.noise_cond=t",
          "train.weighting=simple", "train.time_sampling=uniform", "train.p_mean=-1.2",
          "train.p_std=1.2", "train.ema_mode=fixed", "train.lr_schedule=constant"]
AFTER = ["model.prediction=edm", "model.sigma_data=0.5", "model.noise_cond=logsnr",
         "train.weighting=edm", "train.time_sampling=lognormal", "train.p_mean=-1.2",
         "train.p_std=1.2", "train.ema_mode=warmup", "train.lr_schedule=cosine"]
# Reduced ablation on digits: one component of ``after`` changed.
ABLATIONS: dict[str, list[str]] = {
    "after-eps": ["model.prediction=eps"],
    "after-ema-fixed": ["train.ema_mode=fixed"],
    "after-cond-t": ["model.noise_cond=t"],
}
RECIPES: dict[str, list[str]] = {
    "before": BEFORE, "after": AFTER, **{k: AFTER + v for k, v in ABLATIONS.items()}}
PEER = "peer"
LABELS = {
    "before": "before (shipped recipe)",
    "after": "after (EDM recipe)",
    "after-eps": "after, eps prediction",
    "after-ema-fixed": "after, fixed EMA 0.999",
    "after-cond-t": "after, net conditioned on t",
    PEER: "peer: diffusers DDPMScheduler + example loop",
}
# How the step counts of a dataset were chosen, when not by its calibration file.
STEP_NOTES = {
    "mnist": ("Steps given with `--steps`: a first pair of runs calibrated by short probes (ours "
              "1438 steps, the peer 1029) took 741 and 535 CPU s, because the machine's load (5-7 "
              "processes on 2 cores) rose between probe and run. The per-step CPU cost measured "
              "over those whole runs (ours 0.500 s plus 22 s fixed, the peer 0.520 s) gives "
              "1156 steps for ours and 1153 for the peer in 600 s; all rows were trained afresh "
              "with these counts."),
}


def base_overrides(dataset: str) -> tuple[str, list[str]]:
    path, extra = DATASETS[dataset]
    return str(ROOT / path), extra + COMMON


def _ours_cfg(dataset: str, recipe: str, steps: int) -> Config:
    path, base = base_overrides(dataset)
    return load_config(path, base + RECIPES[recipe] + [
        f"train.steps={steps}", f"train.ckpt_every={min(steps, CKPT_EVERY)}"])


# --------------------------------------------------------------------------------------------
# budget


def calibrate(run_steps: Callable[[int], float], budget: float, probe: int) -> dict:
    """Steps that fill ``budget`` CPU seconds, from
    ``run_steps(k) -> CPU seconds of a k-step call``.

    A warm-up call (2 steps, not used) loads data and caches; calls of ``probe`` and ``2 probe``
    steps then give the cost of a step and the fixed cost of a call.
    """
    run_steps(2)
    t1, t2 = run_steps(probe), run_steps(2 * probe)
    per_step = max((t2 - t1) / probe, 1e-6)
    fixed = max(t1 - probe * per_step, 0.0)
    steps = max(2 * probe, int((budget - fixed) / per_step))
    return {"steps": steps, "probe_step_s": per_step, "probe_fixed_s": fixed,
            "calibration": f"probe {probe}/{2 * probe} steps"}


def steps_for(dataset: str, family: str, run_steps: Callable[[int], float], args) -> dict:
    """The step count of a network family (``ours``: every recipe, one network; ``peer``).

    ``--steps`` gives it explicitly; otherwise it is calibrated once and kept in
    ``<runs>/<dataset>/calibration_<family>.json``, so that all our recipes train the same
    number of steps of the same network, which is the same compute whatever the load.
    """
    if args.steps is not None:
        return {"steps": args.steps, "calibration": "given (--steps)"}
    path = args.runs / dataset / f"calibration_{family}.json"
    if path.exists():
        return json.loads(path.read_text())
    cal = {**calibrate(run_steps, args.budget, args.probe), "budget_cpu_s": args.budget}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cal, indent=1))
    return cal


class CpuMeter:
    """CPU and wall seconds of this process since entry, written to ``path`` every few seconds.

    A training that is stopped and resumed leaves one file per piece; :func:`spent` adds them.
    """

    def __init__(self, path: Path, every: float = 5.0) -> None:
        self.path, self.every = path, every
        self._stop = threading.Event()

    def _write(self) -> None:
        rec = {"cpu_s": time.process_time() - self.cpu0, "wall_s": time.perf_counter() - self.wall0}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, self.path)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._write()

    def __enter__(self) -> "CpuMeter":
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._write()


def spent(workdir: Path) -> tuple[float, float, int]:
    """Summed CPU and wall seconds of the training pieces in ``workdir``, and their number."""
    recs = [json.loads(f.read_text()) for f in sorted(workdir.glob("cpu_piece_*.json"))]
    return sum(r["cpu_s"] for r in recs), sum(r["wall_s"] for r in recs), len(recs)


def train_ours(dataset: str, recipe: str, workdir: Path, args) -> dict:
    def run_steps(k: int) -> float:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.process_time()
            train(_ours_cfg(dataset, recipe, k), d, progress=False)
            return time.process_time() - t0

    cal = steps_for(dataset, "ours", run_steps, args)
    cfg = _ours_cfg(dataset, recipe, cal["steps"])
    with CpuMeter(workdir / f"cpu_piece_{time.time_ns()}.json"):
        res = train(cfg, workdir, progress=False)
    cpu, wall, pieces = spent(workdir)
    return {**cal, "steps": res.step, "train_cpu_s": cpu, "train_wall_s": wall,
            "train_pieces": pieces, "last_loss": res.loss}


class PeerEps(nn.Module):
    """A diffusers ``UNet2DModel`` as our eps-model:
    ``model(x, t) = unet(x, 1000 t - 1).sample``."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t * 1000 - 1).sample


def peer_unet_kwargs(mc: ModelConfig, shape: tuple[int, int, int]) -> dict:
    """``UNet2DModel`` arguments of the layout of our U-Net config (as ``peers.peer_unet``)."""
    channels, resolution = shape[0], shape[1]
    levels = [resolution // 2**i in mc.attn_resolutions for i in range(len(mc.ch_mult))]
    return dict(
        sample_size=resolution, in_channels=channels, out_channels=channels,
        block_out_channels=tuple(mc.ch * m for m in mc.ch_mult),
        layers_per_block=mc.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in levels),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels)),
        dropout=mc.dropout, attention_head_dim=None, norm_num_groups=min(32, mc.ch // 4),
        norm_eps=1e-6)


def train_peer(dataset: str, workdir: Path, args) -> dict:
    """Train the peer (no checkpoints: a stopped peer starts again from scratch)."""
    if import_diffusers() is None:
        raise SystemExit("the peer needs diffusers")
    cfg = _ours_cfg(dataset, "before", 1)
    images = build_data(cfg.data, "train").x
    kwargs = peer_unet_kwargs(cfg.model, data_shape(cfg.data))
    batch = cfg.train.batch_size

    def run_steps(k: int) -> float:
        t0 = time.process_time()
        train_image_peer(images, model=dict(kwargs), batch_size=batch, steps=k, seed=0)
        return time.process_time() - t0

    cal = steps_for(dataset, PEER, run_steps, args)
    t0, w0 = time.process_time(), time.perf_counter()
    peer = train_image_peer(images, model=dict(kwargs), batch_size=batch, steps=cal["steps"],
                            seed=0)
    out = {**cal, "steps": peer["steps"], "train_cpu_s": time.process_time() - t0,
           "train_wall_s": time.perf_counter() - w0, "train_pieces": 1,
           "last_loss": peer["loss"], "peer_lr_last": peer["lr_last"],
           "peer_ema_decay": peer["ema_decay"]}
    torch.save({"kwargs": kwargs, "ema": peer["model"].state_dict()}, workdir / "peer.pt")
    return out


def load_peer(dataset: str, workdir: Path, step: int) -> LoadedRun:
    """The trained peer as a :class:`LoadedRun` (our VP SDE, the wrapped EMA network)."""
    df = import_diffusers()
    state = torch.load(workdir / "peer.pt", map_location="cpu", weights_only=False)
    unet = df.UNet2DModel(**state["kwargs"])
    unet.load_state_dict(state["ema"])
    cfg = _ours_cfg(dataset, "before", 1)
    model = PeerEps(unet).eval().requires_grad_(False)
    return LoadedRun(cfg=cfg, sde=build_sde(cfg.sde), model=model,
                     checkpoint=workdir / "peer.pt", step=step)


# --------------------------------------------------------------------------------------------
# scores


def save_grid(x: torch.Tensor, path: Path, *, scale: int) -> None:
    """First 64 images ``[-1, 1]`` as an 8x8 grid, each upscaled ``scale`` x (nearest)."""
    from torchvision.utils import save_image

    x = F.interpolate(from_model(x[:64].float()), scale_factor=scale, mode="nearest")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(x, path, nrow=8, padding=2, pad_value=0.5)


def _cached(path: Path, compute: Callable[[], dict]) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    out = compute()
    path.write_text(json.dumps(out, indent=1))
    return out


def score(run: LoadedRun, workdir: Path, grid: Path, args) -> dict:
    """Bits/dim (ODE), the VLB, FD-classifier of DDIM samples and a sample grid of ``run``."""
    n_bpd, n_samples = args.n_bpd, args.n_samples

    def likelihood() -> dict:
        t0 = time.process_time()
        ll = evaluate_likelihood(run, n=n_bpd, batch_size=128, split="test", seed=0,
                                 progress=False)
        return {"bpd": ll["bpd"], "bpd_se": ll["bpd_stderr"], "bpd_n": ll["n"],
                "ll_nfe": ll["nfe"], "ll_wall_s": ll["seconds"],
                "ll_cpu_s": time.process_time() - t0}

    def bound() -> dict:
        vl = evaluate_vlb(run, n=n_bpd, batch_size=128, split="test", variance="beta_tilde",
                          n_t=50, seed=0, progress=False)
        return {"vlb_bpd": vl["vlb_bpd"], "vlb_se": vl["vlb_bpd_stderr"],
                "vlb_wall_s": vl["vlb_seconds"]}

    def samples() -> dict:
        shape = data_shape(run.cfg.data)
        gen = generate(run.model, run.sde, n_samples, shape, "ddim", batch_size=250, seed=0,
                       progress=False, steps=49)
        train_set = build_data(run.cfg.data, "train")
        test_set = build_data(run.cfg.data, "test")
        idx = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))
        net = load_or_train_classifier(train_set)
        real = _features(net, uint8_to_model(train_set.x[idx[:n_samples]]), "cpu")
        held_out = _features(net, uint8_to_model(test_set.x[:n_samples]), "cpu")
        save_grid(gen.x, grid, scale=args.grid_scale)
        return {"fd": frechet_distance(_features(net, gen.x, "cpu"), real), "fd_n": n_samples,
                "fd_floor": frechet_distance(held_out, real), "fd_floor_n": len(held_out),
                "ddim_nfe": gen.nfe, "sample_wall_s": gen.seconds, "grid": grid.name}

    out: dict = {"params": sum(p.numel() for p in run.model.parameters())}
    for name, fn in (("vlb", bound), ("fd", samples), ("ll", likelihood)):  # cheapest first
        part = _cached(workdir / f"{name}.json", fn)
        out.update(part)
        print(f"  {name}: {json.dumps(part)}", flush=True)
    return out


def run_row(dataset: str, recipe: str, args) -> dict:
    workdir = args.runs / dataset / recipe
    workdir.mkdir(parents=True, exist_ok=True)
    done = workdir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    tr_path = workdir / "train.json"
    if tr_path.exists():
        tr = json.loads(tr_path.read_text())
    else:
        print(f"[{dataset}/{recipe}] training for {args.budget:g} CPU s", flush=True)
        if recipe == PEER:
            tr = train_peer(dataset, workdir, args)
        else:
            tr = train_ours(dataset, recipe, workdir, args)
        tr_path.write_text(json.dumps(tr, indent=1))
    print(f"[{dataset}/{recipe}] {tr['steps']} steps, {tr['train_cpu_s']:.0f} CPU s, "
          f"{tr['train_wall_s']:.0f} wall s; scoring", flush=True)
    run = load_peer(dataset, workdir, tr["steps"]) if recipe == PEER else load_run(workdir)
    sc = score(run, workdir, workdir / f"{NAME}_{dataset}_{recipe}.png", args)
    row = {"dataset": dataset, "recipe": recipe, "budget_cpu_s": args.budget, **tr, **sc,
           "overrides": [] if recipe == PEER else RECIPES[recipe]}
    done.write_text(json.dumps(row, indent=1))
    return row


# --------------------------------------------------------------------------------------------
# report

COLUMNS = ["recipe", "params", "steps", "train CPU s", "train wall s", "test bpd (ODE)", "± se",
           "LL NFE", "VLB bpd", "± se ", "FD-classifier", "grid"]


def _fmt(r: dict, key: str, spec: str) -> str:
    """``r[key]`` formatted, or a dash for a score that was not measured (a partial row)."""
    return format(r[key], spec) if key in r else "—"


def _table_row(r: dict) -> dict:
    return {"recipe": LABELS.get(r["recipe"], r["recipe"]), "params": _fmt(r, "params", ","),
            "steps": r["steps"], "train CPU s": round(r["train_cpu_s"]),
            "train wall s": round(r["train_wall_s"]), "test bpd (ODE)": _fmt(r, "bpd", ".3f"),
            "± se": _fmt(r, "bpd_se", ".3f"), "LL NFE": _fmt(r, "ll_nfe", ".0f"),
            "VLB bpd": _fmt(r, "vlb_bpd", ".3f"), "± se ": _fmt(r, "vlb_se", ".3f"),
            "FD-classifier": _fmt(r, "fd", ".2f"), "grid": f"`{r['grid']}`" if "grid" in r else "—"}


def _rows(runs: Path, dataset: str) -> list[dict]:
    """Finished rows, and rows whose scoring stopped part-way (``partial``: the scores done)."""
    rows = []
    for d in sorted(p for p in (runs / dataset).glob("*") if p.is_dir()):
        if (d / "result.json").exists():
            rows.append(json.loads((d / "result.json").read_text()))
            continue
        parts = [json.loads((d / f"{n}.json").read_text()) for n in ("vlb", "fd", "ll")
                 if (d / f"{n}.json").exists()]
        if (d / "train.json").exists() and parts:
            row = {"dataset": dataset, "recipe": d.name, "partial": True,
                   **json.loads((d / "train.json").read_text())}
            for part in parts:
                row.update(part)
            rows.append(row)
    return rows


def report(runs: Path, *, copy_grids: bool = True) -> str:
    order = [*RECIPES, PEER]
    paragraphs = __doc__.split("\n\n")
    text = header("Training recipes on images at a fixed CPU budget")
    text += "\n" + "\n\n".join(paragraphs[1:5]) + "\n\n"
    for dataset in DATASETS:
        rows = _rows(runs, dataset)
        if not rows:
            continue
        rows.sort(key=lambda r: order.index(r["recipe"]) if r["recipe"] in order else 99)
        for r in rows:  # the grids live with the runs; results/ gets a copy
            grid = runs / dataset / r["recipe"] / r.get("grid", "-")
            if copy_grids and grid.is_file():
                RESULTS.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(grid, RESULTS / r["grid"])
        path, extra = DATASETS[dataset]
        r0 = rows[0]
        text += (f"## {dataset}\n\nBase: `{path}`" + (f" with `{' '.join(extra)}`" if extra else "")
                 + f"; budget {r0['budget_cpu_s']:g} single-thread CPU s per model; bpd and VLB "
                 f"on the first {r0['bpd_n']} test images; FD-classifier of {r0['fd_n']} DDIM "
                 f"samples ({r0['ddim_nfe']} NFE) against {r0['fd_n']} training images "
                 f"(held-out test images score {r0['fd_floor']:.2f} "
                 f"with n = {r0['fd_floor_n']}).\n\n")
        if dataset in STEP_NOTES:
            text += STEP_NOTES[dataset] + "\n\n"
        text += table([_table_row(r) for r in rows], COLUMNS) + "\n\n"
        restarted = [r["recipe"] for r in rows if r.get("train_pieces", 1) > 1]
        if restarted:
            text += (f"Resumed from a checkpoint after a stop (CPU/wall summed over the pieces): "
                     f"{', '.join(restarted)}.\n\n")
        partial = [LABELS.get(r["recipe"], r["recipe"]) for r in rows if r.get("partial")]
        if partial:
            text += (f"Scored only in part within the session's time (a dash: not measured): "
                     f"{', '.join(partial)}.\n\n")
    text += "Recipe overrides (on top of the base and `" + " ".join(COMMON) + "`):\n\n"
    text += f"- `before`: `{' '.join(BEFORE)}`\n- `after`: `{' '.join(AFTER)}`\n"
    ran = {p.name for p in runs.glob("*/*") if p.is_dir()}
    for name, ov in ABLATIONS.items():
        if name in ran:
            text += f"- `{name}`: `after` + `{' '.join(ov)}`\n"
    text += ("- `peer`: `benchmarks/peers.py: train_image_peer` (diffusers' example defaults: "
             "lr 1e-4, 500 warmup steps then cosine, AdamW betas (0.95, 0.999), EMA 0.9999 with "
             "warm-up, 1000 linear-beta steps) at the base's batch size, on a `UNet2DModel` with "
             "the base's U-Net layout.\n")
    return text


def smoke(args) -> None:
    with tempfile.TemporaryDirectory() as d:
        args.runs, args.budget, args.probe, args.steps = Path(d), 8.0, 2, None
        args.n_bpd, args.n_samples = 8, 40
        for recipe in ("after", PEER):
            row = run_row("digits", recipe, args)
            print(json.dumps({k: v for k, v in row.items() if k != "overrides"}))
        print(report(Path(d), copy_grids=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=tuple(DATASETS), default="digits")
    ap.add_argument("--recipes", nargs="+", choices=(*RECIPES, PEER), default=["before", "after"])
    ap.add_argument("--budget", type=float, default=600.0, help="training CPU seconds per model")
    ap.add_argument("--probe", type=int, default=30, help="steps of the calibration calls")
    ap.add_argument("--steps", type=int, default=None,
                    help="train this many steps instead of calibrating (e.g. from a measured rate)")
    ap.add_argument("--n-bpd", type=int, default=256, help="test images for bpd and the VLB")
    ap.add_argument("--n-samples", type=int, default=1000, help="DDIM samples for FD-classifier")
    ap.add_argument("--grid-scale", type=int, default=4, help="nearest upscaling of the grid")
    ap.add_argument("--runs", type=Path, default=RUNS, help="root of the run directories")
    ap.add_argument("--report", action="store_true", help="only rebuild the markdown")
    ap.add_argument("--smoke", action="store_true", help="tiny end-to-end check in a temp dir")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the budget is single-thread CPU time
    if args.smoke:
        smoke(args)
        return
    if not args.report:
        for recipe in args.recipes:
            row = run_row(args.dataset, recipe, args)
            print(json.dumps({k: v for k, v in row.items() if k != "overrides"}), flush=True)
    write_result(NAME, report(args.runs))


if __name__ == "__main__":
    main()
