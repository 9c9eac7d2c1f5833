"""The one adapter between the reverse-time SDE and ``torchsde.sdeint``.

torchsde integrates forward in time on a 2-D state ``(B, D)``. With ``u = -t`` the reverse SDE
``dx = [f - g^2 s] dt + g dw_bar`` becomes ``dx = -[f - g^2 s](x, -u) du + g(-u) dW_u`` for
increasing ``u``; the state is flattened to ``(B, prod D)`` and reshaped back. The noise is
additive (``g`` depends on t only), so Ito and Stratonovich agree and every torchsde method
applies in principle. ``reversible_heun`` is only conditionally stable for contractive drifts
and the reverse drift near ``eps`` is strongly contractive (``g^2 / sigma^2`` ~ 1e3 for VP): it
diverges on these problems at every step count we tried; prefer ``euler``/``milstein``/``heun``/
``midpoint``/``srk``.

Refs: [Song21] Eq. (6); torchsde's ``sdeint`` contract.
"""

from __future__ import annotations

import torch
import torchsde

from ..parameterization import score_fn
from ..sde import SDE
from .result import EpsModel

STRATONOVICH = ("midpoint", "heun", "reversible_heun", "log_ode", "euler_heun")
ITO = ("euler", "milstein", "srk")
METHODS = ITO + STRATONOVICH


class _ReversedSDE(torch.nn.Module):
    noise_type = "diagonal"

    def __init__(self, sde: SDE, model: EpsModel, shape: tuple[int, ...], sde_type: str) -> None:
        super().__init__()
        self.rsde = sde.reverse(score_fn(model, sde))
        self.shape, self.sde_type = shape, sde_type

    def f(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = (-u).to(y.dtype).expand(y.shape[0])
        drift, _ = self.rsde.sde(y.reshape(self.shape), t)
        return -drift.reshape(y.shape)

    def g(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = (-u).to(y.dtype).expand(y.shape[0])
        _, diffusion = self.rsde.forward.sde(y[:, :1], t)
        return diffusion[:, None].expand_as(y)


@torch.no_grad()
def sample_torchsde(
    model: EpsModel,
    sde: SDE,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    *,
    method: str = "euler",
    generator: torch.Generator | None = None,
    callback=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve the reverse SDE with ``torchsde.sdeint`` using the step ``(ts[0] - ts[-1]) / steps``.

    The Brownian motion is seeded from ``generator``, so runs are reproducible.

    Returns:
        ``(x, x)`` at ``ts[-1]`` (torchsde exposes no noise-free mean).
    """
    if method not in METHODS:
        raise ValueError(f"unknown torchsde method {method!r}; choose one of {', '.join(METHODS)}")
    shape = tuple(x_T.shape)
    adapter = _ReversedSDE(sde, model, shape, "stratonovich" if method in STRATONOVICH else "ito")
    y0 = x_T.reshape(shape[0], -1)
    u = torch.stack([-ts[0], -ts[-1]]).to(x_T.dtype)
    entropy = int(torch.randint(0, 2**62, (1,), generator=generator, device=ts.device))
    bm = torchsde.BrownianInterval(
        t0=u[0], t1=u[1], size=y0.shape, dtype=y0.dtype, device=y0.device, entropy=entropy,
        levy_area_approximation="space-time" if method in ("srk", "log_ode") else "none",
    )
    # A hair above span/steps (16 ulps of the state dtype): rounding of span/steps would otherwise
    # leave a tiny last step (an extra NFE, and an endless Brownian-interval split in torchsde).
    dt = float((ts[0] - ts[-1]) / (len(ts) - 1)) * (1 + 16 * torch.finfo(x_T.dtype).eps)
    ys = torchsde.sdeint(adapter, y0, u, method=method, dt=dt, bm=bm)
    x = ys[-1].reshape(shape)
    return x, x
