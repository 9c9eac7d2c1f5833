"""Inverse problems with a latent model: DPS through the decoder ("latent DPS").

The measurement is of the image, ``y = A x0 + s z`` with ``x0 = D(z0)``, so as a function of the
latent ``z0`` it is ``y = A(D(z0)) + s z``: not linear, since the decoder ``D`` is not. What
stays exact is the prior: the reverse kernel in latent space is the model's, as for pixels. What
is approximate: DPS's ``p(y | z_t) ~ p(y | z0_hat(z_t))`` ([Chung23] Sec. 3.2, which allows a
nonlinear forward map) and, on top of it, that ``y`` is reachable at all, i.e. that the image lies
in the decoder's range (the autoencoder's reconstruction error is the floor of the fit). The
gradient ``grad_{z_t} ||y - A D(z0_hat(z_t))||^2`` itself is exact (one backward pass through the
decoder and the network). PiGDM, MMPS and twisted SMC need ``Cov[x0 | x_t]`` pushed through a
linear ``A``; they are not defined here.

Refs: [Chung23] Alg. 1, App. C.2; [Rombach22] (latent space); [Ho20] Eq. (7) (the kernel).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..chain import posterior_coeffs
from ..errors import UserInputError
from ..inverse.guidance import denoise_with_graph
from ..noise import Generator, randn
from ..parameterization import CountingModel, EpsModel
from ..sampling.driver import Progress, check_pure_start, check_shape, draw_prior, time_grid_for
from ..sampling.result import SampleResult
from ..sde import SDE

__all__ = ["restore_latent"]

DEFAULT_STEPS = 200
DEFAULT_SPACING = "logsnr"


def restore_latent(
    model: EpsModel, sde: SDE, y: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor],
    *, shape: tuple[int, ...], zeta: float = 1.0, generator: Generator = None,
    steps: int | None = None, t_min: float | None = None, spacing: str | None = None,
    device: torch.device | str | None = None, progress: bool = False,
) -> SampleResult:
    """Latents ``z0`` given ``y = forward(z0) + noise`` by DPS with the paper's step (module
    docstring): after each kernel step ``z_s -= zeta / ||r|| grad_{z_t} ||r||^2``, with
    ``r = y - forward(z0_hat(z_t))``; the kernel's variance is the geometric mean of DDPM's two.

    Args:
        model: eps-model of the (scaled) latents; differentiable.
        sde: its SDE.
        y: ``(B or 1, *M)`` measurements.
        forward: latents ``(B, *shape[1:])`` -> ``(B, *M)`` (``A(D(z))``), differentiable.
        shape: ``(B, *latent)``.
        zeta: DPS's step scale (> 0).
        generator, steps, t_min, spacing, device, progress: as in
            :func:`sde_gen.inverse.restore` (default 200 log-SNR steps).

    Returns:
        :class:`SampleResult` of latents; ``nfe`` counts the model's forward calls.

    Raises:
        UserInputError: ``zeta`` not positive and finite, or ``y`` not finite or not of
            ``forward``'s output shape.
    """
    if not (isinstance(zeta, (int, float)) and math.isfinite(zeta) and zeta > 0):
        raise UserInputError(f"zeta must be a finite number > 0, got {zeta!r}")
    shape = check_shape(shape)
    ts = time_grid_for(sde, steps=steps, t_min=t_min, spacing=spacing, default_steps=DEFAULT_STEPS,
                       default_spacing=DEFAULT_SPACING, device=device)
    check_pure_start(model, sde, ts)
    z = draw_prior(sde, shape, generator=generator, device=device, dtype=torch.float32)
    with torch.no_grad():
        want = tuple(forward(z[:1]).shape[1:])
    if not torch.is_tensor(y) or tuple(y.shape[1:]) != want or y.shape[0] not in (1, shape[0]):
        raise UserInputError(f"y must have shape (B or 1, *{want}), got "
                             f"{tuple(getattr(y, 'shape', ()))}")
    if not bool(torch.isfinite(y).all()):
        raise UserInputError("y has NaN or infinite values")
    y = y.to(device=z.device, dtype=z.dtype).expand(shape[0], *want)
    alpha, sigma = sde.marginal_coeffs(ts.to(torch.float64))
    post = posterior_coeffs(alpha.to(torch.float64), sigma.to(torch.float64))
    kernel_var = (post.var_tilde * post.v).sqrt()
    counted = CountingModel(model)
    with Progress(len(ts) - 1, desc="restore (latent dps)", show=progress) as bar:
        for k in range(len(ts)):
            t = ts[k].to(z.dtype).expand(shape[0])
            with torch.enable_grad():
                z0, leaf, _, _ = denoise_with_graph(counted, sde, z, t)
                shift = None
                if leaf is not None:  # grad_{z_t} ||r||^2, r = y - A(D(z0_hat))
                    r = y - forward(z0)
                    sq = r.flatten(1).square().sum(1)
                    grad = torch.autograd.grad(sq.sum(), leaf)[0]
                    step = zeta / sq.sqrt().clamp_min(1e-12)  # App. C.2 [Chung23]
                    shift = -step.reshape(-1, *([1] * (grad.ndim - 1))) * grad
            z0 = z0.detach()
            if k == len(ts) - 1:  # Tweedie's last step, guided
                z = z0 if shift is None else z0 + shift
                break
            noise = randn(shape, generator, dtype=z.dtype, device=z.device)
            z = float(post.c_x[k]) * z + float(post.c_x0[k]) * z0  # Eq. (7) [Ho20]
            z = z + math.sqrt(float(kernel_var[k])) * noise
            z = (z if shift is None else z + shift).detach()
            bar.update()
    return SampleResult(x=z, x_mean=z, nfe=counted.nfe, ts=ts)
