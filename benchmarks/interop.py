"""sde-gen on a diffusers checkpoint: diffusers' and k-diffusion's numbers, and what they lack.

One small diffusers ``UNet2DModel`` is trained on the 8x8 digits with the loop of diffusers'
unconditional example (:func:`benchmarks.peers.train_image_peer`: ``DDPMScheduler`` with 1000
linear betas, ``clip_sample=True``, EMA weights) and saved as a ``DDPMPipeline`` folder. diffusers
reads that folder back with ``DDPMPipeline.from_pretrained``, sde-gen with
:func:`sde_gen.interop.load_diffusers`; then, on the same UNet weights, the same ``x_T`` (and, for
DDPM, the same noise generator) and the same time grid:

- diffusers' ``DDIMScheduler`` (the pipeline's config: ``clip_sample=True``,
  ``set_alpha_to_one``) against sde-gen ``ddim`` (``discrete=True, clip_sample=1``,
  ``ts = sde.index_to_time(timesteps)``, the final step to ``abar = 1`` being sde-gen's final
  Tweedie step);
- the ``DDPMPipeline`` loop (``DDPMScheduler``, 1000 steps, ``fixed_small``) against sde-gen
  ``ancestral`` (``discrete=True, variance=beta_tilde, clip_sample=1``) drawing from a generator
  of the same seed;
- ``DPMSolverMultistepScheduler`` (``dpmsolver++``, order 2) and ``UniPCMultistepScheduler``
  (``bh2``, order 2), both ``lower_order_final=False, final_sigmas_type="sigma_min"`` with the
  schedulers' default ``timestep_spacing="linspace"``, against sde-gen ``dpm`` / ``unipc`` of the
  same order on ``ts = sde.index_to_time([*timesteps, 0])`` without the final denoising step;
  once more with dynamic thresholding on both sides;
- k-diffusion's ``sample_euler`` and ``sample_dpmpp_2m`` on
  :class:`sde_gen.interop.KarrasDenoiser` over its Karras grid (``D.sigmas(n)``, ending in 0),
  from ``x_T / alpha_T``, against sde-gen ``ddim`` and ``dpm`` (order 2) on the matched times
  ``D.sigma_to_t(sigmas[:-1])`` with the final Tweedie step.

Per row: the NFE of each side, the largest absolute difference of the two outputs (float32, data
in ``[-1, 1]``), the median wall time of each over ``--repeats`` runs (the two sides alternate),
and their ratio. Then what the peers do not compute: the test bits/dim of the same diffusers model
through the probability-flow ODE and DDPM's variational bound, through sde-gen's CLI
(``sde-gen likelihood --ckpt FOLDER``), and a PNG of samples (diffusers' 1000-step DDPM loop
against sde-gen's ``dpm`` at 10 NFE with its own defaults, from the same ``x_T``).

Everything runs on the CPU with one thread.

Usage::

    python -m benchmarks.interop            # full run (about 10 minutes)
    python -m benchmarks.interop --quick    # smoke run (about a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, header, table, write_result
from benchmarks.peers import (
    BETA_SCHEDULE,
    LEARNING_RATE,
    NUM_TRAIN_TIMESTEPS,
    import_diffusers,
    import_kdiffusion,
    timed,
    train_image_peer,
)
from sde_gen.app.config import DataConfig
from sde_gen.app.factory import build_data
from sde_gen.interop import KarrasDenoiser, load_diffusers
from sde_gen.sampling import sample

Output = tuple[torch.Tensor, int]  # (final sample, model calls)

# The layout of our UNET_PRESETS["tiny"] (ch 32, ch_mult (1, 2), one res block per level,
# attention at 4x4) for 1-channel 8x8 images, in UNet2DModel's arguments (as peers.peer_unet).
UNET = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64),
            layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), dropout=0.0, attention_head_dim=None,
            norm_num_groups=8, norm_eps=1e-6)
MULTISTEP = {"lower_order_final": False, "final_sigmas_type": "sigma_min",
             "timestep_spacing": "linspace"}
DPM = {"solver_order": 2, "algorithm_type": "dpmsolver++", **MULTISTEP}
UNIPC = {"solver_order": 2, "solver_type": "bh2", **MULTISTEP}
# Dynamic thresholding ([Saharia22] Sec. 3.3; diffusers' _threshold_sample): s = the 0.995
# quantile of |x0| clamped to [1, 1.5], x0 -> clamp(x0, -s, s) / s.
THRESHOLD = {"thresholding": True, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.5}
OUR_THRESHOLD = {"threshold": 0.995, "clip_sample": 1.5}


@dataclass
class Pair:
    """One comparison: a peer's run and sde-gen's, each ``() -> (x, model calls)``."""

    label: str
    peer: str
    ours: str
    run_peer: Callable[[], Output]
    run_ours: Callable[[], Output]


class Counted:
    """A callable that counts its calls (the peers' NFE)."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        return self.fn(*args, **kwargs)


def measure(pair: Pair, repeats: int) -> dict[str, Any]:
    """Run both sides ``repeats`` times, alternating; compare the first outputs."""
    times: dict[str, list[float]] = {"peer": [], "ours": []}
    outs: dict[str, Output] = {}
    for _ in range(repeats):
        for side, fn in (("peer", pair.run_peer), ("ours", pair.run_ours)):
            out, seconds = timed(fn)
            times[side].append(seconds)
            outs.setdefault(side, out)
    (x_peer, nfe_peer), (x_ours, nfe_ours) = outs["peer"], outs["ours"]
    t_peer, t_ours = statistics.median(times["peer"]), statistics.median(times["ours"])
    row = {"comparison": pair.label, "peer": pair.peer, "sde-gen": pair.ours,
           "NFE (peer / ours)": f"{nfe_peer} / {nfe_ours}",
           "max abs diff": float((x_ours - x_peer).abs().max()),
           "max abs x": float(x_peer.abs().max()),
           "peer s": t_peer, "sde-gen s": t_ours, "ratio": t_ours / t_peer,
           "_times": times, "_x_peer": x_peer, "_x_ours": x_ours}
    print(f"{pair.label:34s} NFE {nfe_peer:4d}/{nfe_ours:4d}  max|diff| "
          f"{row['max abs diff']:.2e}  {t_peer:6.2f} s / {t_ours:6.2f} s", flush=True)
    return row


def train_and_save(df: Any, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train the diffusers UNet on the digits and save it as a ``DDPMPipeline`` folder."""
    images = build_data(DataConfig(name="digits"), "train").x
    peer = train_image_peer(images, model=dict(UNET), batch_size=args.train_batch,
                            steps=args.train_steps, lr=args.lr, seed=args.seed)
    df.DDPMPipeline(unet=peer["model"], scheduler=peer["scheduler"]).save_pretrained(folder)
    print(f"trained {peer['steps']} steps in {peer['seconds']:.0f} s, loss (last 50) "
          f"{peer['loss']:.4f}; saved to {folder}", flush=True)
    return {k: peer[k] for k in ("steps", "seconds", "loss", "ema_decay", "params")} | {
        "images": len(images)}


def diffusers_pairs(df: Any, folder: Path, x_T: torch.Tensor, args: argparse.Namespace
                    ) -> list[Pair]:
    """The diffusers comparisons, on ``DDPMPipeline.from_pretrained(folder)``'s UNet."""
    pipe = df.DDPMPipeline.from_pretrained(folder, local_files_only=True)
    unet = pipe.unet.eval().requires_grad_(False)
    config = pipe.scheduler.config
    model, sde = load_diffusers(folder)
    defaults = model.sampler_defaults  # {"clip_sample": 1.0, "variance": "beta_tilde"}
    clip = defaults["clip_sample"]
    ours_weights = model.unet.state_dict()
    if not all(torch.equal(v, ours_weights[k]) for k, v in unet.state_dict().items()):
        raise RuntimeError("diffusers and load_diffusers read different UNet weights")

    def scheduler(cls: str, steps: int, **overrides: Any) -> Any:
        sched = getattr(df, cls).from_config(config, **overrides)
        sched.set_timesteps(steps)
        return sched

    def loop(cls: str, steps: int, seed: int | None = None, **overrides: Any
             ) -> Callable[[], Output]:
        def run() -> Output:
            sched = scheduler(cls, steps, **overrides)
            net = Counted(lambda x, t: unet(x, t).sample)
            noise = {} if seed is None else {"generator": torch.Generator().manual_seed(seed)}
            x = x_T
            with torch.no_grad():
                for t in sched.timesteps:
                    x = sched.step(net(x, t), t, x, **noise).prev_sample
            return x, net.calls
        return run

    def ours(solver: str, seed: int | None = None, **options: Any) -> Callable[[], Output]:
        def run() -> Output:
            noise = {} if seed is None else {"generator": torch.Generator().manual_seed(seed)}
            res = sample(model, sde, None, solver, x_T=x_T, **noise, **options)
            return res.x, res.nfe
        return run

    pairs = []
    for steps in args.ddim_steps:
        timesteps = scheduler("DDIMScheduler", steps).timesteps
        pairs.append(Pair(f"DDIM, {steps} steps", "DDIMScheduler", "ddim",
                          loop("DDIMScheduler", steps),
                          ours("ddim", ts=sde.index_to_time(timesteps), discrete=True,
                               clip_sample=clip)))
    seed = args.seed + 7
    pairs.append(Pair(f"DDPM, {NUM_TRAIN_TIMESTEPS} steps", "DDPMScheduler", "ancestral",
                      loop("DDPMScheduler", NUM_TRAIN_TIMESTEPS, seed=seed),
                      ours("ancestral", seed=seed, discrete=True, **defaults)))
    multistep = [("DPM-Solver++ 2M", "DPMSolverMultistepScheduler", "dpm", DPM,
                  {"order": 2, "lower_order_final": False}),
                 ("UniPC bh2 order 2", "UniPCMultistepScheduler", "unipc", UNIPC,
                  {"order": 2, "variant": "bh2", "lower_order_final": False})]
    for name, cls, solver, cfg, opts in multistep:
        for steps, thresholded in [(s, False) for s in args.multistep_steps] + [
                (args.multistep_steps[0], True)]:
            timesteps = scheduler(cls, steps, **cfg).timesteps
            ts = sde.index_to_time(torch.cat([timesteps, timesteps.new_zeros(1)]))
            extra_peer = THRESHOLD if thresholded else {}
            extra_ours = OUR_THRESHOLD if thresholded else {}
            label = f"{name}, {steps} steps" + (", thresholded" if thresholded else "")
            pairs.append(Pair(label, cls.removesuffix("Scheduler"), solver,
                              loop(cls, steps, **cfg, **extra_peer),
                              ours(solver, ts=ts, denoise=False, **opts, **extra_ours)))
    return pairs


def kdiffusion_pairs(K: Any, folder: Path, x_T: torch.Tensor, args: argparse.Namespace
                     ) -> list[Pair]:
    """k-diffusion's samplers on ``KarrasDenoiser(model, sde)`` against ours on matched times."""
    model, sde = load_diffusers(folder)
    D = KarrasDenoiser(model, sde)
    alpha_T = sde.marginal_coeffs(torch.tensor([sde.T], dtype=torch.float64))[0].to(x_T.dtype)
    pairs = []
    for name, theirs, solver, opts in [
            ("Euler (Karras grid)", "sample_euler", "ddim", {}),
            ("DPM-Solver++ 2M (Karras grid)", "sample_dpmpp_2m", "dpm",
             {"order": 2, "lower_order_final": False})]:
        for n in args.kd_steps:
            sigmas = D.sigmas(n)
            ts = D.sigma_to_t(sigmas[:-1])

            def run_peer(fn: Callable = getattr(K, theirs), sigmas: torch.Tensor = sigmas
                         ) -> Output:
                den = Counted(D)
                with torch.no_grad():
                    return fn(den, x_T / alpha_T, sigmas, disable=True), den.calls

            def run_ours(ts: torch.Tensor = ts, solver: str = solver, opts: dict = opts
                         ) -> Output:
                res = sample(model, sde, None, solver, x_T=x_T, ts=ts, denoise=True, **opts)
                return res.x, res.nfe

            pairs.append(Pair(f"{name}, {n} levels", f"k-diffusion {theirs}", solver,
                              run_peer, run_ours))
    return pairs


def likelihoods(folder: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``sde-gen likelihood --ckpt FOLDER`` in process: ODE bits/dim and DDPM's bound."""
    from typer.testing import CliRunner

    from sde_gen.app.cli import app

    rows = []
    base = ["likelihood", "--ckpt", str(folder), "--n", str(args.n_ll), "--batch-size",
            str(args.n_ll), "--n-t", str(args.n_t), "--rtol", str(args.ll_tol), "--atol",
            str(args.ll_tol), "--no-progress", "--device", "cpu"]
    for method, variance in (("both", "beta_tilde"), ("vlb", "beta")):
        out = folder / f"likelihood_{method}_{variance}.json"
        res = CliRunner().invoke(app, [*base, "--method", method, "--variance", variance,
                                       "--out", str(out)])
        if res.exit_code != 0:
            raise SystemExit(f"sde-gen likelihood failed ({res.exit_code}): {res.output}")
        print(res.output.strip(), flush=True)
        rep = json.loads(out.read_text())
        if "bpd" in rep:
            rows.append({"estimate": f"probability-flow ODE (Hutchinson, dopri5 {args.ll_tol:g})",
                         "bits/dim": rep["bpd"], "± se": rep["bpd_stderr"],
                         "NFE": f"{rep['nfe']:.0f}", "seconds": rep["seconds"], "_rep": rep})
        rows.append({"estimate": f"DDPM bound, reverse variance {variance}, "
                                 f"{rep['vlb_n_t']} sampled steps per image",
                     "bits/dim": rep["vlb_bpd"], "± se": rep["vlb_bpd_stderr"],
                     "NFE": str(rep["vlb_nfe"]), "seconds": rep["vlb_seconds"], "_rep": rep})
    return rows


def sample_figure(folder: Path, x_T: torch.Tensor, ddpm: torch.Tensor, path: Path) -> int:
    """Test digits, diffusers' DDPM samples and sde-gen's default ``dpm`` at 10 NFE from the
    same x_T, side by side at 8x nearest-neighbour (drawn at native pixels, no resampling)."""
    from sde_gen.app.plots import image_grid, pyplot, save_figure
    from sde_gen.scaling import uint8_to_model

    model, sde = load_diffusers(folder)
    clip = {"clip_sample": model.sampler_defaults["clip_sample"]}
    res = sample(model, sde, None, "dpm", x_T=x_T, steps=9, **clip)  # 9 intervals + Tweedie
    test = uint8_to_model(build_data(DataConfig(name="digits"), "test").x[:len(x_T)])
    panels = [("held-out test digits", test),
              ("diffusers DDPMPipeline loop, 1000 NFE", ddpm),
              (f"sde-gen dpm (defaults), {res.nfe} NFE", res.x)]
    grids = [image_grid((x[:64].clamp(-1, 1) + 1) / 2, nrow=8, scale=8) for _, x in panels]
    h, w = grids[0].shape[:2]
    gap, top, dpi = 24, 56, 100
    plt = pyplot()
    fig = plt.figure(figsize=((3 * w + 4 * gap) / dpi, (h + top + gap) / dpi), dpi=dpi)
    for i, ((title, _), grid) in enumerate(zip(panels, grids)):
        x0 = gap + i * (w + gap)
        fig.figimage(grid[..., 0], xo=x0, yo=gap, cmap="gray", vmin=0, vmax=255, origin="upper")
        fig.text((x0 + w / 2) / fig.bbox.width, (gap + h + 8) / fig.bbox.height, title,
                 ha="center", va="bottom", fontsize=11)
    fig.text(0.5, 1 - 6 / fig.bbox.height, "one diffusers UNet2DModel on 8x8 digits; the two "
             "samplers start from the same x_T", ha="center", va="top", fontsize=12)
    save_figure(fig, path, dpi=dpi)
    print(f"written: {path}")
    return res.nfe


def threshold_effect(rows: list[dict[str, Any]]) -> dict[str, float]:
    """How much thresholding moved each solver's output: max |thresholded - plain| (sde-gen)."""
    out = {}
    for r in rows:
        if r["comparison"].endswith(", thresholded"):
            plain = next(q for q in rows
                         if q["comparison"] == r["comparison"].removesuffix(", thresholded"))
            out[r["sde-gen"]] = float((r["_x_ours"] - plain["_x_ours"]).abs().max())
    return out


def findings(rows: list[dict[str, Any]], kd_rows: list[dict[str, Any]],
             ll_rows: list[dict[str, Any]], loads: tuple[float, float], batch: int) -> str:
    """What the tables show, in sentences computed from them."""
    pairs = rows + kd_rows
    rel = [r["max abs diff"] / max(1.0, r["max abs x"]) for r in pairs]
    worst = max(pairs, key=lambda r: r["max abs diff"])
    far = [r["comparison"] for r, e in zip(pairs, rel) if e > 1e-4]
    ratios = sorted(r["ratio"] for r in pairs)
    ddpm = next(r for r in rows if r["peer"] == "DDPMScheduler")
    moved = threshold_effect(rows)
    lines = [
        f"- **Equality.** Every sde-gen output equals its peer's to at most "
        f"{worst['max abs diff']:.1e} (`{worst['comparison']}`), on outputs of magnitude up to "
        f"{max(r['max abs x'] for r in pairs):.2g}"
        + (": float32 round-off. " if not far else ". ")
        + "The round-off comes from the tables, not the steps: diffusers keeps "
        "`alphas_cumprod` in float32 (its multistep schedulers also cast their sigma grid to "
        "float32 in `set_timesteps`), sde-gen's chain is float64, and with diffusers' table "
        "replaced by the chain's DDIM agrees in float64 to 1e-10 "
        "(tests/test_interop_diffusers.py::test_ddim_equals_diffusers).",
        "  " + (f"Rows beyond 1e-4 of their magnitude: {', '.join(far)}." if far else
               "No row differs by more than 1e-4 of its magnitude."),
    ]
    if moved:
        lines.append("- **Thresholding** changes the outputs against the unthresholded runs by "
                     "up to " + ", ".join(f"{v:.2g} (`{k}`)" for k, v in moved.items())
                     + ", and both sides still agree to round-off: they threshold the same x0 "
                     "prediction.")
    lines.append(
        f"- **Speed.** At the same NFE the time ratios sde-gen / peer lie in "
        f"[{ratios[0]:.2f}, {ratios[-1]:.2f}] (median {statistics.median(ratios):.2f}). One UNet "
        f"call on {batch} images costs about {1e3 * ddpm['peer s'] / 1000:.0f} ms (the DDPM "
        f"row: {ddpm['peer s']:.1f} s for 1000 calls); the schedulers' and sde-gen's own "
        f"per-step arithmetic hides next to it, so the samplers run at the network's speed "
        f"on both sides. "
        + ("The spread is within the noise of a shared 2-core machine "
           if ratios[-1] - ratios[0] < 0.2 else
           "A ratio far from 1 is the machine's load, not the sampler: the sides alternate, "
           "but few runs on a shared 2-core machine move by that much ")
        + f"(1-minute load average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end).")
    ode = next((r for r in ll_rows if "ODE" in r["estimate"]), None)
    vlbs = [r for r in ll_rows if r is not ode]
    text = "- **Likelihoods.** "
    if ode is not None:
        text += (f"Through the probability-flow ODE the diffusers checkpoint has "
                 f"{ode['bits/dim']:.2f} ± {ode['± se']:.2f} test bits/dim ({ode['NFE']} NFE per "
                 f"batch, {ode['seconds']:.0f} s): the negative log-likelihood of the continuous "
                 f"model of uniformly dequantized pixels, estimated with Hutchinson's trace. ")
    text += ("DDPM's bound gives " + " and ".join(
        f"{r['bits/dim']:.2f} ± {r['± se']:.2f} ({r['estimate'].split(', ')[1]}, "
        f"{r['seconds']:.1f} s)" for r in vlbs)
        + " bits/dim: an upper bound on the discrete chain's negative log-likelihood of the "
        "8-bit pixels; sampling the steps per image makes most of its standard error"
        + (f" ({vlbs[0]['± se'] / ode['± se']:.0f}x the ODE's on the same images)"
           if ode is not None and ode["± se"] > 0 else "") + ". The ODE "
        "and the chain are two models from one network, so neither number bounds the other. "
        "Neither diffusers' pipeline nor its schedulers evaluate a likelihood.")
    lines.append(text)
    return "\n".join(lines) + "\n"


def markdown(doc: str) -> str:
    """The module docstring's reST as markdown: ``code`` -> `code`, roles dropped."""
    return re.sub(r":\w+:`", "`", doc).replace("``", "`")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-steps", type=int, default=1500, help="optimizer steps")
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3,
                    help=f"peak learning rate (the example's default is {LEARNING_RATE:g})")
    ap.add_argument("--batch", type=int, default=64, help="images per sampling run")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side (median)")
    ap.add_argument("--n-ll", type=int, default=256, help="test images for the likelihoods")
    ap.add_argument("--n-t", type=int, default=50, help="sampled steps per image in the bound")
    ap.add_argument("--ll-tol", type=float, default=1e-5, help="ODE rtol = atol (the CLI's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run (about a minute)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.train_steps, args.batch, args.repeats, args.n_ll, args.n_t = 60, 16, 1, 16, 5
        args.ll_tol = 1e-3
    args.ddim_steps, args.multistep_steps, args.kd_steps = (50, 10), (10, 20), (10, 20)
    df, K = import_diffusers(), import_kdiffusion()
    if df is None:
        raise SystemExit("this benchmark needs diffusers")
    suffix = "_quick" if args.quick else ""
    load_start = os.getloadavg()[0]
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sde_gen_interop_") as tmp:
        folder = Path(tmp) / "ddpm-digits"
        trained = train_and_save(df, folder, args)
        x_T = torch.randn(args.batch, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed))
        rows = [measure(p, args.repeats) for p in diffusers_pairs(df, folder, x_T, args)]
        kd_rows = ([measure(p, args.repeats) for p in kdiffusion_pairs(K, folder, x_T, args)]
                   if K is not None else [])
        ll_rows = likelihoods(folder, args)
        ddpm = next(r for r in rows if r["peer"] == "DDPMScheduler")
        png = RESULTS / f"interop_samples{suffix}.png"
        fig_nfe = sample_figure(folder, x_T, ddpm["_x_peer"], png)
    total = time.perf_counter() - t_all
    loads = (load_start, os.getloadavg()[0])

    cols = ["comparison", "peer", "sde-gen", "NFE (peer / ours)", "max abs diff", "max abs x",
            "peer s", "sde-gen s", "ratio"]
    ll_cols = ["estimate", "bits/dim", "± se", "NFE", "seconds"]
    text = header("sde-gen on a diffusers checkpoint: equality, speed, likelihoods")
    text += (f"- total wall time: {total:.0f} s (training included); 1-minute load average "
             f"{loads[0]:.1f} at the start, {loads[1]:.1f} at the end, on {os.cpu_count()} "
             f"cores\n\n")
    text += markdown(__doc__.split("\n\n", 1)[1].split("Usage::")[0].strip()) + "\n\n"
    text += "## What the numbers show\n\n" + findings(rows, kd_rows, ll_rows, loads, args.batch)
    text += (f"\n## The checkpoint\n\n`UNet2DModel` with {UNET['block_out_channels']} channels "
             f"and attention at 4x4 ({trained['params']:,} parameters), trained by "
             f"`benchmarks/peers.py: train_image_peer` (diffusers' example loop: AdamW, cosine "
             f"LR after 500 warm-up steps, gradient clipping, EMA, `DDPMScheduler` with "
             f"{NUM_TRAIN_TIMESTEPS} {BETA_SCHEDULE} betas) on the {trained['images']} training "
             f"digits: **{trained['steps']} steps of batch {args.train_batch} in "
             f"{trained['seconds']:.0f} s**, peak LR {args.lr:g} (the example's default is "
             f"{LEARNING_RATE:g}; so short a run needs more), final loss {trained['loss']:.4f} "
             f"(mean of the last 50 steps), EMA decay {trained['ema_decay']:.4f}. Saved with "
             f"`DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)`.\n\n")
    text += (f"## Same UNet, same x_T, same grid: diffusers\n\n{args.batch} images per run, "
             f"median of {args.repeats} run(s) per side; `max abs x` is the largest |x| of the "
             f"peer's output, `ratio` = sde-gen s / peer s. diffusers runs its own UNet of "
             f"`DDPMPipeline.from_pretrained(folder)`, sde-gen its `load_diffusers(folder)` copy "
             f"(identical weights, checked).\n\n" + table(rows, cols) + "\n\n")
    if kd_rows:
        text += ("## Same model, same x_T, matched grid: k-diffusion\n\nk-diffusion calls "
                 "`KarrasDenoiser(model, sde)` on the `load_diffusers` model sde-gen samples; "
                 "`n levels` = the positive noise levels of `D.sigmas(n)` (Karras rho = 7 "
                 "from sigma_max = sigma_T / alpha_T to sigma at t = 1e-3, then 0).\n\n"
                 + table(kd_rows, cols) + "\n\n")
    else:
        text += "## k-diffusion\n\nnot importable here; skipped.\n\n"
    text += (f"## What the peers do not compute: likelihoods of the same checkpoint\n\n"
             f"`sde-gen likelihood --ckpt FOLDER --n {args.n_ll} --batch-size {args.n_ll} "
             f"--n-t {args.n_t} --rtol {args.ll_tol:g} --atol {args.ll_tol:g} --method both|vlb "
             f"--variance beta_tilde|beta`, in process, on the "
             f"first {args.n_ll} test digits (the ODE on uniformly dequantized pixels with the "
             f"CLI's defaults, the bound with the discretized decoder).\n\n"
             + table(ll_rows, ll_cols) + "\n\n")
    text += (f"## Samples\n\n`{png.name}`: held-out test digits, the samples of the DDPM row "
             f"(diffusers, 1000 NFE), and sde-gen's `dpm` with its defaults (order 3, log-SNR "
             f"grid, final Tweedie step, `clip_sample` from the config) at {fig_nfe} NFE from "
             f"the same x_T (8x nearest-neighbour).\n")
    write_result(f"interop{suffix}", text)
    strip = [{k: v for k, v in r.items() if not k.startswith("_x")} for r in rows + kd_rows]
    lls = [{k: v for k, v in r.items() if k != "_rep"} | {"report": r["_rep"]} for r in ll_rows]
    (RESULTS / f"interop{suffix}.json").write_text(json.dumps(
        {"trained": trained, "args": vars(args), "total_s": total, "load_average": loads,
         "sampling": strip, "likelihood": lls}, indent=2, default=str) + "\n")
    print(table(rows + kd_rows, cols))
    print(table(ll_rows, ll_cols))
    print(f"total {total:.0f} s")


if __name__ == "__main__":
    main()
