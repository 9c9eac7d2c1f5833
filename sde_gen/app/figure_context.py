"""What every figure of :mod:`.figures` needs: the model, its SDE and data, seeded generators,
the chains and the PF-ODE encoder, and the times and step counts the figures show.

Refs: [Ho20] Eq. (4), Sec. 4.4; [Song21ddim] Eq. (12), Sec. 5.3.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..chain import chain_times
from ..errors import UserInputError
from ..likelihood import decode, encode, slerp
from ..parameterization import denoise_fn
from ..sampling import make_grid, sample
from .factory import build_data, is_image

#: The figures of an image run and of a 2-D run, each written as ``<prefix><name>.png``.
IMAGE_FIGURES = ("forward", "progressive", "ddim_consistency", "interpolation_ode",
                 "interpolation_ddpm")
TOY_FIGURES = ("forward", "progressive", "trajectories", "ddim_consistency", "interpolation")
DDIM_STEPS = (10, 20, 50, 100)
FORWARD_TIMES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
PROGRESSIVE_TIMES = (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05)
INTERP_LEVELS = (0.1, 0.2, 0.3)  # DDPM interpolation: the noise levels t / T of its rows
ODE_TOL = 1e-5  # rtol = atol of the PF-ODE encoder and decoder


class FigureContext:
    """What every figure needs: the model, its SDE and data, seeded generators, the chains."""

    def __init__(self, model, sde, cfg, device, seed, ancestral_steps, interpolation_steps,
                 codec=None):
        if ancestral_steps is not None and ancestral_steps < 1:
            raise UserInputError(f"ancestral_steps must be positive, got {ancestral_steps}")
        if interpolation_steps < 1:
            raise UserInputError(f"interpolation_steps must be positive, got {interpolation_steps}")
        self.model, self.sde, self.cfg, self.device, self.seed = model, sde, cfg, device, seed
        self.ancestral_steps, self.interpolation_steps = ancestral_steps, interpolation_steps
        self.codec = codec  # a latent run: data are encoded, everything shown is decoded
        self.t_min = sde.default_t_min
        self.x0_hat = denoise_fn(model, sde)
        # The chains the figures draw: the discrete chain (DDPM's, SMLD's), or on a path
        # without one (the flow paths) the continuous posterior steps on its N-step grid.
        self.discrete = sde.chain != "none"
        self.chain = (chain_times(sde, self.t_min, device=device) if self.discrete else
                      make_grid(sde, sde.N - 1, t_min=self.t_min, device=device))
        if len(self.chain) < 2:
            raise UserInputError(f"the figures need a discrete chain of two or more steps above "
                                 f"t_min = {self.t_min:g}; this model's has {len(self.chain)}")

    @property
    def max_steps(self) -> int:
        """The most intervals a grid on the discrete chain holds (between t_min and T)."""
        return len(self.chain) - 1

    def fit_steps(self, steps: int) -> int:
        """``steps`` clamped to what the discrete chain holds (:attr:`max_steps`)."""
        return min(steps, self.max_steps)

    def ddim_steps(self) -> tuple[int, ...]:
        """:data:`DDIM_STEPS` clamped to the chain (and then distinct): DDIM's consistency
        figure on a 100-step chain shows 10, 20, 50 and 99 steps."""
        return tuple(sorted({self.fit_steps(s) for s in DDIM_STEPS}))

    def interp_times(self, levels: tuple[float, ...]) -> list[float]:
        """The noise levels of the DDPM interpolation rows: for each ``level``, the chain step
        nearest ``level * T`` that leaves at least one chain interval below it (distinct, in
        order; a short chain has fewer)."""
        chain = self.chain.double()
        times: list[float] = []
        for level in levels:
            i = int((chain - level * self.sde.T).abs().argmin())
            t = float(chain[min(i, len(chain) - 2)])
            if t not in times:
                times.append(t)
        return times

    def generator(self, offset: int = 0) -> torch.Generator:
        """A generator on the model's device seeded ``seed + offset`` (one offset per use)."""
        return torch.Generator(device=self.device).manual_seed(self.seed + offset)

    def data(self, k: int, offset: int = 0) -> torch.Tensor:
        """``k`` data examples in the model's range: held-out images (the test split where there
        is one), or fresh 2-D samples."""
        g = torch.Generator().manual_seed(self.seed + offset)
        if not is_image(self.cfg.data):
            return build_data(self.cfg.data).sample(k, generator=g).to(self.device)
        from ..scaling import uint8_to_model

        try:
            images = build_data(self.cfg.data, "test")
        except UserInputError:
            images = build_data(self.cfg.data, "train")
        if len(images) < k:
            raise UserInputError(f"the figures need {k} images; {images.origin} has {len(images)}")
        idx = torch.randperm(len(images), generator=g)[:k]
        x = uint8_to_model(images.x[idx]).to(self.device)
        return x if self.codec is None else self.codec.encode(x)

    def show(self, x: torch.Tensor) -> torch.Tensor:
        """What a figure shows of ``x`` (latents: decoded) in [0, 1], on the CPU."""
        from ..scaling import from_model

        if self.codec is not None:
            x = self.codec.decode(x.reshape(-1, *x.shape[-3:])).reshape(
                *x.shape[:-3], *self.codec.image_shape)
        return from_model(x.float().cpu())

    def prior(self, shape: tuple[int, ...], offset: int) -> torch.Tensor:
        return self.sde.prior_sampling(shape, generator=self.generator(offset), device=self.device)

    def diffuse(self, x0: torch.Tensor, t: float, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = alpha_t x0 + sigma_t noise`` ([Ho20] Eq. (4))."""
        alpha, sigma = self.sde.marginal_coeffs(torch.full((x0.shape[0],), t, device=x0.device))
        return _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * noise

    def ancestral(self, x_T: torch.Tensor, offset: int, **kw: Any):
        """DDPM's ancestral chain from ``x_T`` ([Ho20] Alg. 2), denoised at the end."""
        steps = {} if "ts" in kw else {"steps": self.ancestral_steps}
        if not self.discrete and "ts" not in kw:
            kw["ts"] = self.chain_from(self.sde.T, self.ancestral_steps or self.max_steps)
            steps = {}
        return sample(self.model, self.sde, None, "ancestral", x_T=x_T, discrete=self.discrete,
                      generator=self.generator(offset), **steps, **kw)

    def ddim(self, x_T: torch.Tensor, steps: int, **kw: Any):
        """Deterministic DDIM (eta = 0) on the discrete chain ([Song21ddim] Eq. (12))."""
        return sample(self.model, self.sde, None, "ddim", x_T=x_T, steps=self.fit_steps(steps),
                      discrete=self.discrete, spacing="uniform", eta=0.0, **kw)

    def chain_from(self, t: float, steps: int | None = None) -> torch.Tensor:
        """A respaced DDPM chain from the step nearest ``t`` down to the one nearest ``t_min``:
        ``steps`` intervals of the chain's steps (default ``ceil(interpolation_steps * t / T)``),
        at most every step."""
        chain = self.chain[self.chain <= t + 1e-9]
        if steps is None:
            steps = math.ceil(self.interpolation_steps * t / self.sde.T)
        k = min(len(chain) - 1, max(1, steps))
        if len(chain) < 2:
            raise UserInputError(f"no chain step between t = {t:g} and t_min = {self.t_min:g}")
        idx = torch.linspace(0, len(chain) - 1, k + 1).round().long().unique()
        return chain[idx]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return encode(self.model, self.sde, x, t_min=self.t_min, rtol=ODE_TOL, atol=ODE_TOL)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return decode(self.model, self.sde, z, t_min=self.t_min, rtol=ODE_TOL, atol=ODE_TOL)

    def ddpm_interpolation(self, x0: torch.Tensor, x1: torch.Tensor, t: float,
                           weights: torch.Tensor, offset: int) -> torch.Tensor:
        """[Ho20] Sec. 4.4: ``x_t, x'_t`` from the same noise, mixed ``(1 - lam) x_t + lam x'_t``
        for each weight, then the reverse chain from ``t`` with its noise fixed across the
        weights. Returns ``(len(weights), B, *D)``."""
        noise = torch.randn(x0.shape, generator=self.generator(offset), device=x0.device)
        x_t, x1_t = self.diffuse(x0, t, noise), self.diffuse(x1, t, noise)
        ts = self.chain_from(t)
        out = [self.ancestral((1 - float(w)) * x_t + float(w) * x1_t, offset + 1, ts=ts).x
               for w in weights]
        return torch.stack(out)

    def ode_interpolation(self, x0: torch.Tensor, x1: torch.Tensor,
                          weights: torch.Tensor) -> torch.Tensor:
        """[Song21ddim] Sec. 5.3: encode both by the PF-ODE, slerp the latents, decode. Returns
        ``(len(weights), B, *D)``."""
        b = x0.shape[0]
        z = self.encode(torch.cat([x0, x1]))
        z0, z1 = z[:b], z[b:]
        mixed = torch.cat([slerp(z0, z1, float(w)) for w in weights])
        return self.decode(mixed).reshape(len(weights), *x0.shape)


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1)))


def time_label(t: float) -> str:
    """``"t = 0.25"``: a column title."""
    return f"t = {round(float(t), 3):g}"


def nearest_index(ts: torch.Tensor, t: float) -> int:
    """The index of the grid time nearest ``t``."""
    return int((ts.double() - t).abs().argmin())
