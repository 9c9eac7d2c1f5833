"""Latent diffusion: a first-stage autoencoder (diffusers' ``AutoencoderKL``, imported only when
one is built or loaded) and the frozen codec between images and a score model's latents."""

from .autoencoder import (
    AUTOENCODER_FACTORS,
    AutoencoderTerms,
    KLAutoencoder,
    autoencoder_loss,
    elbo_terms,
    psnr,
    require_diffusers,
)
from .codec import LatentCodec, check_scaling, latent_scaling, weights_sha256

__all__ = ["AUTOENCODER_FACTORS", "AutoencoderTerms", "KLAutoencoder", "LatentCodec",
           "autoencoder_loss", "check_scaling", "elbo_terms", "latent_scaling", "psnr",
           "require_diffusers", "weights_sha256"]
