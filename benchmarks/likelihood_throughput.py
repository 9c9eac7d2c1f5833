"""Bits/dim evaluation speed: sde_gen's log_likelihood versus k-diffusion's, same network.

Both integrate the probability-flow ODE with dopri5 at the same tolerances and one Rademacher
probe; k-diffusion works in VE coordinates (x/alpha, sigma/alpha), wired to the same VP U-Net.
Reports seconds per image, NFE, and the mean bits/dim of each with its standard error.

    python benchmarks/likelihood_throughput.py             # CPU: tiny U-Net on random 8x8 images
    python benchmarks/likelihood_throughput.py --device cuda --preset ddpm_cifar10 --size 32 --n 256
"""

from __future__ import annotations

import argparse
import math

import torch

from benchmarks.common import header, table, write_result
from benchmarks.peers import (
    import_kdiffusion,
    kdiffusion_denoiser,
    resolve_device,
    timed,
    ve_sigma,
)
from sde_gen import VPSDE, ScoreModel
from sde_gen.likelihood import bits_per_dim, log_likelihood
from sde_gen.nets.unet import UNET_PRESETS, UNet
from sde_gen.scaling import dequantize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, ...")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--n", type=int, default=32, help="images")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tol", type=float, default=1e-5)
    args = p.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    sde = VPSDE()
    kw = dict(UNET_PRESETS[args.preset])
    kw["resolution"] = args.size
    torch.manual_seed(0)
    net = UNet(**kw)
    with torch.no_grad():  # a random but non-trivial network (its zero-init output layer perturbed)
        for q in net.parameters():
            if q.abs().max() == 0:
                q.normal_(0, 0.02)
    model = ScoreModel(net, sde).to(device).eval().requires_grad_(False)
    c = kw.get("in_channels", 3)
    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (args.n, c, args.size, args.size), dtype=torch.uint8, generator=g)
    x = dequantize(x8, generator=g).to(device)
    eps = 1e-5
    rows = []

    def ours():
        out, nfe = [], 0
        for i in range(0, args.n, args.batch):
            r = log_likelihood(model, sde, x[i:i + args.batch], rtol=args.tol, atol=args.tol,
                               t_min=eps, generator=torch.Generator(device=device).manual_seed(i))
            out.append(r.logp)
            nfe += r.nfe
        return torch.cat(out), nfe / math.ceil(args.n / args.batch)

    (logp, nfe), sec = timed(ours, device)
    bpd = bits_per_dim(logp, x)
    rows.append({"method": "sde_gen log_likelihood", "s/image": sec / args.n, "NFE": nfe,
                 "bpd": bpd.mean().item(), "stderr": bpd.std().item() / math.sqrt(args.n)})
    kd = import_kdiffusion()
    if kd is not None:
        denoiser = kdiffusion_denoiser(sde, model.denoise, prediction="x0")
        a_e = float(sde.marginal_coeffs(torch.tensor([eps], dtype=torch.float64))[0])
        s_min, s_max = ve_sigma(sde, eps), ve_sigma(sde, 1.0)

        def peer():
            out, nfe = [], 0
            for i in range(0, args.n, args.batch):
                xb = x[i:i + args.batch]
                ll, info = kd.log_likelihood(denoiser, xb / a_e, s_min, s_max, atol=args.tol,
                                              rtol=args.tol)
                out.append(ll - xb[0].numel() * math.log(a_e))  # back to VP coordinates at eps
                nfe += info["fevals"]
            return torch.cat(out), nfe / math.ceil(args.n / args.batch)

        (logp_k, nfe_k), sec_k = timed(peer, device)
        bpd_k = bits_per_dim(logp_k, x)
        rows.append({"method": "k-diffusion log_likelihood", "s/image": sec_k / args.n,
                     "NFE": nfe_k, "bpd": bpd_k.mean().item(),
                     "stderr": bpd_k.std().item() / math.sqrt(args.n)})
        rows[0]["speed-up vs k-diffusion"] = sec_k / sec
    text = header("Likelihood throughput: bits/dim through the probability-flow ODE", device)
    text += (f"\nU-Net preset `{args.preset}` at {args.size}x{args.size}, {args.n} uniformly "
             f"dequantized random 8-bit images, batch {args.batch}, dopri5 rtol=atol={args.tol:g}, "
             "one Rademacher probe, eps 1e-5.\n\n")
    text += table(rows, ["method", "s/image", "NFE", "bpd", "stderr", "speed-up vs k-diffusion"])
    if device.type == "cpu":
        text += ("\n\nOnly a CPU was available for this run: the issue's GPU comparison (DDPM-size "
                 "U-Net, >= 1.5x k-diffusion) is not measured here.\n")
    print(text)
    write_result("likelihood_throughput", text + "\n")


if __name__ == "__main__":
    main()
