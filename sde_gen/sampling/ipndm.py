"""iPNDM: Adams-Bashforth on eps in ``sigma~ = sigma_t / alpha_t``, fixed or variable-step.

In ``y = x / alpha_t`` and ``sigma~`` the probability-flow ODE is ``dy/dsigma~ = eps(x, t)``
for every SDE here (:mod:`.deis`), and iPNDM ([Zhang23], App.; PNDM's pseudo linear multistep
with its Runge-Kutta warm start replaced by lower-order Adams-Bashforth steps) steps it with the
equal-step Adams-Bashforth weights whatever the grid:

    y_{k+1} = y_k + (sigma~_{k+1} - sigma~_k) sum_j b[q, j] eps_{k-j},   q = min(order, k + 1),

with ``b`` the rows of :data:`AB_COEFFS`. ``variable_step=True`` uses instead the
Adams-Bashforth weights of the grid's actual (unequal) steps in ``sigma~``: the exact integral
over ``[sigma~_k, sigma~_{k+1}]`` of the polynomial in ``sigma~`` through the last ``q`` outputs
(DEIS's rhoAB; :func:`~.deis.lagrange_coefficients` with ``tau = sigma~``). On an equal-step
grid in ``sigma~`` the two coincide; on other grids the fixed weights leave a local error
``O(h (h_k - h_{k-1}))``, so for ``order >= 2`` they converge at second order only (log-SNR
grids: steps in ``sigma~`` that shrink by a constant ratio), while the variable-step weights
keep the full order. At few steps the fixed weights are the more accurate ones on the
exact-score mixtures (benchmarks/results/fast_samplers.md), hence the default.

``step_scales`` ``(s_0, ..., s_{K-1})`` multiply each interval's increment,
``y_{k+1} = y_k + s_k sum_j C[k, j] eps_{k-j}``: learned per model by
:func:`~.calibrate.calibrate` with the grid (a few coefficients, in the spirit of PAS
[Wang25pas], which learns corrections of the sampling direction), ``None`` = all 1. The model is
still called at the grid times, once per interval.

| symbol here | [Zhang23]              | meaning                                 |
| ----------- | ---------------------- | --------------------------------------- |
| b[q, j]     | AB coefficients        | weight of ``eps_{k-j}`` at order ``q``  |
| sigma~      | rho (rhoAB-DEIS)       | [Karras22]'s noise level ``sigma(t)``   |

Refs: [Zhang23], App. (iPNDM); [Karras22] Eq. (4); [Wang25pas] (learned coefficients).
"""

from __future__ import annotations

import torch

from ..chain import grid_coeffs
from ..errors import UserInputError
from ..noise import Generator
from ..parameterization import EpsModel
from ..sde import SDE
from .deis import eps_multistep, lagrange_coefficients
from .pure_start import continue_after_first, ddim_first_step, starts_pure
from .result import Callback
from .spec import Option, SolverSpec, x0_options

__all__ = ["AB_COEFFS", "SPEC", "ipndm_coefficients", "sample_ipndm"]

#: Equal-step Adams-Bashforth weights of ``eps_k, eps_{k-1}, ...`` for orders 1 to 4.
AB_COEFFS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def ipndm_coefficients(
    sigma_tilde: torch.Tensor, order: int, *, variable_step: bool = False
) -> torch.Tensor:
    """The weights ``C[k, j]`` of ``y_{k+1} = y_k + sum_j C[k, j] eps_{k-j}``, ``(K, order)``
    float64, from ``sigma~`` at the grid times ``(K + 1,)``; zero past the warm-up order ``q``.

    Fixed: ``C[k, j] = (sigma~_{k+1} - sigma~_k) b[q, j]``. Variable-step: the exact integrals of
    the Lagrange basis in ``sigma~``.
    """
    sigma_tilde = sigma_tilde.to(torch.float64)
    if variable_step:
        return lagrange_coefficients(-torch.log(sigma_tilde), sigma_tilde,
                                     lambda lam: torch.exp(-lam), order)
    n_steps = sigma_tilde.shape[0] - 1
    coeffs = torch.zeros(n_steps, order, dtype=torch.float64, device=sigma_tilde.device)
    h = sigma_tilde[1:] - sigma_tilde[:-1]
    for k in range(n_steps):
        b = AB_COEFFS[min(order, k + 1)]
        coeffs[k, : len(b)] = h[k] * torch.tensor(b, dtype=torch.float64,
                                                  device=sigma_tilde.device)
    return coeffs


@torch.no_grad()
def sample_ipndm(
    model: EpsModel,
    sde: SDE,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    *,
    order: int = 3,
    variable_step: bool = False,
    step_scales: list[float] | torch.Tensor | None = None,
    generator: Generator = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """iPNDM from ``ts[0]`` to ``ts[-1]``, one model call per interval.

    Args:
        order: 3 (default), 4, 2 or 1: Adams-Bashforth order; the first steps warm up with
            lower orders. Order 1 is DDIM (eta = 0).
        variable_step: Adams-Bashforth weights for the grid's unequal steps in ``sigma~`` instead
            of the fixed equal-step ones.
        step_scales: ``(K,)`` factors of each interval's increment (module docstring), e.g. a
            calibration's; a tensor keeps their gradient. The first interval from a pure-noise
            ``T`` (DDIM's limit step) takes none: ``step_scales[0]`` is unused there.

    Returns:
        ``(x, x)`` at ``ts[-1]``.

    Shapes: ``x_T: (B, *D)``.

    Refs: [Zhang23], App. (iPNDM).
    """
    if starts_pure(sde, ts):  # alpha = 0 at ts[0]: the first step's finite limit
        x = ddim_first_step(model, sde, x_T, ts)
        rest = None if step_scales is None else step_scales[1:]
        return continue_after_first(x, x, ts, callback, lambda x, ts, cb: sample_ipndm(
            model, sde, x, ts, order=order, variable_step=variable_step, step_scales=rest,
            callback=cb))
    coeffs = grid_coeffs(sde, ts)
    weights = ipndm_coefficients(coeffs.sigma_tilde, order, variable_step=bool(variable_step))
    if step_scales is not None:
        weights = weights * torch.as_tensor(step_scales, dtype=torch.float64,
                                            device=weights.device).reshape(-1, 1)
    return eps_multistep(model, x_T, ts, coeffs.alpha, weights, callback=callback)


def _check_step_scales(model, sde: SDE, ts: torch.Tensor, options) -> None:
    scales = options.get("step_scales")
    if scales is not None and len(scales) != len(ts) - 1:
        raise UserInputError(f"step_scales has {len(scales)} entries; the grid has "
                             f"{len(ts) - 1} intervals (one each)")


SPEC = SolverSpec(
    sample_ipndm, "iPNDM: Adams–Bashforth on eps in σ/α (DEIS paper, App.)",
    options=(
        Option("order", int, 3, "Adams–Bashforth order", choices=tuple(AB_COEFFS)),
        Option("variable_step", bool, False, "Adams–Bashforth weights for the grid's "
               "unequal steps in σ/α instead of the fixed equal-step ones"),
        Option("step_scales", tuple, None, "a factor per grid interval on its increment "
               "(learned by calibrate; one per interval)", min=0.0, max=10.0, min_open=True),
        *x0_options(),
    ),
    steps=19, spacing=None, x0_by_model=True, check=_check_step_scales,
    # fixed weights on an unequal grid: second order at most (module docstring)
    order=lambda o: o["order"] if o["variable_step"] else min(o["order"], 2),
)
