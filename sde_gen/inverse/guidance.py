"""The guided x0 of DPS, PiGDM and MMPS: each method's estimate of ``E[x0 | x_t, y]``.

Notation: ``x_t = alpha x0 + sigma eps``, the denoiser ``x0_hat(x_t)`` with Jacobian
``J = d x0_hat / d x_t`` (a vector-Jacobian product ``J^T v`` is one backward pass), the residual
``r = y - A x0_hat``, the measurement noise ``s``. By Tweedie's formula a likelihood score
``g ~ grad_{x_t} log p(y | x_t)`` moves the denoiser to ``x0_hat + (sigma^2 / alpha) g``; every
method here returns that shift (or, for DPS's paper step, a correction of the next state):

- ``mmps`` ([Rozet24] Eq. (9)-(11)): ``Cov[x0 | x_t] = (sigma^2 / alpha) J`` (Tweedie's second
  moment; ``J^T`` stands for ``J``, symmetric for an exact denoiser), and
  ``x0_hat + Cov A^T (s^2 I + A Cov A^T)^-1 r`` solved by conjugate gradients. On Gaussian data
  with the exact denoiser ``p(y | x_t)`` is this Gaussian, so it is the exact ``E[x0 | x_t, y]``.
- ``pgdm`` ([Song23pgdm] Eq. (7)-(8)): ``Cov[x0 | x_t] ~ r_t^2 I`` with
  ``r_t^2 = v sigma^2 / (alpha^2 v + sigma^2)`` (the posterior variance of ``N(0, v I)`` data),
  ``g = J^T A^T (r_t^2 A A^T + s^2 I)^-1 r`` (CG on ``A A^T``, no network call). Exact where the
  data are ``N(mu, v I)`` with the given ``v``; biased otherwise.
- ``dps`` ([Chung23] Alg. 1): the unit Jacobian-weighted residual. Step ``"paper"``: after the
  unconditional kernel step, ``x_s -= zeta_i grad_{x_t} ||r||^2`` with ``zeta_i = zeta / ||r||``
  (App. C.2; the authors' code steps ``zeta grad ||r||``, half this); step ``"constant"``: a
  fixed ``zeta_i = zeta`` (Alg. 1 as printed). Step ``"likelihood"``: the
  Gaussian likelihood of ``y`` given ``x0 = x0_hat`` ([Chung23] Eq. (15)),
  ``g = J^T A^T r / s^2``, needs ``s > 0``. DPS ignores ``Cov[x0 | x_t]``: biased even on Gaussians.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..parameterization import model_prediction
from ..sde import SDE
from .operators import LinearOperator

__all__ = ["conjugate_gradient", "denoise_with_graph", "guided_x0"]

Matvec = Callable[[torch.Tensor], torch.Tensor]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-example inner products ``(B,)`` of ``(B, *M)`` tensors."""
    return (a * b).flatten(1).sum(1)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def conjugate_gradient(matvec: Matvec, b: torch.Tensor, *, steps: int,
                       rtol: float = 1e-10) -> torch.Tensor:
    """``u ~ M^-1 b`` for symmetric positive (semi-)definite ``M``, one system per example, by at
    most ``steps`` conjugate-gradient iterations from ``u = 0`` (stops once every residual is
    below ``rtol ||b||``). Shapes: ``b (B, *M)``."""
    u = torch.zeros_like(b)
    res, p = b.clone(), b.clone()
    rr = _dot(res, res)
    stop = rtol**2 * rr
    tiny = torch.finfo(b.dtype).tiny  # 1e-300 is 0 in float32: a converged example gave 0 / 0
    zero = torch.zeros_like(rr)
    for _ in range(steps):
        active = rr > stop  # converged examples stay where they are
        if not bool(active.any()):
            break
        mp = matvec(p)
        pmp = _dot(p, mp)
        step = torch.where(active & (pmp > 0), rr / pmp.clamp_min(tiny), zero)
        u = u + _bcast(step, b) * p
        res = res - _bcast(step, b) * mp
        rr_new = _dot(res, res)
        beta = torch.where(active, rr_new / rr.clamp_min(tiny), zero)
        p = res + _bcast(beta, b) * p
        rr = rr_new
    return u


def denoise_with_graph(model: Any, sde: SDE, x: torch.Tensor, t: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor | None, float, float]:
    """``(x0_hat, x_leaf, alpha, sigma)`` at the single time ``t`` of the batch; ``x0_hat`` keeps
    its graph to ``x_leaf`` for vector-Jacobian products. Where ``alpha = 0`` (a flow path's
    ``T``) x0 comes from the model itself and does not depend on ``x_t``: ``x_leaf`` is None."""
    alpha, sigma = (float(c) for c in sde.marginal_coeffs(t[:1].to(torch.float64)))
    if alpha == 0:
        with torch.no_grad():
            return model_prediction(model, x, t)[1], None, alpha, sigma
    leaf = x.detach().requires_grad_(True)
    eps = model(leaf, t)
    return (leaf - sigma * eps) / alpha, leaf, alpha, sigma


def guided_x0(method: str, x0: torch.Tensor, leaf: torch.Tensor | None, alpha: float,
              sigma: float, y: torch.Tensor, op: LinearOperator, noise_std: float,
              options: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x0_guided, shift)``: the estimate of ``E[x0 | x_t, y]`` that the kernel steps with and,
    for DPS's paper step, the correction ``- zeta_i grad ||r||^2`` of the next state (else None).
    See the module docstring for each method. Shapes: ``x0 (B, *D)``, ``y (B, *M)``."""
    if leaf is None:  # alpha = 0: p(y | x_t) = p(y), no guidance
        return x0.detach(), None
    s2, ratio = noise_std**2, sigma**2 / alpha

    def vjp(v: torch.Tensor) -> torch.Tensor:  # J^T v, one backward pass
        return torch.autograd.grad(x0, leaf, v, retain_graph=True)[0]

    r = (y - op(x0)).detach()
    if method == "mmps":
        def cov_matvec(u: torch.Tensor) -> torch.Tensor:  # (s^2 I + A Cov A^T) u
            return s2 * u + op(ratio * vjp(op.adjoint(u)))

        u = conjugate_gradient(cov_matvec, r, steps=options["cg_steps"])
        return (x0 + ratio * vjp(op.adjoint(u))).detach(), None  # Eq. (11) [Rozet24]
    if method == "pgdm":
        v = options["data_var"]
        r_t2 = v * sigma**2 / (alpha**2 * v + sigma**2)
        u = conjugate_gradient(lambda w: r_t2 * op(op.adjoint(w)) + s2 * w, r,
                               steps=options["cg_steps"])
        return (x0 + ratio * vjp(op.adjoint(u))).detach(), None  # Eq. (7) [Song23pgdm]
    if options["step"] == "likelihood":
        return (x0 + ratio * vjp(op.adjoint(r)) / s2).detach(), None
    # grad_{x_t} ||r||^2 = -2 J^T A^T r; zeta_i = zeta / ||r|| (App. C.2) or zeta (Alg. 1 [Chung23])
    grad = -2 * vjp(op.adjoint(r))
    zeta = torch.full((grad.shape[0],), options["zeta"], dtype=grad.dtype, device=grad.device)
    if options["step"] == "paper":
        zeta = zeta / r.flatten(1).norm(dim=1).clamp_min(1e-12)
    return x0.detach(), -_bcast(zeta, grad) * grad
