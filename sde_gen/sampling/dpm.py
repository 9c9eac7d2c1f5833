"""DPM-Solver++ multistep (2M and 3M) in log-SNR time, data prediction.

With ``lambda_t = log(alpha_t / sigma_t)``, ``h = lambda_s - lambda_t`` for a step ``t -> s``
and ``D`` the denoiser ``x0_hat``, the exact solution of the probability-flow ODE is
``x_s = (sigma_s/sigma_t) x_t + sigma_s int_{lambda_t}^{lambda_s} e^lambda D dlambda``
([Lu22pp] Eq. 8). Approximating ``D`` by a polynomial through the last 1, 2 or 3 denoised
values gives the updates below, with ``phi_1 = 1 - e^{-h}``, ``phi_2 = 1 - phi_1/h`` and
``phi_3 = phi_2/h - 1/2`` (the integrals of ``e^{lambda - lambda_s}`` times 1, ``(lambda -
lambda_t)/h`` and ``(lambda - lambda_t)^2/(2 h^2)``, up to sign). 2M uses Alg. 2's midpoint
form ``x_s = (sigma_s/sigma_t) x_t + alpha_s phi_1 (D_0 + (D_0 - D_1) / (2 r))``; 3M adds the
second difference with ``phi_2`` and ``phi_3`` as DPM-Solver++, diffusers and k-diffusion write
it (``variant="standard"``). That second-difference term ``d2`` estimates ``h^2 D''/2`` but is
weighted as if it were ``h^2 D''``, so this 3M is formally second order (with a smaller error
constant than 2M on the exact-score mixtures, benchmarks/results/samplers.md).
``variant="taylor3"`` weights it ``2 d2``, the third-order Taylor term of ``D`` in ``lambda``
(with ``d1 ~ h D'`` and ``d2 ~ h^2 D''/2``, the update is ``alpha_s (phi_1 D_0 + phi_2 d1 -
2 phi_3 d2)``): truly third order.

| symbol here | [Lu22pp] Alg. 2       | meaning                                |
| ----------- | --------------------- | -------------------------------------- |
| D[k]        | x_theta(x_{t_k}, t_k) | denoised estimate at grid time k       |
| r           | r_i = h_{i-1} / h_i   | ratio of consecutive log-SNR steps     |
| d1, d2      | D_i (2nd/3rd order)   | scaled first and second differences    |

Refs: [Lu22pp] Alg. 2 (2M) and Appendix (3M); [Lu22] Sec. 3.
"""

from __future__ import annotations

import torch

from ..chain import grid_coeffs
from ..noise import Generator
from ..parameterization import EpsModel, eps_to_x0
from ..sde import SDE
from .pure_start import continue_after_first, ddim_first_step, starts_pure
from .result import Callback
from .spec import Option, SolverSpec, x0_options

__all__ = ["SPEC", "VARIANTS", "sample_dpm"]


#: 3M's weightings of the second difference (see the module docstring).
VARIANTS = ("standard", "taylor3")


@torch.no_grad()
def sample_dpm(
    model: EpsModel,
    sde: SDE,
    x_T: torch.Tensor,
    ts: torch.Tensor,
    *,
    order: int = 3,
    lower_order_final: bool = True,
    variant: str = "standard",
    generator: Generator = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPM-Solver++(2M) or (3M) from ``ts[0]`` to ``ts[-1]``, one model call per interval.

    Args:
        order: 3 (default) or 2: multistep order; the first steps warm up with lower orders.
        lower_order_final: with fewer than 7 intervals, drop to first order on the last step and
            to second on the one before it (DPM-Solver applies it below 15 steps; here it is
            applied where it helps on the exact-score mixtures, benchmarks/results/samplers.md).
        variant: 3M's second-difference weight: ``"standard"`` (DPM-Solver++, diffusers,
            k-diffusion; formally second order) or ``"taylor3"`` (truly third order).

    Returns:
        ``(x, x)`` at ``ts[-1]``.
    """
    if starts_pure(sde, ts):  # alpha = 0 at ts[0]: the first step's finite limit
        x = ddim_first_step(model, sde, x_T, ts)
        return continue_after_first(x, x, ts, callback, lambda x, ts, cb: sample_dpm(
            model, sde, x, ts, order=order, lower_order_final=lower_order_final, variant=variant,
            callback=cb))
    d2_weight = 2.0 if variant == "taylor3" else 1.0
    dtype = x_T.dtype
    alpha64, sigma64 = coeffs = grid_coeffs(sde, ts)
    lam = coeffs.log_snr
    h = lam[1:] - lam[:-1]
    phi1 = -torch.expm1(-h)  # 1 - e^{-h}
    phi2 = 1 - phi1 / h  # = expm1(-h)/h + 1: weight of the first difference
    phi3 = phi2 / h - 0.5  # weight of the second difference
    ratio = (sigma64[1:] / sigma64[:-1]).to(dtype)
    a_phi1, a_phi2, a_phi3 = ((alpha64[1:] * p).to(dtype) for p in (phi1, phi2, phi3))
    a_half_phi1 = 0.5 * a_phi1
    r0 = torch.ones_like(h)
    r0[1:] = h[:-1] / h[1:]
    r1 = torch.ones_like(h)
    r1[2:] = h[:-2] / h[2:]
    r0, r1 = r0.to(dtype), r1.to(dtype)
    alpha, sigma, tt = alpha64.to(dtype), sigma64.to(dtype), ts.to(dtype)
    n_steps = len(ts) - 1
    x = x_T
    history: list[torch.Tensor] = []
    for k in range(n_steps):
        eps = model(x, tt[k].expand(x.shape[0]))
        history = [eps_to_x0(x, eps, alpha[k], sigma[k])] + history[:2]
        q = min(order, len(history))
        if lower_order_final and n_steps < 7:
            q = min(q, n_steps - k)
        x = ratio[k] * x + a_phi1[k] * history[0]
        if q >= 2:
            d1_0 = (history[0] - history[1]) / r0[k]
            if q == 2:  # Alg. 2 [Lu22pp]: D = (1 + 1/(2r)) D_0 - 1/(2r) D_1
                x = x + a_half_phi1[k] * d1_0
            else:
                d1_1 = (history[1] - history[2]) / r1[k]
                d1 = d1_0 + (d1_0 - d1_1) * r0[k] / (r0[k] + r1[k])
                d2 = (d1_0 - d1_1) / (r0[k] + r1[k])
                x = x + a_phi2[k] * d1 - (d2_weight * a_phi3[k]) * d2
        if callback is not None:
            callback(k, x, x)
    return x, x


SPEC = SolverSpec(
    sample_dpm, "DPM-Solver++ multistep in log-SNR time",
    options=(
        Option("order", int, 3, "multistep order", choices=(2, 3)),
        Option("lower_order_final", bool, True, "with fewer than 7 intervals, lower the "
               "order on the last two steps"),
        Option("variant", str, "standard", "3M's second-difference weight: standard "
               "(DPM-Solver++, diffusers, k-diffusion; formally 2nd order) or taylor3 "
               "(truly 3rd order)", choices=VARIANTS, noun="DPM-Solver++ variant"),
        *x0_options(),
    ),
    steps=19, spacing="logsnr", x0_by_model=True,
    order=lambda o: 3 if o["order"] == 3 and o["variant"] == "taylor3" else 2,
)
