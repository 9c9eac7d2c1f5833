"""The sampling entry point: prior draw, time grid, solver dispatch, final denoising, NFE count."""

from __future__ import annotations

import torch

from ..parameterization import denoise_fn
from ..schedules import time_grid
from ..sde import SDE
from .result import CountingModel, EpsModel, SampleResult
from .sde_solvers import sample_em

SAMPLERS = {"sde": sample_em}


@torch.no_grad()
def sample(
    model: EpsModel,
    sde: SDE,
    shape: tuple[int, ...],
    solver: str = "sde",
    *,
    steps: int | None = None,
    x_T: torch.Tensor | None = None,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    denoise: bool = True,
) -> SampleResult:
    """Draw samples ``(B, *D)`` by integrating from the prior at ``T`` down to ``eps``.

    Args:
        model: eps-model ``model(x, t)``.
        sde: the forward SDE.
        shape: ``(B, *D)``.
        solver: a key of :data:`SAMPLERS`.
        steps: grid intervals (default ``sde.N``).
        x_T: start from this prior sample instead of drawing one.
        eps: end time.
        denoise: apply Tweedie's denoiser at ``eps`` (one extra NFE).
    """
    if solver not in SAMPLERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SAMPLERS)}")
    steps = sde.N if steps is None else steps
    counted = CountingModel(model)
    if x_T is None:
        x_T = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    ts = time_grid(steps, T=sde.T, eps=eps, dtype=x_T.dtype, device=x_T.device)
    x, x_mean = SAMPLERS[solver](counted, sde, x_T, ts, generator=generator)
    if denoise:
        x = denoise_fn(counted, sde)(x, ts[-1].expand(x.shape[0]))
    return SampleResult(x=x, x_mean=x_mean, nfe=counted.nfe, ts=ts)
