"""Twisted SMC for any linear measurement ``y = A x0 + s z``: asymptotically exact in particles.

The masking filter of :mod:`sde_gen.sampling.smc` carried to a general ``A`` through its thin
SVD ``A = U diag(lambda) V^T`` (rank ``r``; :class:`RowSpace`: matrix-free for operators with
orthogonal rows, else from the dense matrix): in the row-space coordinates
``c = V^T x`` the measurement is diagonal, ``y' = U^T y = lambda * c0 + s z'``, and the reverse
kernel ``p(x_s | x_t) = N(mean(x_t), w I)`` stays isotropic, so its row-space and null-space
parts are independent. Potentials (twists, [Wu23] Eq. (8)) are the likelihood ``p(y | x_t)`` of
``N(0, c^2 I)`` data, per row-space coordinate

    g_t(x_t) = N(y'; kappa_t lambda c_t, rho_t lambda^2 + s^2),
    kappa_t = alpha c^2 / (alpha^2 c^2 + sigma^2),  rho_t = c^2 sigma^2 / (alpha^2 c^2 + sigma^2),

flat where ``alpha_t = 0``. The proposal is the locally optimal ``p(x_s | x_t) g_s(x_s) / Z_s``
(a Gaussian product on the row space, the kernel on the null space) and the incremental weight
``Z_s(x_t) / g_t(x_t)`` with ``Z_s = N(y'; kappa_s lambda mean', kappa_s^2 lambda^2 w + rho_s
lambda^2 + s^2)``. The last potential is the likelihood itself, ``N(y'; lambda c0, s^2)``, after
DDPM's last kernel ``N(x0_hat, (sigma / alpha)^2)`` at ``t_min``: the weights telescope to the
model's ``p(x0 | y)`` for any positive twists ([Wu23] Thm. 1; [Cardoso23] Prop. 3.1). As in the
masking filter, the last step keeps the kernel's mean (the product's mean on the row space:
``y' / lambda`` when ``s = 0``). Components of ``y`` outside the range of ``A`` do not depend on
``x0`` and are dropped.

Refs: [Wu23] TDS, Sec. 3; [Cardoso23] MCGdiff, Alg. 1; [Ho20] Eq. (7); [Nichol21] Eq. (15).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..chain import grid_coeffs
from ..errors import UserInputError
from ..memory import check_fits
from ..noise import Generator, rand, randn
from ..parameterization import CountingModel, EpsModel, eps_to_x0
from ..sampling.driver import Progress, check_pure_start
from ..sampling.pure_start import starts_pure
from ..sampling.smc import SMCResult, _categorical, _ess, _resample_indices, _resampling_uniforms
from ..sampling.spec import Option
from ..sde import SDE
from .operators import LinearOperator

__all__ = ["MAX_DENSE", "SMC_OPTIONS", "RowSpace", "restore_smc"]

#: The options of ``restore(method="smc")``.
SMC_OPTIONS = (
    Option("particles", int, None, "particles per row", min=1),
    Option("twist_scale", float, 1.0, "the data scale c the twists assume", min=0.0,
           min_open=True),
    Option("resampling", str, "systematic", "how particles are resampled",
           choices=("systematic", "multinomial")),
    Option("ess_threshold", float, 0.5, "resample a row when its ESS < ess_threshold * K",
           min=0.0, max=1.0),
)


def _log_normal(y: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``sum_i log N(y_i; mean_i, var_i)`` per row, float64, ``(N,)``."""
    return (-0.5 * (torch.log(2 * math.pi * var) + (y - mean) ** 2 / var)).sum(1)


#: The largest example size whose dense matrix is factored (an SVD of a D x D float64 matrix).
MAX_DENSE = 4096


