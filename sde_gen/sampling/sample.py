"""The sampling entry point: :func:`sample`.

Which solvers exist, their options and their default grids: :data:`~.solvers.SOLVERS`; what a
run shares with imputation and SMC: :mod:`~.driver`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UserInputError
from ..noise import Generator
from ..parameterization import EpsModel
from ..sde import SDE
from .driver import Progress, check_device, draw_prior, plan
from .result import SampleResult


@torch.no_grad()
def sample(
    model: EpsModel,
    sde: SDE,
    shape: tuple[int, ...] | None,
    solver: str = "ode",
    *,
    steps: int | None = None,
    x_T: torch.Tensor | None = None,
    t_min: float | None = None,
    generator: Generator = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    denoise: bool = True,
    progress: bool = False,
    spacing: str | None = None,
    ts: torch.Tensor | None = None,
    return_trajectory: bool = False,
    **options: Any,
) -> SampleResult:
    """Draw samples by integrating from the prior at ``T`` down to ``t_min``.

    Args:
        model: eps-model ``model(x, t)`` (``t`` a ``(B,)`` tensor of continuous time).
        sde: the forward SDE.
        shape: ``(B, *D)`` (``None`` when ``x_T`` is given).
        solver: a key of :data:`~sde_gen.sampling.solvers.SOLVERS`.
        steps: grid intervals (default: the solver's ``SolverSpec.steps``; ``None`` there means
            ``N - 1``). On the discrete chain (``discrete=True``) the default is every chain step
            from the one nearest ``t_min`` up to ``T``, for any ``N`` and ``t_min``. Adaptive
            ``ode`` steps on its own and uses the grid for the trajectory only.
        x_T: start from this prior sample instead of drawing one (its dtype and device win).
        t_min: the end time, in ``(0, T)`` (default ``sde.default_t_min``).
        generator: source of all randomness (prior draw and solver noise): a
            ``torch.Generator``, or an :class:`~sde_gen.noise.IndexedGenerator`, with which
            example ``i`` is the same in any batch.
        dtype: the state's dtype when ``x_T`` is drawn (a real floating type).
        denoise: finish with Tweedie's ``x0 = (x - sigma_t eps) / alpha_t`` at ``t_min`` (one
            NFE; for VP it is DDPM's last step ``x_1 -> x_0``). Not for ``consistency``,
            whose last step is the sample at ``t_min`` (``SolverSpec.final_denoise``).
        progress: show a progress bar over grid steps.
        spacing: grid spacing (``uniform``, ``quadratic``, ``logsnr``, ``karras``; default the
            solver's).
        ts: an explicit grid instead of ``steps``/``t_min``/``spacing``: at least two finite
            times, strictly decreasing, inside ``[0, T]``, ending above 0 (on the discrete chain,
            where VE's lowest level is ``t = 0``, it may end at 0).
        return_trajectory: keep the state at every grid time in ``SampleResult.trajectory``
            (adaptive ``ode``: interpolated at the grid times, the steps unchanged).
        **options: the solver's options, ``SOLVERS[solver].options`` (e.g. ``eta`` for ddim,
            ``method`` for sde and ode); checked there and completed with their defaults.

    Returns:
        :class:`SampleResult` with ``x``, ``x_mean``, ``nfe`` (counted calls) and ``ts``. A
        diverged run is returned, not raised: see :attr:`SampleResult.n_nonfinite`.

    Raises:
        UserInputError: (a ``ValueError``) an unknown solver or option, an option value out of
            its range, a bad shape, dtype or ``x_T``, ``t_min`` outside ``(0, T)``, a bad
            ``ts``, more steps than fit on the discrete chain (the message gives the limit), or
            a model whose output does not have the input's shape.

    Shapes: ``x: (B, *D)``.
    """
    if "eps" in options:
        raise UserInputError("sample() takes the end time as t_min= (eps was its old name)")
    check_device(x_T.device if torch.is_tensor(x_T) else device)
    run = plan(model, sde, solver, options, steps=steps, t_min=t_min, spacing=spacing, ts=ts,
               generator=generator, device=x_T.device if torch.is_tensor(x_T) else device)
    x_T = draw_prior(sde, shape, x_T=x_T, generator=generator, device=device, dtype=dtype)
    run.ts = run.ts.to(x_T.device)
    with Progress(len(run.ts) - 1, desc=f"sample ({solver})", show=progress,
                  x_T=x_T if return_trajectory else None) as prog:
        x, x_mean = run.step(x_T, callback=prog.callback)
    if denoise and run.spec.final_denoise:
        x = run.denoise(x)
    return SampleResult(x=x, x_mean=x_mean, nfe=run.counted.nfe, ts=run.ts,
                        trajectory=prog.trajectory(solver, len(run.ts)))
