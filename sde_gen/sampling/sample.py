"""The sampling entry point: prior draw, time grid, solver dispatch, final denoising, NFE count."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from ..sde import SDE
from .ancestral import sample_ancestral
from .ddim import sample_ddim
from .dpm import sample_dpm
from .grids import default_eps, grid_coeffs, make_grid, snap_to_steps
from .ode import sample_heun, sample_ode
from .result import CountingModel, EpsModel, SampleResult
from .sde_solvers import sample_em, sample_pc
from .torchsde_backend import sample_torchsde


def _sample_sde(model, sde, x_T, ts, *, method: str | None = None, **kw):
    """``sde``: the device-side Euler-Maruyama loop, or a torchsde ``method``."""
    if method is None:
        return sample_em(model, sde, x_T, ts, **kw)
    return sample_torchsde(model, sde, x_T, ts, method=method, **kw)


SAMPLERS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "ancestral": sample_ancestral,
    "ddim": sample_ddim,
    "sde": _sample_sde,
    "pc": sample_pc,
    "ode": sample_ode,
    "dpm": sample_dpm,
    "heun": sample_heun,
}

# Default number of grid intervals (None: the SDE's N - 1, every step of the discrete chain)
# and spacing per solver. NFE = intervals (x2 for heun, x(1 + n_corrector) for pc) + 1 denoise.
DEFAULT_STEPS: dict[str, int | None] = {
    "ancestral": None, "ddim": 49, "sde": None, "pc": None, "ode": 100, "dpm": 19, "heun": 19,
}
DEFAULT_SPACING = {
    "ancestral": "uniform", "ddim": "uniform", "sde": "uniform", "pc": "uniform",
    "ode": "uniform", "dpm": "logsnr", "heun": "karras",
}
DISCRETE_DEFAULT = {"ancestral": True, "ddim": False}


def _check_shape(shape: Any) -> tuple[int, ...]:
    try:
        if any(isinstance(s, float) or isinstance(s, str) for s in shape):
            raise TypeError
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a tuple of ints (B, *D), got {shape!r}") from None
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape must be (B, *D) with positive sizes, got {shape}")
    return shape


@torch.no_grad()
def sample(
    model: EpsModel,
    sde: SDE,
    shape: tuple[int, ...],
    solver: str = "ode",
    *,
    steps: int | None = None,
    x_T: torch.Tensor | None = None,
    eps: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    denoise: bool = True,
    progress: bool = False,
    spacing: str | None = None,
    ts: torch.Tensor | None = None,
    return_trajectory: bool = False,
    **options: Any,
) -> SampleResult:
    """Draw samples by integrating from the prior at ``T`` down to ``eps``.

    Args:
        model: eps-model ``model(x, t)`` (``t`` a ``(B,)`` tensor of continuous time).
        sde: the forward SDE.
        shape: ``(B, *D)``.
        solver: ``ancestral``, ``ddim``, ``sde``, ``pc``, ``ode``, ``dpm`` or ``heun``.
        steps: grid intervals (defaults in :data:`DEFAULT_STEPS`; adaptive ``ode`` ignores it).
        x_T: start from this prior sample instead of drawing one (its dtype and device win).
        eps: end time (default :func:`~sde_gen.sampling.grids.default_eps`).
        generator: source of all randomness (prior draw and solver noise).
        denoise: finish with Tweedie's ``x0 = (x + sigma^2 score) / alpha`` at ``eps`` (one NFE;
            for VP it is DDPM's last step ``x_1 -> x_0``).
        progress: show a progress bar over grid steps.
        spacing: grid spacing (``uniform``, ``quadratic``, ``logsnr``, ``karras``).
        ts: an explicit decreasing grid instead of ``steps``/``eps``/``spacing``.
        return_trajectory: keep the state after every step in ``SampleResult.trajectory``.
        **options: solver options, e.g. ``eta`` (ddim), ``variance`` and ``discrete``
            (ancestral, ddim), ``method`` (sde: a torchsde method; ode: a torchdiffeq method),
            ``rtol``/``atol`` (ode), ``predictor``/``corrector``/``snr``/``n_corrector`` (pc),
            ``order`` (dpm).

    Returns:
        :class:`SampleResult` with ``x``, ``x_mean``, ``nfe`` (counted calls) and ``ts``.

    Shapes: ``x: (B, *D)``.
    """
    if solver not in SAMPLERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SAMPLERS)}")
    takes = [p for p in inspect.signature(SAMPLERS[solver]).parameters
             if p not in ("model", "sde", "x_T", "ts", "generator", "callback", "kw")]
    if solver == "sde":
        takes.append("method")
    unknown = sorted(set(options) - set(takes))
    if unknown:
        raise ValueError(f"solver {solver!r} takes no option {', '.join(map(repr, unknown))}; "
                         f"it takes: {', '.join(takes) or 'none'}")
    if x_T is None:
        shape = _check_shape(shape)
        x_T = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    elif shape is not None and tuple(shape) != tuple(x_T.shape):
        raise ValueError(f"shape {tuple(shape)} does not match x_T's {tuple(x_T.shape)}; pass None")
    if ts is None:
        n = DEFAULT_STEPS[solver] if steps is None else steps
        n = sde.N - 1 if n is None else n
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"steps must be a positive integer, got {n!r}")
        ts = make_grid(sde, n, eps=default_eps(sde) if eps is None else eps,
                       spacing=spacing or DEFAULT_SPACING[solver], device=x_T.device)
    ts = ts.to(device=x_T.device, dtype=torch.float64)
    discrete = options.get("discrete", DISCRETE_DEFAULT.get(solver, False))
    if discrete:
        ts = snap_to_steps(sde, ts)
    counted = CountingModel(model)
    trajectory: list[torch.Tensor] = [x_T] if return_trajectory else []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ts) - 1, desc=f"sample ({solver})", unit="step")

    def callback(k: int, x: torch.Tensor, x_mean: torch.Tensor) -> None:
        if return_trajectory:
            trajectory.append(x)
        if bar is not None:
            bar.update(1)

    x, x_mean = SAMPLERS[solver](counted, sde, x_T, ts, generator=generator, callback=callback,
                                 **options)
    if bar is not None:
        bar.close()
    if denoise:  # Tweedie at ts[-1] with the solver's own coefficients
        alpha, sigma = (c[-1].to(x.dtype) for c in grid_coeffs(sde, ts[-1:], discrete=discrete))
        x = (x - sigma * counted(x, ts[-1].to(x.dtype).expand(x.shape[0]))) / alpha
    traj = torch.stack(trajectory) if return_trajectory and len(trajectory) == len(ts) else None
    return SampleResult(x=x, x_mean=x_mean, nfe=counted.nfe, ts=ts, trajectory=traj)
