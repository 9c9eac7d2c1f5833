"""The sampling entry point: prior draw, time grid, solver dispatch, final denoising, NFE count.

Which solvers exist, their options and their default grids: :data:`~.solvers.SOLVERS`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UserInputError
from ..parameterization import EpsModel, eps_to_x0
from ..sde import SDE
from .grids import (check_end_time, check_grid, check_spacing, chain_times, default_eps,
                    discrete_grid, grid_coeffs, make_grid, snap_to_steps)
from .result import CountingModel, SampleResult
from .solvers import SOLVERS, SolverFn, SolverSpec
from .thresholding import clip_x0_model, process_x0

#: Each solver's function by name, derived from :data:`~.solvers.SOLVERS`.
SAMPLERS: dict[str, SolverFn] = {name: spec.fn for name, spec in SOLVERS.items()}


def _check_shape(shape: Any) -> tuple[int, ...]:
    try:
        if any(isinstance(s, float) or isinstance(s, str) for s in shape):
            raise TypeError
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise UserInputError(f"shape must be a tuple of ints (B, *D), got {shape!r}") from None
    if len(shape) < 2 or min(shape) < 1:
        raise UserInputError(f"shape must be (B, *D) with positive sizes, got {shape}")
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
        solver: a key of :data:`~sde_gen.sampling.solvers.SOLVERS`: ``ancestral``, ``ddim``,
            ``sde``, ``pc``, ``ode``, ``dpm`` or ``heun``.
        steps: grid intervals (default: the solver's ``SolverSpec.steps``; ``None`` there means
            ``N - 1``). On the discrete chain (``discrete=True``) the default is every chain step
            from the one nearest ``eps`` up to ``T``, for any ``N`` and ``eps``. Adaptive ``ode``
            steps on its own and uses the grid for the trajectory only.
        x_T: start from this prior sample instead of drawing one (its dtype and device win).
        eps: end time in ``(0, T)`` (default :func:`~sde_gen.sampling.grids.default_eps`).
        generator: source of all randomness (prior draw and solver noise).
        denoise: finish with Tweedie's ``x0 = (x + sigma^2 score) / alpha`` at ``eps`` (one NFE;
            for VP it is DDPM's last step ``x_1 -> x_0``).
        progress: show a progress bar over grid steps.
        spacing: grid spacing (``uniform``, ``quadratic``, ``logsnr``, ``karras``; default the
            solver's).
        ts: an explicit grid instead of ``steps``/``eps``/``spacing``: at least two finite times,
            strictly decreasing, inside ``[0, T]``, ending above 0 (on the discrete chain, where
            VE's lowest level is ``t = 0``, it may end at 0).
        return_trajectory: keep the state at every grid time in ``SampleResult.trajectory``
            (adaptive ``ode``: interpolated at the grid times, the steps unchanged).
        **options: the solver's options, ``SOLVERS[solver].options`` (e.g. ``eta`` for ddim,
            ``method`` for sde and ode); checked there and completed with their defaults.

    Returns:
        :class:`SampleResult` with ``x``, ``x_mean``, ``nfe`` (counted calls) and ``ts``. A
        diverged run is returned, not raised: see :attr:`SampleResult.n_nonfinite`.

    Raises:
        UserInputError: (a ``ValueError``) an unknown solver or option, an option value out of
            its range, a bad shape, ``eps`` outside ``(0, T)``, a bad ``ts``, or more steps than
            fit on the discrete chain (the message gives the limit).

    Shapes: ``x: (B, *D)``.
    """
    spec = SOLVERS.get(solver)
    if spec is None:
        raise UserInputError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    options = spec.resolve(solver, options)
    discrete = bool(options.get("discrete", False))
    if x_T is None:
        shape = _check_shape(shape)
        x_T = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    elif shape is not None and tuple(shape) != tuple(x_T.shape):
        raise UserInputError(f"shape {tuple(shape)} does not match x_T's {tuple(x_T.shape)}; pass None")
    if ts is None:
        ts = _grid(sde, spec, steps, eps, spacing, discrete=discrete, device=x_T.device)
    else:
        given = [k for k, v in (("steps", steps), ("eps", eps), ("spacing", spacing))
                 if v is not None]
        if given:
            raise UserInputError(f"pass either ts or {'/'.join(given)}, not both")
        ts = check_grid(sde, ts, discrete=discrete).to(x_T.device)
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

    watch = callback if return_trajectory or bar is not None else None
    solver_model, solver_options = counted, options
    if spec.x0_by_model:  # the solver steps on x0 = (x - sigma eps) / alpha: clip through eps
        solver_options = {k: v for k, v in options.items() if k not in ("clip_sample", "threshold")}
        solver_model = clip_x0_model(counted, sde, clip_sample=options.get("clip_sample"),
                                     threshold=options.get("threshold"))
    x, x_mean = spec.fn(solver_model, sde, x_T, ts, generator=generator, callback=watch,
                        **solver_options)
    if bar is not None:
        bar.close()
    if denoise:  # Tweedie at ts[-1] with the solver's own coefficients
        alpha, sigma = (c[-1].to(x.dtype) for c in grid_coeffs(sde, ts[-1:], discrete=discrete))
        x = eps_to_x0(x, counted(x, ts[-1].to(x.dtype).expand(x.shape[0])), alpha, sigma)
        # the solvers that clip x0 clip the last one too (diffusers' final step is x0_hat)
        x = process_x0(x, clip_sample=options.get("clip_sample"),
                       threshold=options.get("threshold"))
    if return_trajectory and len(trajectory) != len(ts):
        raise RuntimeError(f"solver {solver!r} reported {len(trajectory) - 1} of its "
                           f"{len(ts) - 1} steps")
    traj = torch.stack(trajectory) if return_trajectory else None
    return SampleResult(x=x, x_mean=x_mean, nfe=counted.nfe, ts=ts, trajectory=traj)


def _grid(
    sde: SDE,
    spec: SolverSpec,
    steps: int | None,
    eps: float | None,
    spacing: str | None,
    *,
    discrete: bool,
    device: torch.device,
) -> torch.Tensor:
    """The grid ``sample()`` walks when none is given: ``steps`` (or the solver's default) from
    ``T`` to ``eps``, on the discrete chain's steps when ``discrete``."""
    t_end = check_end_time(sde, default_eps(sde) if eps is None else eps)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise UserInputError(f"steps must be a positive integer, got {steps!r}")
    spacing = check_spacing(spec.spacing_for(sde) if spacing is None else spacing)
    n = spec.steps if steps is None else steps
    if not discrete:
        return make_grid(sde, max(sde.N - 1, 1) if n is None else n, eps=t_end, spacing=spacing,
                         device=device)
    if steps is None and n is not None and n >= len(chain_times(sde, t_end)) - 1:
        n = None  # a default longer than the chain between eps and T: every chain step
    return discrete_grid(sde, n, eps=t_end, spacing=spacing, device=device)