class RowSpace:
    """The row space of ``A`` in coordinates where the measurement is diagonal: ``c = V^T x``
    (``r`` values), ``y' = U^T y = lambda * c0 + s z'``.

    Operators with orthogonal rows of equal norm (``A A^T = c I``: :class:`~.operators.Mask`,
    :class:`~.operators.Downsample`, :class:`~.operators.Colorize`) are matrix-free:
    ``U = I``, ``lambda = sqrt(c)``, ``V = A^T / lambda``, so ``c = A x / lambda`` and the
    operator's own calls do the work at any image size. Others use the thin SVD of the dense
    matrix (singular values below ``rtol`` times the largest dropped), for ``D <= MAX_DENSE``.
    """

    def __init__(self, op: LinearOperator, shape: tuple[int, ...], device: torch.device, *,
                 rtol: float = 1e-10) -> None:
        self.op, self.m_shape = op, op.out_shape(shape)
        d = math.prod(shape)
        if op.gram_scale is not None:
            self.u = self.v = None
            self.lam = torch.full((math.prod(self.m_shape),), math.sqrt(op.gram_scale),
                                  dtype=torch.float64, device=device)
            return
        if d > MAX_DENSE:
            raise UserInputError(f"method='smc' factors {op.name}'s dense matrix, which is "
                                 f"{d} x {d} on examples of shape {shape} (at most {MAX_DENSE}); "
                                 f"use mmps or pgdm, or an operator with orthogonal rows (Mask, "
                                 f"Downsample, Colorize)")
        u, lam, vh = torch.linalg.svd(op.matrix(shape), full_matrices=False)
        keep = lam > rtol * lam[0]
        self.u, self.lam = u[:, keep].to(device), lam[keep].to(device)
        self.v = vh[keep].T.to(device)

    def measure(self, y: torch.Tensor) -> torch.Tensor:
        """``y' = U^T y``, ``(B, r)`` float64."""
        y = y.flatten(1).to(torch.float64)
        return y if self.u is None else y @ self.u

    def coords(self, x: torch.Tensor) -> torch.Tensor:
        """``c = V^T x``, ``(N, r)`` float64."""
        if self.v is None:
            return self.op(x).flatten(1).to(torch.float64) / self.lam
        return (x.flatten(1) @ self.v.to(x.dtype)).to(torch.float64)

    def with_coords(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``x`` with its row-space part set to ``c``: ``x + V (c - V^T x)``."""
        delta = (c - self.coords(x)).to(x.dtype)
        if self.v is None:
            return x + self.op.adjoint((delta / self.lam.to(x.dtype)).reshape(
                x.shape[0], *self.m_shape))
        return x + (delta @ self.v.to(x.dtype).T).reshape(x.shape)


@torch.no_grad()
def restore_smc(model: EpsModel, sde: SDE, y: torch.Tensor, op: LinearOperator, *,
                noise_std: float, ts: torch.Tensor, x_shape: tuple[int, ...],
                kernel_var: torch.Tensor, generator: Generator, dtype: torch.dtype,
                options: dict[str, Any], progress: bool = False) -> SMCResult:
    """One draw per row of ``x0 | y`` by twisted SMC (see the module docstring); called by
    :func:`~.restore.restore` with a checked grid, ``y (B, *M)`` and the kernel's variances.

    Returns:
        :class:`~sde_gen.sampling.smc.SMCResult`: ``x (B, *D)``, the particles ``(B, K, *D)``,
        their log-weights and the log-evidence estimate of ``p_model(y)`` (nats, w.r.t. the
        measure of ``y'`` on the range of ``A``).
    """
    k = options["particles"]
    if k is None:
        raise UserInputError("method='smc' needs particles (a positive integer per row)")
    b, d_shape = x_shape[0], x_shape[1:]
    device = y.device
    check_fits(12 * b * k * math.prod(d_shape) * torch.finfo(dtype).bits // 8,
               f"{k} particles for each of {b} rows of shape {d_shape}",
               hint="use fewer particles or rows")
    space = RowSpace(op, d_shape, device)
    lam, rot, set_rot = space.lam, space.coords, space.with_coords
    s2 = noise_std**2
    y_rot = space.measure(y).repeat_interleave(k, 0)  # (N, r)
    lam2 = lam**2
    alpha, sigma = grid_coeffs(sde, ts)
    c2 = float(options["twist_scale"]) ** 2
    total = alpha**2 * c2 + sigma**2
    kappa, rho = alpha * c2 / total, c2 * sigma**2 / total
    n = b * k

    def log_g(x: torch.Tensor, j: int) -> torch.Tensor:
        return _log_normal(y_rot, float(kappa[j]) * lam * rot(x), float(rho[j]) * lam2 + s2)

    def product(mean: torch.Tensor, w: float, j: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``N(mean, w I) g_j`` on the row space: ``(log Z_j, mean, variance)``, ``(N, r)``."""
        cm = rot(mean)
        ka = float(kappa[j]) * lam
        pred_var = ka**2 * w + float(rho[j]) * lam2 + s2
        gain = w * ka / pred_var
        return (_log_normal(y_rot, ka * cm, pred_var), cm + gain * (y_rot - ka * cm),
                w - gain * ka * w)

    def draw(mean: torch.Tensor, w: float, j: int) -> torch.Tensor:
        """A draw of the proposal ``N(mean, w I) g_j / Z_j``: the kernel on the null space."""
        _, c_mean, c_var = product(mean, w, j)
        x = mean + math.sqrt(w) * randn(mean.shape, generator, dtype=dtype, device=device)
        c = c_mean + c_var.sqrt() * randn(c_mean.shape, generator, dtype=torch.float64,
                                          device=device)
        return set_rot(x, c)

    check_pure_start(model, sde, ts)
    pure = starts_pure(sde, ts)
    counted = CountingModel(model)
    p2 = sde.prior_std**2
    zeros = torch.zeros(n, *d_shape, dtype=dtype, device=device)
    log_evidence = product(zeros, p2, 0)[0].reshape(b, k)[:, 0]  # Z_T
    x = draw(zeros, p2, 0)  # x_T ~ p(x_T) g_T(x_T) / Z_T
    c_x, c_x0, _, _ = grid_coeffs(sde, ts).posterior()
    log_w = torch.zeros(b, k, dtype=torch.float64, device=device)
    ess_log, n_resampled = [], 0
    with Progress(len(ts) - 1, desc="restore (smc)", show=progress) as bar:
        for j in range(len(ts)):
            t = ts[j].to(dtype).expand(n)
            if j == 0 and pure:
                x0 = counted.predict(x, t)[1]
            else:
                x0 = eps_to_x0(x, counted(x, t), alpha[j].to(dtype), sigma[j].to(dtype))
            final = j == len(ts) - 1
            if final:  # DDPM's last kernel N(x0_hat, (sigma/alpha)^2), then the likelihood
                mean, w = x0, float(sigma[j] / alpha[j]) ** 2
                log_inc = _log_normal(y_rot, lam * rot(mean), lam2 * w + s2)
            else:
                mean = c_x[j].to(dtype) * x + c_x0[j].to(dtype) * x0  # Eq. (7) [Ho20]
                w = float(kernel_var[j])
                log_inc = product(mean, w, j + 1)[0]  # Z_s(x_t)
            log_w = log_w + (log_inc - log_g(x, j)).reshape(b, k)  # / g_t(x_t)
            ess = _ess(log_w)
            ess_log.append(ess)
            redo = ess < options["ess_threshold"] * k
            uni = _resampling_uniforms(b, k, options["resampling"], generator, device)
            if bool(redo.any()):  # ancestors by the weights of x_t, before the move
                rows = redo.nonzero().squeeze(1)
                log_evidence[rows] += torch.logsumexp(log_w[rows], 1) - math.log(k)
                idx = torch.arange(k, device=device).expand(b, k).clone()
                idx[rows] = _resample_indices(log_w[rows], uni[rows], options["resampling"])
                mean = mean[(idx + k * torch.arange(b, device=device)[:, None]).reshape(-1)]
                log_w[rows] = 0.0
                n_resampled += int(rows.numel())
            if final:  # the product's mean on the row space (y' / lambda at s = 0)
                cm = rot(mean)
                x = set_rot(mean, (cm * s2 + w * lam * y_rot) / (s2 + w * lam2))
            else:
                x = draw(mean, w, j + 1)
                bar.update()
    log_evidence = log_evidence + torch.logsumexp(log_w, 1) - math.log(k)
    log_w = log_w - torch.logsumexp(log_w, 1, keepdim=True)
    pick = _categorical(log_w.exp(), rand((b, 1), generator, dtype=torch.float64,
                                          device=device)).squeeze(1)
    chosen = x[pick + k * torch.arange(b, device=device)]
    return SMCResult(x=chosen, x_mean=chosen, nfe=counted.nfe, ts=ts,
                     particles=x.reshape(b, k, *d_shape), log_weights=log_w,
                     log_evidence=log_evidence, ess=torch.stack(ess_log),
                     n_resampled=n_resampled)
