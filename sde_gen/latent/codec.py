"""A frozen autoencoder as the map between images and a score model's latent space.

Latent diffusion ([Rombach22] Sec. 4.3.2) diffuses the scaled latent

    z~ = s (mu(x) - b),          x = D(z~ / s + b),

with ``mu(x)`` the encoder's posterior mean, ``D`` the decoder, ``s`` the scaling factor and ``b``
the shift (diffusers' ``scaling_factor`` and ``shift_factor``; SD 1.x/2.x: s = 0.18215, b = 0;
SD3 and Flux set both). Computed from data (:func:`latent_scaling`), ``b`` is the latents' mean and
``s`` one over their standard deviation, so the score model sees data of unit variance, which its
prior and ``sigma_data`` assume ([Rombach22] App. G: "rescale the latents by 1/sigma-hat").

The posterior mean is encoded, not a draw: the training latents are then a fixed set (encoded
once per run), and the decoder reconstructs the mean best. With the small KL weight of the first
stage the posterior's std is far below the latents' spread, so little differs.

Refs: [Rombach22] Sec. 4.3.2, App. G; [Esser24] (shift_factor).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import nn

from ..errors import UserInputError
from ..scaling import uint8_to_model

__all__ = ["LatentCodec", "check_scaling", "latent_scaling", "weights_sha256"]


def check_scaling(scaling_factor: Any, shift_factor: Any, where: str) -> tuple[float, float]:
    """``(s, b)`` as floats; a factor that is not a finite non-zero number (or a shift that is
    not finite) is a one-line :class:`UserInputError` naming ``where`` it came from."""
    try:
        s = float(scaling_factor)
        b = float(0.0 if shift_factor is None else shift_factor)
    except (TypeError, ValueError):
        raise UserInputError(f"{where}: scaling_factor {scaling_factor!r} and shift_factor "
                             f"{shift_factor!r} must be numbers") from None
    if not math.isfinite(s) or s == 0.0:
        raise UserInputError(f"{where}: scaling_factor {scaling_factor!r} must be a finite, "
                             "non-zero number (latents are multiplied by it)")
    if not math.isfinite(b):
        raise UserInputError(f"{where}: shift_factor {shift_factor!r} must be finite")
    return s, b


def latent_scaling(latents: torch.Tensor, where: str) -> tuple[float, float]:
    """``(s, b) = (1 / std, mean)`` of unscaled latents ``(N, c, h, w)``, in float64.

    Raises:
        UserInputError: the latents are constant (std 0) or not finite.
    """
    z = latents.double()
    b, std = z.mean().item(), z.std().item()
    if not (math.isfinite(std) and std > 0):
        raise UserInputError(f"{where}: the training latents have std {std} (a constant or "
                             "diverged encoder); no scaling_factor can be computed")
    return check_scaling(1.0 / std, b, where)


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes, in name order): what
    identifies an autoencoder to the runs trained on its latents."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class LatentCodec(nn.Module):
    """A frozen diffusers ``AutoencoderKL`` (``vae``) with its latent scaling.

    Args:
        vae: the autoencoder (its ``encode(x).latent_dist`` and ``decode(z).sample``).
        scaling_factor, shift_factor: ``s`` and ``b`` (checked: finite, ``s != 0``).
        factor: the downsampling factor ``f``.
        image_shape: ``(C, H, W)`` of the images.
        log_scale: the decoder's log-scale when it defines a likelihood (an sde-gen first stage,
            :class:`~.autoencoder.KLAutoencoder`), else ``None``.
        sha256: :func:`weights_sha256` of the autoencoder (computed when ``None``).

    Shapes: images ``(B, C, H, W)`` in [-1, 1]; latents ``(B, c, H/f, W/f)``.
    """

    def __init__(self, vae: nn.Module, *, scaling_factor: float, shift_factor: float,
                 factor: int, image_shape: tuple[int, int, int],
                 log_scale: torch.Tensor | None = None, sha256: str | None = None) -> None:
        super().__init__()
        self.scaling_factor, self.shift_factor = check_scaling(scaling_factor, shift_factor,
                                                               "the latent codec")
        self.vae = vae.eval().requires_grad_(False)
        self.factor = factor
        self.image_shape = tuple(image_shape)
        self.latent_channels = int(vae.config.latent_channels)
        self.log_scale = None if log_scale is None else log_scale.detach().clone()
        self.sha256 = sha256 if sha256 is not None else weights_sha256(vae)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(c, H/f, W/f)``."""
        c, h, w = self.image_shape
        return (self.latent_channels, h // self.factor, w // self.factor)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled ``(mu, logvar)`` of q(z|x)."""
        dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        return dist.mean, dist.logvar

    def scale(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent -> the score model's ``s (z - b)``."""
        return (z - self.shift_factor) * self.scaling_factor

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        """The score model's latent -> unscaled ``z / s + b``."""
        return z / self.scaling_factor + self.shift_factor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> scaled latents of their posterior means."""
        return self.scale(self.posterior(x)[0])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images (the decoder's mean, in the decoder's dtype)."""
        return self.vae.decode(self.unscale(z).to(self.vae.dtype)).sample

    @torch.no_grad()
    def encode_all(self, x: torch.Tensor, *, batch_size: int = 256,
                   device: torch.device | str = "cpu") -> torch.Tensor:
        """Unscaled posterior means of many images (``(N, C, H, W)``, uint8 pixels or floats in
        [-1, 1]), in batches on ``device``; returned on ``device``, float32."""
        out = []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            xb = xb if xb.is_floating_point() else uint8_to_model(xb)
            out.append(self.posterior(xb)[0].float())
        return torch.cat(out)

    def metadata(self) -> dict[str, Any]:
        """What a latent run records: the scaling and the autoencoder's hash."""
        return {"scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor,
                "factor": self.factor, "latent_shape": list(self.latent_shape),
                "autoencoder_sha256": self.sha256}
