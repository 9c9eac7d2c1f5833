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
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, table, write_result  # noqa: E402

from sde_gen import ScoreModel, VPSDE  # noqa: E402
from sde_gen.scaling import dequantize  # noqa: E402
from sde_gen.likelihood import bits_per_dim, log_likelihood  # noqa: E402
from sde_gen.nets.unet import UNET_PRESETS, UNet  # noqa: E402


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--n", type=int, default=32, help="images")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tol", type=float, default=1e-5)
    args = p.parse_args()
    device = torch.device(args.device)
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
                               eps=eps, generator=torch.Generator(device=device).manual_seed(i))
            out.append(r.logp)
            nfe += r.nfe
        return torch.cat(out), nfe / math.ceil(args.n / args.batch)

    (logp, nfe), sec = timed(ours, device)
    bpd = bits_per_dim(logp, x.shape[1:])
    rows.append({"method": "sde_gen log_likelihood", "s/image": sec / args.n, "NFE": nfe,
                 "bpd": bpd.mean().item(), "stderr": bpd.std().item() / math.sqrt(args.n)})
    try:
        from k_diffusion.sampling import log_likelihood as kd_ll
    except ImportError:
        kd_ll = None
        print("k-diffusion not installed: peer skipped (pip install -e '.[bench]')")
    if kd_ll is not None:
        def denoiser(x_ve, s):  # VE coords: x_ve = x/alpha, s = sigma/alpha
            t = sde.t_from_log_snr(-torch.log(s.double())).to(x_ve.dtype)
            a = sde.marginal_coeffs(t)[0][:, None, None, None]
            return model.denoise(a * x_ve, t)

        a_e, s_e = (float(v) for v in sde.marginal_coeffs(torch.tensor([eps], dtype=torch.float64)))
        a_T, s_T = (float(v) for v in sde.marginal_coeffs(torch.tensor([1.0], dtype=torch.float64)))

        def peer():
            out, nfe = [], 0
            for i in range(0, args.n, args.batch):
                xb = x[i:i + args.batch]
                ll, info = kd_ll(denoiser, xb / a_e, s_e / a_e, s_T / a_T, atol=args.tol, rtol=args.tol)
                out.append(ll - xb[0].numel() * math.log(a_e))  # back to VP coordinates at eps
                nfe += info["fevals"]
            return torch.cat(out), nfe / math.ceil(args.n / args.batch)

        (logp_k, nfe_k), sec_k = timed(peer, device)
        bpd_k = bits_per_dim(logp_k, x.shape[1:])
        rows.append({"method": "k-diffusion log_likelihood", "s/image": sec_k / args.n, "NFE": nfe_k,
                     "bpd": bpd_k.mean().item(), "stderr": bpd_k.std().item() / math.sqrt(args.n)})
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
