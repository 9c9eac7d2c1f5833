"""A Stable Diffusion folder: sde-gen against diffusers' ``StableDiffusionPipeline`` at equal NFE.

A random pipeline with SD 1.x's architecture, scaled down so that a CPU runs it in seconds
(UNet2DConditionModel with SD's block layout, three cross-attention levels and two layers per
block, ``block_out_channels`` ``--width-scale`` x (320, 640, 1280, 1280); an AutoencoderKL with
SD's four levels, factor 8; a CLIP text model of the UNet's cross-attention width; a letter
tokenizer; SD's scheduler config) is saved with ``save_pretrained`` and loaded by each library
from disk. Weights do not change the cost, so the ratio is what matters.

Each side runs in its own process (so its peak resident memory is its own): diffusers'
pipeline with ``DPMSolverMultistepScheduler`` (``dpmsolver++`` order 2,
``lower_order_final=False``, ``final_sigmas_type="sigma_min"``) and sde-gen's ``dpm`` on the
pipeline's own timesteps (:func:`sde_gen.interop.stable_diffusion.load_stable_diffusion`, the
guided model of one batched call per step), from the same ``latents``, the same prompt, the same
guidance (diffusers' ``guidance_scale`` g = sde-gen's 1 + w), decoding the images; then sde-gen
with its VAE decoding one image at a time (``--decode-batch 1``, diffusers' VAE slicing).
Reported: seconds per image (median over ``--repeats`` rounds, the three processes alternating,
each timing one run after a warm-up run), split into the UNet's forward calls, the VAE decoder's
and the rest (the sampler, prompt encoding, guidance arithmetic: what a library adds; forward
hooks time the two networks), peak resident memory of the process, and the largest difference of
the two libraries' images in [-1, 1].

Usage::

    python -m benchmarks.stable_diffusion            # 256x256, 2 images, 10 steps (~10 minutes)
    python -m benchmarks.stable_diffusion --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import header, table, write_result
from benchmarks.peers import import_diffusers

PROMPT = "a watercolour fox"
NEGATIVE = "blurry"


def _diffusers():
    """diffusers (the peer), or exit with the note of :func:`benchmarks.peers.import_diffusers`."""
    diffusers = import_diffusers()
    if diffusers is None:
        raise SystemExit(1)
    return diffusers


def build_pipeline(folder: Path, scale: float) -> dict:
    """Save a random SD 1.x-architecture pipeline with channels ``scale`` x SD's; returns the
    sizes (parameters per component)."""
    import transformers

    diffusers = _diffusers()
    torch.manual_seed(0)
    ch = [max(32, int(round(c * scale / 32)) * 32) for c in (320, 640, 1280, 1280)]
    cross = ch[0] * 2
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=ch, layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=cross, attention_head_dim=8, norm_num_groups=32)
    vae_ch = [max(32, c // 4) for c in (128, 256, 512, 512)]
    vae = diffusers.AutoencoderKL(
        block_out_channels=vae_ch, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
        norm_num_groups=32, sample_size=256, scaling_factor=0.18215)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, hidden_size=cross, intermediate_size=4 * cross,
        num_attention_heads=8, num_hidden_layers=4, pad_token_id=1, vocab_size=100,
        max_position_embeddings=77))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tok = folder.parent / "vocab"
    tok.mkdir(parents=True, exist_ok=True)
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(tok / "vocab.json"), str(tok / "merges.txt"),
                                           model_max_length=77)
    scheduler = diffusers.DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        lower_order_final=False, final_sigmas_type="sigma_min")
    diffusers.StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)
    return {name: sum(p.numel() for p in m.parameters()) / 1e6
            for name, m in (("unet", unet), ("vae", vae), ("text_encoder", text))}


def run_side(side: str, folder: Path, latents: Path, out: Path, steps: int,
             guidance: float) -> None:
    """One library in this process: warm up, time one run, save the images and a JSON of the
    time and this process's peak resident memory."""
    torch.set_num_threads(1)
    x_T = torch.from_numpy(np.load(latents))
    n = x_T.shape[0]
    diffusers = _diffusers()
    if side == "diffusers":
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(
            folder, safety_checker=None, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)

        def once() -> torch.Tensor:
            out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps,
                       guidance_scale=1 + guidance, latents=x_T.clone(),
                       num_images_per_prompt=n, output_type="pt")
            return out.images * 2 - 1  # [0, 1] -> [-1, 1]
    else:
        from sde_gen.interop.stable_diffusion import load_stable_diffusion
        from sde_gen.sampling import sample

        sd = load_stable_diffusion(folder)
        sched = diffusers.DPMSolverMultistepScheduler.from_pretrained(folder / "scheduler")
        sched.set_timesteps(steps)
        ts = sd.sde.index_to_time(torch.cat([sched.timesteps, torch.zeros(1, dtype=torch.long)]))
        h, w = (8 * s for s in x_T.shape[-2:])
        codec = sd.codec(h, w)
        per = 1 if side == "sde-gen-sliced" else n

        def once() -> torch.Tensor:
            model = sd.guided(PROMPT, negative_prompt=NEGATIVE, guidance=guidance)
            z = sample(model, sd.sde, None, "dpm", x_T=x_T.clone(), ts=ts, denoise=False,
                       order=2, lower_order_final=False).x
            with torch.no_grad():
                return torch.cat([codec.decode(z[i:i + per]) for i in range(0, n, per)])

    unet, vae = (pipe.unet, pipe.vae) if side == "diffusers" else (sd.model.unet, sd.vae)
    spent = {"unet": 0.0, "decoder": 0.0}
    for name, module in (("unet", unet), ("decoder", vae.decoder)):
        timer = _Timer(spent, name)
        module.register_forward_pre_hook(timer.start)
        module.register_forward_hook(timer.stop)
    with torch.no_grad():
        images = once()
        spent.update(unet=0.0, decoder=0.0)
        start = time.perf_counter()
        images = once()
        seconds = [time.perf_counter() - start]
    np.save(out.with_suffix(".npy"), images.float().clamp(-1, 1).numpy())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps({"seconds": seconds, "peak_mib": peak_mib, "n": n,
                               "unet": [spent["unet"]], "decoder": [spent["decoder"]]}))


