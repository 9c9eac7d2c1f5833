"""Asymptotically exact conditional sampling for masking observations: a twisted particle filter.

Given ``y = x0[A]`` on a known set ``A`` (a 0/1 mask), :func:`impute_smc` samples the *model's*
conditional ``p_model(x0 | x0[A] = y)`` by sequential Monte Carlo over the reverse Gaussian
(ancestral) kernel, with Gaussian potentials on the known coordinates
``g_t(x_t) = N(x_t[A]; m_t y, v_t I)`` (:func:`potential_coeffs`): MCGdiff's forward marginal
``N(alpha_t y, sigma_t^2)`` ([Cardoso23] Sec. 3.1, noiseless case) for ``twist_scale = inf``,
and by default the likelihood ``p(y | x_t[A])`` of unit-scale Gaussian data, which is flat while
``sigma_t >> alpha_t`` (a twist in the sense of [Wu23] Eq. 8).

Derivation. On the grid ``T = t_0 > ... > t_S = eps`` the model is the Markov chain
``p(x_{t_0}) prod_k p(x_{t_{k+1}} | x_{t_k})`` with ``p(x_s | x_t) = N(mean(x_t), w I)``,
``mean`` the DDPM posterior mean ``q(x_s | x_t, x0_hat(x_t))`` ([Ho20] Eq. 7) and ``w`` its
``beta~``, ``beta`` or (default) their geometric mean ([Nichol21] Eq. 15 at ``v = 1/2``). The
SMC targets ``gamma_k = p(x_{t_0}) prod_{j<k} p(x_{t_{j+1}} | x_{t_j}) g_{t_k}(x_{t_k})`` with
the locally optimal proposal ``q_k(x_s | x_t) = p(x_s | x_t) g_s(x_s) / Z_s(x_t)``: a Gaussian
product on the known coordinates (exact), the kernel itself on the unknown ones. The incremental
weight ``gamma_{k+1} / (gamma_k q_k)`` is then

    w_k(x_t) = Z_s(x_t) / g_t(x_t),   Z_s(x_t) = N(mean(x_t)[A]; m_s y, (w + v_s) I),

a function of the ancestor only, so particles are resampled *before* they move (a fully
adapted filter, [Cardoso23] Alg. 1). The initial draw ``p(x_T) g_T(x_T) / Z_T`` is exact. The
last potential is the observation itself: with ``denoise`` the extra kernel ``p(x0 | x_eps) =
N(x0_hat(x_eps), (sigma_eps / alpha_eps)^2 I)`` (DDPM's last step with the ``beta`` variance; the
unknown coordinates take its mean, as the plain sampler's Tweedie step does), otherwise the last
grid interval; either way the weight is ``N(y; mean[A], var) / g_t`` and the known coordinates
are set to ``y``. The product of the weights telescopes: every ``g`` cancels but the final
observation, so the weighted particles target ``p_model(x_{t_0:t_S}, x0) N(y; ...)``, whose
marginal is the model's conditional of its output given the known part, for *any* positive
potentials (they only set the variance). As ``K -> inf`` the draws converge to it ([Cardoso23]
Prop. 3.1; [Wu23] Thm. 1), and the running product of mean weights is an unbiased estimate of
the model's evidence ``p_model(x0[A] = y)`` (:attr:`SMCResult.log_evidence`). The remaining gap
to the *data's* conditional is the unconditional chain's: the score error, the grid and ``eps``.

Refs: [Cardoso23] MCGdiff, Sec. 3 and Alg. 1; [Wu23] TDS, Sec. 3; [Trippe22] SMCDiff;
[Ho20] Eq. (6)-(7); [Nichol21] Eq. (15); [Kitagawa96] systematic resampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..chain import grid_coeffs
from ..errors import UserInputError
from ..memory import check_fits
from ..noise import Generator, rand, randn
from ..parameterization import CountingModel, EpsModel, eps_to_x0
from ..sde import SDE
from .driver import Progress, check_pure_start, time_grid_for
from .pure_start import starts_pure
from .result import SampleResult
from .spec import Option, check_options

__all__ = ["OPTIONS", "RESAMPLERS", "VARIANCES", "SMCResult", "impute_smc", "potential_coeffs"]

RESAMPLERS = ("systematic", "multinomial")
VARIANCES = ("geometric", "beta", "beta_tilde")
DEFAULT_STEPS = 100
DEFAULT_SPACING = "logsnr"
DEFAULT_TWIST_SCALE = 1.0

#: The SMC sampler's own options (its kernel is not a registered solver).
OPTIONS = (
    Option("particles", int, None, "particles per row", min=1),
    Option("variance", str, "geometric", "the kernel's variance: geometric sqrt(beta beta~), "
           "beta or beta_tilde", choices=VARIANCES),
    Option("resampling", str, "systematic", "how particles are resampled",
           choices=RESAMPLERS),
    Option("ess_threshold", float, 0.5, "resample a row when its ESS < ess_threshold * K",
           min=0.0, max=1.0),
    Option("twist_scale", float, DEFAULT_TWIST_SCALE, "the data scale the potentials assume "
           "(inf: MCGdiff's potentials)", min=0.0, min_open=True),
)


def potential_coeffs(alpha: torch.Tensor, sigma: torch.Tensor,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m_t, v_t)`` of the potential ``g_t(x_t) = N(x_t[A]; m_t y, v_t I)`` per grid time.

    ``g_t(x_t)`` is ``p(y | x_t[A])`` up to a constant when the known part of the data were
    ``N(0, scale^2 I)``: ``m = (alpha^2 c^2 + sigma^2) / (alpha c^2)``, ``v = sigma^2 (alpha^2 c^2
    + sigma^2) / (alpha^2 c^2)``. ``scale = inf`` is MCGdiff's potential, the forward marginal
    ``q(x_t[A] | y) = N(alpha y, sigma^2)`` ([Cardoso23] Sec. 3.1); a finite scale flattens it
    where ``sigma_t >> alpha_t c`` and the observation tells nothing yet, so the weights stay
    even there (the intermediate targets come closer to ``q(x_t | y)``, [Wu23] Eq. 8). Where
    ``alpha_t = 0`` (a flow path's ``T``) a finite scale's potential is flat, ``v = inf``: the
    sampler uses ``g = 1`` there (any positive potential keeps the target).
    """
    if math.isinf(scale):
        return alpha, sigma**2
    c2 = scale**2
    total = alpha**2 * c2 + sigma**2
    return total / (alpha * c2), sigma**2 * total / (alpha**2 * c2)


