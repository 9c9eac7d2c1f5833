"""The first stage of latent diffusion: a KL-regularized convolutional autoencoder.

The network is diffusers' ``AutoencoderKL`` (the encoder/decoder of [Rombach22] App. G and of
Stable Diffusion), built here at a chosen downsampling factor ``f = 2^(levels - 1)`` and ``c``
latent channels. diffusers is an optional extra: this module imports it only when a network is
built, so ``import sde_gen`` never needs it.

The objective is [Rombach22] Sec. 3 without its adversarial and perceptual terms (no
perceptual-network weights, LPIPS's VGG, can be loaded offline, and a patch discriminator
without them mostly sharpens texture that 28x28 digits do not have):

    L = E_q(z|x)[-log p(x|z)] + w KL(q(z|x) || N(0, I)),   per image dimension,

with q(z|x) = N(mu(x), diag sigma(x)^2), the reparameterized draw z = mu + sigma eps, and a
Gaussian decoder p(x|z) = N(D(z), s^2 I) whose scalar log-scale ``log s`` is learned (the learned
``logvar`` of the LDM code's reconstruction loss, with a squared instead of an absolute error).
Because the decoder is a density, the autoencoder has a likelihood: -L at ``w = 1`` is the ELBO
of a VAE with prior N(0, I), and :func:`elbo_terms` gives both terms for bits/dim.

Refs: [Rombach22] Sec. 3, App. G (kl weight 1e-6); [Kingma14] (reparameterization, ELBO).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UserInputError

__all__ = ["AUTOENCODER_FACTORS", "INSTALL_HINT", "AutoencoderTerms", "KLAutoencoder",
           "autoencoder_loss", "elbo_terms", "psnr", "require_diffusers"]

#: The downsampling factors a first stage may have ([Rombach22] Table 8 uses f = 1..32).
AUTOENCODER_FACTORS = (2, 4, 8)
INSTALL_HINT = 'pip install -e ".[diffusers]"'
LOG_2PI = math.log(2 * math.pi)


def require_diffusers(what: str) -> Any:
    """The ``diffusers`` module, or a one-line :class:`UserInputError` naming the extra."""
    try:
        import diffusers
    except ImportError:
        raise UserInputError(f"{what} needs diffusers' AutoencoderKL, the diffusers extra: "
                             f"{INSTALL_HINT}") from None
    return diffusers


def _groups(channels: int) -> int:
    """GroupNorm groups for a network whose every width is a multiple of ``channels``."""
    return math.gcd(32, channels)


class KLAutoencoder(nn.Module):
    """diffusers' ``AutoencoderKL`` with a learned decoder log-scale: the trainable first stage.

    Args:
        in_channels: image channels.
        latent_channels: ``c``.
        factor: ``f`` in :data:`AUTOENCODER_FACTORS`; the network has ``log2 f + 1`` levels.
        block_out_channels: the width of each level (``log2 f + 1`` of them).
        layers_per_block: residual blocks per level.
        image_size: the training images' side (recorded as diffusers' ``sample_size``).

    Shapes: ``x: (B, C, H, W)`` in [-1, 1] with ``H, W`` divisible by ``f``; latents
    ``(B, c, H/f, W/f)``.
    """

    num_classes = None  # the training loop's question: an autoencoder takes no labels

    def __init__(self, *, in_channels: int, latent_channels: int, factor: int,
                 block_out_channels: tuple[int, ...], layers_per_block: int,
                 image_size: int) -> None:
        super().__init__()
        if factor not in AUTOENCODER_FACTORS:
            raise UserInputError(f"autoencoder factor {factor} is not one of "
                                 f"{', '.join(map(str, AUTOENCODER_FACTORS))}")
        levels = int(math.log2(factor)) + 1
        if len(block_out_channels) != levels:
            raise UserInputError(f"an autoencoder with factor {factor} has {levels} levels; got "
                                 f"{len(block_out_channels)} widths {list(block_out_channels)}")
        diffusers = require_diffusers("an autoencoder (model.name=autoencoder)")
        self.factor, self.latent_channels = factor, latent_channels
        self.vae = diffusers.AutoencoderKL(
            in_channels=in_channels, out_channels=in_channels,
            down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            latent_channels=latent_channels, norm_num_groups=_groups(min(block_out_channels)),
            sample_size=image_size)
        self.log_scale = nn.Parameter(torch.zeros(()))  # log s of p(x|z) = N(D(z), s^2 I)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of q(z|x) (diffusers clamps logvar to [-30, 20])."""
        dist = self.vae.encode(x).latent_dist
        return dist.mean, dist.logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean ``D(z)``."""
        return self.vae.decode(z).sample

    def forward(self, x: torch.Tensor, eps: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(D(mu + sigma eps), mu, logvar)``: one reparameterized pass ([Kingma14] Eq. 10)."""
        mu, logvar = self.posterior(x)
        return self.decode(mu + torch.exp(0.5 * logvar) * eps), mu, logvar


@dataclass(frozen=True)
class AutoencoderTerms:
    """Per-example terms in nats: ``nll`` = -log p(x|z) (summed over image dims), ``kl`` =
    KL(q(z|x) || N(0, I)) (summed over latent dims), and ``loss`` = (nll + w kl) / D."""

    loss: torch.Tensor
    nll: torch.Tensor
    kl: torch.Tensor


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """``-log N(x; mean, s^2 I)`` summed over each example's dims, ``(B,)``."""
    r = (x - mean) * torch.exp(-log_scale)
    return (0.5 * r.square() + log_scale + 0.5 * LOG_2PI).flatten(1).sum(1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, e^logvar) || N(0, I))`` summed over each example's dims, ``(B,)``."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def autoencoder_loss(model: nn.Module, x: torch.Tensor, *, kl_weight: float,
                     generator: torch.Generator | None = None) -> AutoencoderTerms:
    """The first stage's objective (module docstring) for a batch ``x: (B, C, H, W)``.

    ``model`` is a :class:`KLAutoencoder` (or its DDP wrapper); ``eps`` is drawn from
    ``generator`` in the latents' shape (one draw per step, so resume stays bitwise).
    """
    ae = model.module if hasattr(model, "module") else model
    f = ae.factor
    b, _, h, w = x.shape
    eps = torch.randn((b, ae.latent_channels, h // f, w // f), generator=generator,
                      device=x.device, dtype=x.dtype)
    x_hat, mu, logvar = model(x, eps)
    nll = gaussian_nll(x, x_hat.float(), ae.log_scale)
    kl = gaussian_kl(mu.float(), logvar.float())
    d = x[0].numel()
    return AutoencoderTerms(loss=(nll + kl_weight * kl) / d, nll=nll, kl=kl)


@torch.no_grad()
def elbo_terms(ae: KLAutoencoder, x: torch.Tensor, *,
               generator: torch.Generator | None = None) -> AutoencoderTerms:
    """One-sample estimates of ``-log p(x|z)`` and the exact KL of the VAE with prior N(0, I)
    (``loss`` at ``w = 1``: the negative ELBO per dim), for dequantized ``x`` in [-1, 1]."""
    mu, logvar = ae.posterior(x)
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    x_hat = ae.decode(mu + torch.exp(0.5 * logvar) * eps)
    nll, kl = gaussian_nll(x, x_hat, ae.log_scale), gaussian_kl(mu, logvar)
    return AutoencoderTerms(loss=(nll + kl) / x[0].numel(), nll=nll, kl=kl)


def psnr(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``x_hat`` against ``x``, both in [0, 1]: 10 log10(1 / MSE)."""
    mse = (x.float() - x_hat.float()).square().flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-12))