class _Timer:
    """Forward hooks that add a module's wall time to ``spent[name]``."""

    def __init__(self, spent: dict, name: str) -> None:
        self.spent, self.name, self.t0 = spent, name, 0.0

    def start(self, *_) -> None:
        self.t0 = time.perf_counter()

    def stop(self, *_) -> None:
        self.spent[self.name] += time.perf_counter() - self.t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="128x128, 2 images, 4 steps, 1 repeat")
    p.add_argument("--size", type=int, default=256, help="image height and width")
    p.add_argument("--n", type=int, default=2, help="images per run")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--guidance", type=float, default=6.5, help="w (diffusers' g = 1 + w)")
    p.add_argument("--width-scale", type=float, default=0.25, help="channels x SD's")
    p.add_argument("--repeats", type=int, default=2, help="rounds of the three processes")
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--latents", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        return run_side(args.side, args.folder, args.latents, args.out, args.steps, args.guidance)
    if args.quick:
        args.size, args.n, args.steps, args.repeats, args.width_scale = 128, 2, 4, 1, 0.125
    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sizes = build_pipeline(tmp / "pipe", args.width_scale)
        latents = torch.randn(args.n, 4, args.size // 8, args.size // 8,
                              generator=torch.Generator().manual_seed(0))
        np.save(tmp / "latents.npy", latents.numpy())
        res: dict[str, dict] = {}
        for _ in range(args.repeats):  # the sides alternate: A B C A B C (a shared machine)
            for side in ("diffusers", "sde-gen", "sde-gen-sliced"):
                out = tmp / f"{side}.json"
                subprocess.run([sys.executable, "-m", "benchmarks.stable_diffusion", "--side",
                                side, "--folder", str(tmp / "pipe"), "--latents",
                                str(tmp / "latents.npy"), "--out", str(out), "--steps",
                                str(args.steps), "--guidance", str(args.guidance)], check=True)
                r = json.loads(out.read_text())
                res.setdefault(side, {"seconds": [], "unet": [], "decoder": [],
                                      "peak_mib": 0.0, "n": r["n"]})
                for key in ("seconds", "unet", "decoder"):
                    res[side][key] += r[key]
                res[side]["peak_mib"] = max(res[side]["peak_mib"], r["peak_mib"])
                res[side]["images"] = np.load(out.with_suffix(".npy"))
    base = res["diffusers"]
    rows = []
    for side, r in res.items():
        sec = statistics.median(r["seconds"]) / r["n"]
        rest = statistics.median(t - u - d for t, u, d in zip(r["seconds"], r["unet"],
                                                                r["decoder"])) / r["n"]
        rows.append({
            "library": {"diffusers": "diffusers StableDiffusionPipeline + DPMSolverMultistep",
                        "sde-gen": "sde-gen dpm (guided, decode all at once)",
                        "sde-gen-sliced": "sde-gen dpm, --decode-batch 1"}[side],
            "NFE": args.steps, "s / image": sec,
            "ratio to diffusers": sec / (statistics.median(base["seconds"]) / base["n"]),
            "UNet s / image": statistics.median(r["unet"]) / r["n"],
            "decoder s / image": statistics.median(r["decoder"]) / r["n"],
            "the rest, ms / image": 1000 * rest,
            "peak RSS (MiB)": int(round(r["peak_mib"])),
            "max abs diff to diffusers": float(np.abs(r["images"] - base["images"]).max()),
        })
    cols = ["library", "NFE", "s / image", "ratio to diffusers", "UNet s / image",
            "decoder s / image", "the rest, ms / image", "peak RSS (MiB)",
            "max abs diff to diffusers"]
    text = header("Stable Diffusion folder: sde-gen against diffusers' pipeline at equal NFE")
    text += (f"\nA random SD 1.x-architecture pipeline, channels {args.width_scale} x SD's "
             f"(parameters, millions: UNet {sizes['unet']:.1f}, VAE {sizes['vae']:.1f}, text "
             f"encoder {sizes['text_encoder']:.1f}); {args.size}x{args.size} images (latents "
             f"4x{args.size // 8}x{args.size // 8}), {args.n} images per run, {args.steps} "
             f"DPM-Solver++(2M) steps, classifier-free guidance w = {args.guidance:g} (diffusers' "
             f"g = {1 + args.guidance:g}) against a negative prompt, images decoded; median of "
             f"{args.repeats} rounds (the processes alternate; each times one run after a "
             "warm-up), one thread. See "
             "the module docstring of `benchmarks/stable_diffusion.py`.\n\n")
    text += table(rows, cols) + "\n"
    text += (f"\nTotal: {time.perf_counter() - start:.0f} s. A device was not lent to this "
             "work: GPU seconds per image at 512x512 with SD's full UNet are not measured.\n")
    print(text)
    write_result("stable_diffusion", text)


if __name__ == "__main__":
    main()