@dataclass(frozen=True)
class SMCResult(SampleResult):
    """A :class:`SampleResult` with the particle system behind it.

    Attributes:
        particles: all final particles ``(B, K, *D)`` (known coordinates equal to ``y``).
        log_weights: their normalized log-weights ``(B, K)``, float64 (``logsumexp = 0`` per row).
        log_evidence: the SMC estimate of ``log p_model(x0[A] = y)`` per row ``(B,)``, float64,
            in nats (the log of an unbiased estimate).
        ess: effective sample size before each resampling decision, ``(steps + denoise, B)``.
        n_resampled: how many (row, step) pairs were resampled.
    """

    particles: torch.Tensor | None = None
    log_weights: torch.Tensor | None = None
    log_evidence: torch.Tensor | None = None
    ess: torch.Tensor | None = None
    n_resampled: int = 0


def _check_mask(mask: object, x_known: torch.Tensor) -> torch.Tensor:
    """``mask`` broadcast to ``x_known``'s shape as a 0/1 tensor of ``x_known``'s dtype."""
    m = torch.as_tensor(mask, device=x_known.device)
    try:
        m = torch.broadcast_to(m, x_known.shape)
    except RuntimeError:
        raise UserInputError(f"mask of shape {tuple(m.shape)} does not broadcast to x_known's "
                             f"{tuple(x_known.shape)}") from None
    if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
        raise UserInputError("mask must be 0/1 (1 where the coordinate is known)")
    m = m.to(x_known.dtype)
    if bool((m == 1).all()) or bool((m == 0).all()):
        raise UserInputError("mask must mark some coordinates known and some unknown, "
                             f"got {'all' if bool((m == 1).all()) else 'none'} known")
    return m


def _log_normal(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor | float,
                mask: torch.Tensor) -> torch.Tensor:
    """``sum_A log N(x_i; mean_i, var)`` over the masked coordinates, float64, ``(N,)``."""
    var = torch.as_tensor(var, dtype=torch.float64)
    diff = x.to(torch.float64) - mean.to(torch.float64)
    logp = -0.5 * (torch.log(2 * math.pi * var) + diff**2 / var)
    return (mask.to(torch.float64) * logp).reshape(x.shape[0], -1).sum(1)


