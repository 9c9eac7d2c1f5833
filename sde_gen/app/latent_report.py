"""Reports of latent diffusion: a first stage's reconstruction error and likelihood, and a latent
score model's likelihood, in latent nats and as a bound on image bits/dim.

**Latent likelihood.** The probability-flow ODE gives ``log p_theta(z~)`` of a scaled latent
``z~ = s (z - b)``; it is reported per latent dimension in nats. It is *not* an image likelihood:
the latents are a lossy, learned code of the images.

**Image bound** (where the decoder is a density, an sde-gen first stage's N(D(z), e^{2 log s} I)):
with q(z|x) the encoder's posterior and one draw z = mu + sigma eps from it,

    log p(x) >= E_q[log p(x|z) + log p_theta(z) - log q(z|x)],
    log p_theta(z) = log p_theta~(s (z - b)) + d_z log |s|     (change of variables),

LSGM's bound ([Vahdat21] Eq. 2) with the score model's ODE likelihood as the prior; the mean
over examples of the one-draw estimate is unbiased for the mean bound. It is taken in bits/dim of
the dequantized 8-bit images like every image likelihood here (:func:`~sde_gen.likelihood.
bits_per_dim`). A diffusers ``AutoencoderKL`` decodes to a mean only, so it has no such bound.

Refs: [Vahdat21] Eq. 2; [Kingma14]; [Rombach22] Sec. 3.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import UserInputError
from ..latent import elbo_terms, psnr
from ..latent.autoencoder import LOG_2PI, gaussian_nll
from ..likelihood.bpd import bits_per_dim
from ..likelihood.ode_likelihood import log_likelihood
from ..noise import IndexedGenerator, block_size_for
from ..scaling import dequantize, from_model, uint8_to_model
from .factory import build_data
from .runs import LoadedRun

__all__ = ["evaluate_autoencoder", "evaluate_latent_likelihood"]


def _mean_stderr(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    se = v.std(unbiased=True).item() / math.sqrt(v.numel()) if v.numel() > 1 else float("nan")
    return v.mean().item(), se


def _dequantized(x: torch.Tensor, seed: int, stream: int) -> torch.Tensor:
    gen = IndexedGenerator(seed, 0, len(x), block=block_size_for(x.shape[1:]), stream=stream)
    return dequantize(x, generator=gen, dtype=torch.float32)


def evaluate_autoencoder(run: LoadedRun, *, n: int = 1000, batch_size: int = 256,
                         split: str = "test", seed: int = 0,
                         device: torch.device | str = "cpu") -> dict[str, Any]:
    """A first stage on the first ``n`` images of ``split``: PSNR (dB, per image, of the
    posterior mean's reconstruction against the 8-bit image, both in [0, 1]), the MSE, and the
    bits/dim of the VAE with prior N(0, I) (the negative ELBO with one posterior draw, of the
    dequantized images): the decoder's likelihood, and the floor that no latent model can pass
    in PSNR."""
    ae = run.model
    data = build_data(run.cfg.data, split)
    x8 = data.x[:min(n, len(data))]
    x_deq = _dequantized(x8, seed, 1)
    psnrs, mses, bpds = [], [], []
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x8), batch_size):
            x = uint8_to_model(x8[i:i + batch_size]).to(device)
            x_hat = ae.decode(ae.posterior(x)[0])
            ref, rec = from_model(x), from_model(x_hat.float())
            rec = torch.round(rec * 255) / 255  # what is written as 8-bit pixels
            psnrs.append(psnr(ref, rec).cpu())
            mses.append((ref - rec).square().flatten(1).mean(1).cpu())
            xd = x_deq[i:i + batch_size].to(device)
            g = torch.Generator(device=device).manual_seed(seed + i)
            bpds.append(bits_per_dim(-elbo_terms(ae, xd, generator=g).loss * xd[0].numel(),
                                     xd).cpu())
    rep: dict[str, Any] = {"split": split, "n": len(x8), "seconds": time.perf_counter() - start}
    rep["psnr_db"], rep["psnr_stderr"] = _mean_stderr(torch.cat(psnrs))
    rep["mse"], _ = _mean_stderr(torch.cat(mses))
    rep["vae_bpd"], rep["vae_bpd_stderr"] = _mean_stderr(torch.cat(bpds))
    rep["decoder_log_scale"] = float(ae.log_scale)
    return rep


def evaluate_latent_likelihood(
    run: LoadedRun, *, n: int = 2048, batch_size: int = 512, split: str = "test",
    trace: str | None = None, rtol: float = 1e-5, atol: float = 1e-5, t_min: float = 1e-5,
    seed: int = 0, device: torch.device | str = "cpu", progress: bool = True,
) -> dict[str, Any]:
    """The latent ODE likelihood of ``n`` images of ``split`` (one posterior draw each) and,
    where the decoder is a density, the bound on image bits/dim (module docstring).

    Returns ``latent_nll_nats`` (per example), ``latent_nats_per_dim`` (the headline number,
    with its standard error), ``latent_dims``, ``nfe``, ``seconds`` and, with a decoder
    likelihood, ``bpd_bound`` / ``bpd_bound_stderr`` and its terms in nats per example."""
    codec = run.codec
    if split not in ("train", "test"):
        raise UserInputError(f"unknown split {split!r}; choose one of train, test")
    data = build_data(run.cfg.data, split)
    x8 = data.x[:min(n, len(data))]
    x_all = _dequantized(x8, seed, 5 + (split == "test"))
    trace = trace or "hutchinson"
    d_z = math.prod(codec.latent_shape)
    parts: dict[str, list[torch.Tensor]] = {"latent": [], "rec": [], "entropy": []}
    nfes = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(x_all), batch_size), desc="likelihood", disable=not progress,
                  unit="batch"):
        x = x_all[i:i + batch_size].to(device)
        with torch.no_grad():
            mu, logvar = codec.posterior(x)
            draw = IndexedGenerator(seed, i, len(x), block=block_size_for(mu.shape[1:]),
                                    stream=7, device=device)
            eps = draw.draw(lambda m, g: torch.randn((m, *mu.shape[1:]), generator=g,
                                                     device=device))
            z = mu + torch.exp(0.5 * logvar) * eps
        probes = IndexedGenerator(seed, i, len(x), block=block_size_for(z.shape[1:]),
                                  stream=8, device=device)
        res = log_likelihood(run.model, run.sde, codec.scale(z).float(), trace=trace, rtol=rtol,
                             atol=atol, t_min=t_min, generator=probes)
        nfes.append(res.nfe)
        parts["latent"].append(res.logp.cpu().double())
        if codec.log_scale is not None:
            with torch.no_grad():
                x_hat = codec.vae.decode(z).sample.float()
                parts["rec"].append(-gaussian_nll(x, x_hat, codec.log_scale.to(device))
                                    .cpu().double())
                log_q = -0.5 * (eps.square() + LOG_2PI + logvar).flatten(1).sum(1)
                parts["entropy"].append(-log_q.cpu().double())
    logp = torch.cat(parts["latent"])
    rep: dict[str, Any] = {"split": split, "n": len(x_all), "trace": trace, "rtol": rtol,
                           "atol": atol, "t_min": t_min, "latent_dims": d_z,
                           "latent_shape": list(codec.latent_shape),
                           "nfe": sum(nfes) / len(nfes), "seconds": time.perf_counter() - start}
    rep["latent_nll_nats"], rep["latent_nll_stderr"] = _mean_stderr(-logp)
    rep["latent_nats_per_dim"], rep["latent_nats_per_dim_stderr"] = _mean_stderr(-logp / d_z)
    if codec.log_scale is None:
        rep["bpd_bound_note"] = ("no image bits/dim: the autoencoder's decoder (a diffusers "
                                 "AutoencoderKL) gives a mean, not a likelihood")
        return rep
    log_prior = logp + d_z * math.log(abs(codec.scaling_factor))  # log p_theta(z), unscaled z
    rec, entropy = torch.cat(parts["rec"]), torch.cat(parts["entropy"])
    elbo = rec + log_prior + entropy
    rep["bpd_bound"], rep["bpd_bound_stderr"] = _mean_stderr(bits_per_dim(elbo.float(), x_all))
    rep["bound_reconstruction_nats"] = rec.mean().item()
    rep["bound_latent_prior_nats"] = log_prior.mean().item()
    rep["bound_posterior_entropy_nats"] = entropy.mean().item()
    return rep