def _ess(log_w: torch.Tensor) -> torch.Tensor:
    """Effective sample size ``1 / sum_k W_k^2`` of each row of log-weights ``(B, K)``."""
    w = torch.softmax(log_w, dim=1)
    return 1.0 / (w**2).sum(1)


def _categorical(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Indices drawn from each row's probabilities ``w (B, K)`` by inverting the CDF at the
    uniforms ``u (B, M)`` in ``[0, 1)``."""
    cdf = torch.cumsum(w, dim=1)
    cdf[:, -1] = 1.0  # rounding: the last cell ends exactly at 1
    return torch.searchsorted(cdf, u.contiguous()).clamp(max=w.shape[1] - 1)


def _resampling_uniforms(b: int, k: int, method: str, generator: Generator,
                         device: torch.device) -> torch.Tensor:
    """The uniforms of one resampling decision for every row, ``(B, K)`` (multinomial) or
    ``(B, 1)`` (systematic). They are drawn at every stage, for every row, whether or not a row
    resamples: so each row's stream advances the same way in any batch."""
    return rand((b, k if method == "multinomial" else 1), generator, dtype=torch.float64,
                device=device)


def _resample_indices(log_w: torch.Tensor, u: torch.Tensor, method: str) -> torch.Tensor:
    """Ancestor indices ``(R, K)`` from the log-weights ``(R, K)`` of the rows that resample and
    their uniforms ``u`` (:func:`_resampling_uniforms`)."""
    k = log_w.shape[1]
    w = torch.softmax(log_w, dim=1)
    if method == "multinomial":  # K independent draws per row
        return _categorical(w, u)
    # systematic: one uniform per row, K evenly spaced points ([Kitagawa96])
    return _categorical(w, (u + torch.arange(k, dtype=torch.float64, device=log_w.device)) / k)


@torch.no_grad()
def impute_smc(
    model: EpsModel,
    sde: SDE,
    x_known: torch.Tensor,
    mask: torch.Tensor,
    *,
    particles: int,
    steps: int | None = None,
    t_min: float | None = None,
    generator: Generator = None,
    denoise: bool = True,
    spacing: str | None = None,
    progress: bool = False,
    **options: Any,
) -> SMCResult:
    """One draw per row from the model's conditional ``p(x0 | x0[mask] = x_known[mask])``.

    Each row of ``x_known`` runs ``particles`` particles; rows and particles share one model call
    per grid time (batch ``B * K``). Resampling happens per row when its ESS falls below
    ``ess_threshold * K``. With ``K = 1`` this is the reverse kernel with the known coordinates
    pulled toward the forward-noised ``y`` (no selection): a biased sampler.

    Args:
        model: eps-model ``model(x, t)``, unconditional (the exact or learned score of the data).
        sde: the forward SDE (VP, sub-VP or VE: any ``alpha_t``, ``sigma_t``).
        x_known: ``(B, *D)``; the entries where ``mask`` is 1 are the observation ``y``.
        mask: 1 where known, broadcastable to ``(B, *D)`` (``(*D,)``, ``(B, *D)`` or
            ``(1, H, W)`` for images, shared over channels); bool or 0/1 numbers.
        particles: ``K >= 1`` particles per row.
        steps: grid intervals (default :data:`DEFAULT_STEPS`); model calls are ``steps`` plus
            one for ``denoise``.
        t_min: the end time, in ``(0, T)`` (default the SDE's, ``sde.default_t_min``).
        generator: source of all randomness (initial draws, kernels, resampling, final pick); an
            :class:`~sde_gen.noise.IndexedGenerator` gives every row its own streams.
        denoise: end with the observed Tweedie step ``x_{t_min} -> x0`` (one more model call).
        spacing: grid spacing (:data:`~.grids.SPACINGS`; default log-SNR uniform).
        progress: show a progress bar over the grid's intervals.
        **options: :data:`OPTIONS` other than ``particles``:
        variance: the kernel's variance: ``"geometric"`` ``sqrt(beta beta~)`` (default),
            ``"beta"`` or ``"beta_tilde"`` (the posterior's).
        twist_scale: the data scale ``c`` the potentials assume (:func:`potential_coeffs`);
            ``inf`` gives MCGdiff's potentials. Any value keeps the target; it sets the variance.
        resampling: ``"systematic"`` or ``"multinomial"``.
        ess_threshold: resample a row when ``ESS < ess_threshold * K`` (0: never, 1: always).

    Returns:
        :class:`SMCResult`: ``x`` one particle per row drawn from the final weights, known
        coordinates equal to ``x_known`` exactly; ``x_mean`` its noise-free mean; ``nfe`` the
        counted (batched) model calls; ``ts`` the grid; and the particle system.

    Raises:
        UserInputError: bad ``particles``, ``steps``, ``eps``, mask (not 0/1, not broadcastable,
            all or none known), ``spacing``, ``variance``, ``resampling`` or ``ess_threshold``.

    Shapes: ``x_known, x: (B, *D)``; ``particles: (B, K, *D)``.

    Refs: [Cardoso23] Alg. 1; [Wu23] Alg. 1; [Ho20] Eq. (7).
    """
    if not torch.is_tensor(x_known) or x_known.ndim < 2 or x_known.shape[0] < 1:
        raise UserInputError("x_known must be a (B, *D) tensor")
    if not x_known.is_floating_point():
        raise UserInputError(f"x_known must be a floating-point tensor, got {x_known.dtype}")
    opts = check_options(OPTIONS, {"particles": particles, **options}, owner="method='smc'")
    if particles is None:
        raise UserInputError("method='smc' needs particles (a positive integer per row)")
    k, variance, resampling = opts["particles"], opts["variance"], opts["resampling"]
    m = _check_mask(mask, x_known)
    x_known = torch.where(m.bool(), x_known, torch.zeros_like(x_known))  # unknown: anything
    if not bool(torch.isfinite(x_known).all()):
        raise UserInputError("x_known has non-finite values at known coordinates")
    device, dtype, b = x_known.device, x_known.dtype, x_known.shape[0]
    if device.type == "cpu":  # the particle system: about a dozen (B*K, *D) tensors at once
        check_fits(12 * b * k * x_known[0].numel() * x_known.element_size(),
                   f"{k} particles for each of {b} rows of shape {tuple(x_known.shape[1:])}",
                   hint="use fewer particles or rows")
    ts = time_grid_for(sde, steps=steps, t_min=t_min, spacing=spacing,
                       default_steps=DEFAULT_STEPS, default_spacing=DEFAULT_SPACING,
                       device=device)
    alpha, sigma = grid_coeffs(sde, ts)
    c_x, c_x0, var_tilde, v = grid_coeffs(sde, ts).posterior()
    # "geometric": sqrt(beta beta~), the log-space midpoint of [Nichol21] Eq. (15); on the tuning
    # Gaussians its conditional is far closer to the data's at few steps than beta's or beta~'s
    kernel_var = {"beta": v, "beta_tilde": var_tilde,
                  "geometric": torch.sqrt(v * var_tilde)}[variance]
    g_mean, g_var = (c.clone() for c in potential_coeffs(alpha, sigma,
                                                          float(opts["twist_scale"])))
    check_pure_start(model, sde, ts)
    pure = starts_pure(sde, ts)
    counted = CountingModel(model)

    # particles of row i are rows i*K .. i*K + K - 1 of one (B*K, *D) batch
    y = x_known.repeat_interleave(k, 0)
    mk = m.repeat_interleave(k, 0)
    known = mk.bool()
    n = b * k

    def noise() -> torch.Tensor:  # (B*K, *D): row i's K particles from row i's stream
        return randn(y.shape, generator, device=device, dtype=dtype)

    def product(mean: torch.Tensor, var: float, j: int):
        """Mean and std of N(mean, var) g_j on every coordinate (used where known)."""
        m_j, v_j = float(g_mean[j]), float(g_var[j])
        prec = 1.0 / var + 1.0 / v_j
        return (mean / var + m_j * y / v_j) / prec, math.sqrt(1.0 / prec)

    def log_g(x: torch.Tensor, j: int) -> torch.Tensor:
        if j == 0 and flat_T:
            return torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        return _log_normal(x, float(g_mean[j]) * y, float(g_var[j]), mk)

    # x_T ~ p(x_T) g_T(x_T) / Z_T: exact Gaussian product on the known coordinates; g_T = 1
    # where it is flat (alpha_T = 0 with a finite twist scale)
    p2 = sde.prior_std**2
    flat_T = not bool(torch.isfinite(g_var[0]))
    if flat_T:
        g_mean[0], g_var[0] = 0.0, math.inf
        mu_T, sd_T = torch.zeros_like(y), math.sqrt(p2)
        log_z = torch.zeros(b, dtype=torch.float64, device=device)
    else:
        mu_T, sd_T = product(torch.zeros_like(y), p2, 0)
        log_z = _log_normal(float(g_mean[0]) * y, torch.zeros_like(y), p2 + float(g_var[0]),
                            mk).reshape(b, k)[:, 0]
    x = torch.where(known, mu_T + sd_T * noise(), math.sqrt(p2) * noise())
    log_w = torch.zeros(b, k, dtype=torch.float64, device=device)
    ess_log: list[torch.Tensor] = []
    n_resampled = 0
    stages = len(ts) - 1 + int(denoise)
    x_mean = x

    with Progress(len(ts) - 1, desc="impute (smc)", show=progress) as prog:
        for j in range(stages):
            t_idx = min(j, len(ts) - 1)
            a_t, s_t = alpha[t_idx], sigma[t_idx]
            t = ts[t_idx].to(dtype).expand(n)
            if t_idx == 0 and pure:  # alpha_T = 0: x0 from the model itself
                _, x0 = counted.predict(x, t)
            else:
                x0 = eps_to_x0(x, counted(x, t), a_t.to(dtype), s_t.to(dtype))
            final = j == stages - 1
            if j < len(ts) - 1:
                mean = c_x[j].to(dtype) * x + c_x0[j].to(dtype) * x0  # Eq. (7) [Ho20]
                var = float(kernel_var[j])
            else:  # denoise: p(x0 | x_{t_min}) = N(x0_hat, (sigma/alpha)^2), DDPM's last step
                mean, var = x0, float(s_t / a_t) ** 2
            if final:  # the observation itself: x_s[A] = y
                log_inc = _log_normal(y, mean, var, mk)
            else:
                log_inc = _log_normal(mean, float(g_mean[j + 1]) * y, var + float(g_var[j + 1]),
                                      mk)  # Z_s(x_t)
            log_inc = log_inc - log_g(x, t_idx)  # / g_t(x_t)
            log_w = log_w + log_inc.reshape(b, k)

            ess = _ess(log_w)
            ess_log.append(ess)
            redo = ess < opts["ess_threshold"] * k
            u = _resampling_uniforms(b, k, resampling, generator, device)
            if bool(redo.any()):
                rows = redo.nonzero().squeeze(1)
                log_z[rows] += torch.logsumexp(log_w[rows], 1) - math.log(k)
                idx = torch.arange(k, device=device).expand(b, k).clone()
                idx[rows] = _resample_indices(log_w[rows], u[rows], resampling)
                flat = (idx + k * torch.arange(b, device=device)[:, None]).reshape(-1)
                x, mean = x[flat], mean[flat]
                log_w[rows] = 0.0
                n_resampled += int(rows.numel())

            z = 0.0 if (final and denoise) else math.sqrt(var) * noise()
            if final:
                x_mean = torch.where(known, y, mean)
                x = torch.where(known, y, mean + z)
            else:
                mu_p, sd_p = product(mean, var, j + 1)
                x_mean = torch.where(known, mu_p, mean)
                x = torch.where(known, mu_p + sd_p * noise(), mean + z)
            if j < len(ts) - 1:
                prog.update()

    log_z = log_z + torch.logsumexp(log_w, 1) - math.log(k)
    log_w = log_w - torch.logsumexp(log_w, 1, keepdim=True)
    u = rand((b, 1), generator, dtype=torch.float64, device=device)
    pick = _categorical(log_w.exp(), u).squeeze(1)
    rows = pick + k * torch.arange(b, device=device)
    shape = (b, k, *x_known.shape[1:])
    return SMCResult(x=x[rows], x_mean=x_mean[rows], nfe=counted.nfe, ts=ts,
                     particles=x.reshape(shape), log_weights=log_w, log_evidence=log_z,
                     ess=torch.stack(ess_log), n_resampled=n_resampled)
