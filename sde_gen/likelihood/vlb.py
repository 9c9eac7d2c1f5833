"""DDPM's own likelihood: the discrete variational bound ([Ho20] Eq. 5) of the VP chain.

    L = L_T + sum_{t=2}^{N} L_{t-1} + L_0,
    L_T     = KL(q(x_N | x_0) || p(x_N))                                      closed form
    L_{t-1} = E_{q(x_t|x_0)} KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))
                                                                   [Ho20] Eq. (5)-(7)
    L_0     = -E_{q(x_1|x_0)} log p_theta(x_0 | x_1)

``q(x_{t-1} | x_t, x_0)`` is the posterior of :func:`~sde_gen.chain.posterior_coeffs`
(mean ``mu~``, variance ``beta~``); ``p_theta`` has the mean from ``eps_theta`` and variance
``sigma_t^2 = beta_t``, ``beta~_t`` or the model's learned ``Sigma_theta`` ([Nichol21] Eq. 15, per
dimension, between the step's ``beta_t`` and ``beta~_t``). The decoder ``p_theta(x_0 | x_1)`` is
DDPM's discretized Gaussian over the 256 pixel bins of ``[-1, 1]`` for 8-bit images ([Ho20]
Eq. 13) and a plain Gaussian density for continuous data; its variance is ``beta_1`` (with
``beta_tilde``, whose ``beta~_1 = 0``, it is ``beta~_2``, as DDPM's code clips it; a learned
variance interpolates between these two). Each ``E_q`` uses one draw of ``x_t`` per example, as
DDPM's evaluation does.

:func:`discrete_chain` tabulates the chain's per-step coefficients; the hybrid training loss
(:mod:`sde_gen.hybrid_loss`) shares it and the two closed forms :func:`gaussian_kl` and
:func:`discretized_gaussian_log_likelihood`.

Refs: [Ho20] Eq. (5), (7), (13), Sec. 3.2-3.3; [Nichol21] Sec. 2, Eq. (15).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..chain import grid_coeffs, posterior_coeffs
from ..errors import UserInputError
from ..noise import Generator, randint, randn
from ..parameterization import EpsModel, eps_to_x0, learned_variance_fn, log_variance_from_v
from ..scaling import uint8_to_model
from ..sde import SDE
from ..tensor_utils import append_dims, sum_flat

VARIANCES = ("beta", "beta_tilde", "learned")


@dataclass(frozen=True)
class DiscreteChain:
    """DDPM's chain per 0-based step ``i`` (DDPM's ``t = i + 1``), float64, each ``(N,)``.

    Attributes:
        t: continuous time of step ``i`` (``sde.index_to_time``).
        alpha, sigma: ``sqrt(abar_i)``, ``sqrt(1 - abar_i)`` (the chain's own coefficients).
        c_x, c_x0: posterior mean ``c_x x_i + c_x0 x0`` of ``q(x_{i-1} | x_i, x0)``; step 0 goes
            to the clean end (``c_x = 0``, ``c_x0 = 1``).
        beta: forward variance of the step, ``1 - abar_i / abar_{i-1}`` (``beta_1`` at ``i = 0``).
        beta_tilde: posterior variance ([Ho20] Eq. 7); 0 at ``i = 0``.
        beta_tilde_clipped: ``beta_tilde`` with step 0 set to step 1's, as DDPM's code clips it
            (the lower end of a learned variance, [Nichol21] Eq. 15); a 1-step chain has no
            step 1, and its step 0 is ``beta`` there.
    """

    t: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    c_x: torch.Tensor
    c_x0: torch.Tensor
    beta: torch.Tensor
    beta_tilde: torch.Tensor
    beta_tilde_clipped: torch.Tensor


def _check_ddpm_chain(sde: SDE) -> None:
    """DDPM's bound is a sum over a variance-preserving discrete chain (VP, sub-VP)."""
    if sde.has_ddpm_chain:
        return
    why = ("its alpha_T = 0 leaves no discrete chain: use the ODE likelihood, whose prior is "
           "exact there" if sde.pure_noise_at_T else "VE's x_0 is already perturbed by sigma_min")
    raise UserInputError(f"DDPM's bound (vlb) needs a variance-preserving discrete chain (VP or "
                         f"sub-VP), not {type(sde).__name__}: {why}")


def discrete_chain(sde: SDE, *, device: torch.device | str | None = None) -> DiscreteChain:
    """The per-step coefficients of the VP (or sub-VP) discrete chain; see :class:`DiscreteChain`.

    Raises:
        UserInputError: for VE or a flow path (no DDPM chain) or a chain with a non-positive
            transition variance.
    """
    _check_ddpm_chain(sde)
    n = sde.N
    # Grid: DDPM steps N..1 (0-based N-1..0) at their times, then the clean end (alpha 1, sigma 0).
    ts = sde.index_to_time(torch.arange(n - 1, -1, -1, device=device)).to(device)
    alpha, sigma = grid_coeffs(sde, ts, discrete=True)
    alpha = torch.cat([alpha, alpha.new_ones(1)])
    sigma = torch.cat([sigma, sigma.new_zeros(1)])
    c_x, c_x0, var_tilde, v = posterior_coeffs(alpha, sigma)  # interval k: step N-1-k -> N-2-k
    if (v <= 0).any():
        raise UserInputError("the discrete chain has a non-positive transition variance")
    # DDPM clips beta~_1 = 0 to beta~_2; a 1-step chain has no beta~_2, and uses beta_1.
    clipped = torch.cat([var_tilde[:-1], var_tilde[-2:-1] if n > 1 else v[-1:]])
    return DiscreteChain(t=ts.flip(0), alpha=alpha[:-1].flip(0), sigma=sigma[:-1].flip(0),
                         c_x=c_x.flip(0), c_x0=c_x0.flip(0), beta=v.flip(0),
                         beta_tilde=var_tilde.flip(0), beta_tilde_clipped=clipped.flip(0))


@dataclass(frozen=True)
class VLBResult:
    """Per-example terms of the bound, in nats (``(B,)`` each).

    Attributes:
        nats: the bound ``L_T + sum L_{t-1} + L_0``.
        bpd: ``nats / (D ln 2)`` for 8-bit images (the discrete decoder makes it a bound on
            ``-log2 P(x)/D`` with no dequantization offset); ``None`` for continuous data.
        prior: ``L_T``.
        diffusion: ``sum_{t>=2} L_{t-1}`` (or its unbiased estimate).
        decoder: ``L_0``.
        diffusion_stderr: standard error of the estimate with ``n_t``; zeros when summed.
        nfe: model calls per example.
        terms: ``(B, N - 1)`` the individual ``L_{t-1}``, DDPM's t = N..2 (when summed).
    """

    nats: torch.Tensor
    bpd: torch.Tensor | None
    prior: torch.Tensor
    diffusion: torch.Tensor
    decoder: torch.Tensor
    diffusion_stderr: torch.Tensor
    nfe: int
    terms: torch.Tensor | None = None


def gaussian_kl(mean1, var1, mean2, var2) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, var1) || N(mean2, var2))``."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                                        *, bins: int = 256) -> torch.Tensor:
    """Elementwise ``log P(x)`` of the Gaussian integrated over ``x``'s pixel bin ([Ho20] Eq. 13).

    ``x`` lies on the ``bins`` levels of ``[-1, 1]``; the edge bins extend to ``-inf`` / ``+inf``
    so the probabilities of all bins sum to 1.
    """
    half = 1.0 / (bins - 1)
    std = torch.sqrt(var)
    upper = torch.where(x > 1 - half / 2, torch.ones_like(x),
                        _std_normal_cdf((x + half - mean) / std))
    lower = torch.where(x < -1 + half / 2, torch.zeros_like(x),
                        _std_normal_cdf((x - half - mean) / std))
    return torch.log((upper - lower).clamp(min=1e-12))


def vlb(
    model: EpsModel,
    sde: SDE,
    x: torch.Tensor,
    *,
    variance: str = "beta",
    n_t: int | None = None,
    generator: Generator = None,
) -> VLBResult:
    """DDPM's variational bound on ``-log p(x)`` per example, with its term breakdown.

    Args:
        model: eps-model ``model(x, t)``; step ``i`` is evaluated at ``sde.index_to_time(i)``.
            With ``variance="learned"`` a model with ``eps_and_variance(x, t) -> (eps, v)``
            (:class:`~sde_gen.parameterization.ScoreModel` with ``learn_variance=True``).
        sde: VP (DDPM's discrete ``abar_i``) or sub-VP (its coefficients at the step times).
        x: uint8 images ``(B, C, H, W)`` (scaled to [-1, 1], discretized decoder) or float data
            ``(B, *D)`` in model units (continuous Gaussian decoder).
        variance: reverse variance ``beta``, ``beta_tilde`` or ``learned`` ([Nichol21] Eq. 15).
        n_t: sum all ``N - 1`` middle terms (``None``) or estimate their sum from ``n_t`` steps
            drawn uniformly per example (unbiased, with a standard error). A 1-step chain has
            no middle term (its bound is ``L_T + L_0``, exact, whatever ``n_t``).
        generator: source of the ``x_t`` draws and sampled steps (an
            :class:`~sde_gen.noise.IndexedGenerator` gives each example its own).

    Returns:
        :class:`VLBResult`.

    Raises:
        UserInputError: VE or a flow path, an unknown variance, or ``learned`` for a model with
            a fixed variance.
    """
    _check_ddpm_chain(sde)
    if variance not in VARIANCES:
        raise UserInputError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    if n_t is not None and n_t < 1:
        raise UserInputError(f"n_t must be a positive integer, got {n_t}")
    eps_and_v = learned_variance_fn(model) if variance == "learned" else None
    discrete = x.dtype == torch.uint8
    x0 = uint8_to_model(x).double() if discrete else x.double()
    b, dev, n = x0.shape[0], x0.device, sde.N
    ch = discrete_chain(sde, device=dev)
    var_fixed = ch.beta if variance == "beta" else ch.beta_tilde_clipped
    ndim = x0[0].numel()

    def draw_xt(i: torch.Tensor):  # i: (B,) 0-based step; x_t at step i
        z = randn(x0.shape, generator, device=dev, dtype=x0.dtype)
        return append_dims(ch.alpha[i], x0.ndim) * x0 + append_dims(ch.sigma[i], x0.ndim) * z

    def predict(x_t, i):  # (x0_hat, Sigma_theta per dim or None for a fixed variance)
        t = ch.t[i].to(x_t.dtype)
        if eps_and_v is None:
            eps, var = model(x_t, t), None
        else:
            eps, v = eps_and_v(x_t, t)
            var = torch.exp(log_variance_from_v(v.double(), ch.beta[i], ch.beta_tilde_clipped[i]))
        return eps_to_x0(x_t, eps.double(), ch.alpha[i], ch.sigma[i]), var

    def middle(i: torch.Tensor) -> torch.Tensor:  # L_{t-1} for step i >= 1, per example
        x_t = draw_xt(i)
        x0_hat, var = predict(x_t, i)
        diff = append_dims(ch.c_x0[i], x0.ndim) * (x0 - x0_hat)  # mu~ - mu_theta
        if var is None:
            r = ch.beta_tilde[i] / var_fixed[i]
            return 0.5 * (ndim * (r - 1 - torch.log(r)) + sum_flat(diff**2) / var_fixed[i])
        return sum_flat(gaussian_kl(diff, append_dims(ch.beta_tilde[i], x0.ndim), 0.0, var))

    # L_T: KL(q(x_N | x_0) || prior).
    prior_var = torch.tensor(sde.prior_std**2, dtype=torch.float64, device=dev)
    a_n, s_n = ch.alpha[-1], ch.sigma[-1]
    l_prior = sum_flat(gaussian_kl(a_n * x0, s_n**2, torch.zeros_like(x0), prior_var))
    # Middle terms, steps N-1..1 (DDPM's t = N..2); a 1-step chain has none: L = L_T + L_0.
    if n_t is None or n == 1:
        terms = torch.stack([middle(torch.full((b,), i, device=dev))
                             for i in range(n - 1, 0, -1)], 1) if n > 1 else x0.new_zeros(b, 0)
        l_mid, se = terms.sum(1), torch.zeros(b, dtype=torch.float64, device=dev)
        nfe, kept = n, terms
    else:
        # (B, n_t) then transposed: example i's steps come from its own stream with an
        # IndexedGenerator
        steps = (n - 1) - randint(n - 1, (b, n_t), generator, device=dev).T
        terms = torch.stack([middle(steps[j]) for j in range(n_t)], 1)
        l_mid = (n - 1) * terms.mean(1)
        if n_t > 1:
            se = (n - 1) * terms.std(1) / math.sqrt(n_t)
        else:
            se = torch.full_like(l_mid, math.nan)
        nfe, kept = n_t + 1, None
    # L_0: the decoder at DDPM's t = 1 (step 0).
    first = torch.zeros(b, dtype=torch.long, device=dev)
    x_1 = draw_xt(first)
    mean, var = predict(x_1, first)  # mu_theta(x_1, 1) = x0_hat since sigma_0 = 0
    var = var_fixed[0].expand_as(mean) if var is None else var
    if discrete:
        l_dec = -sum_flat(discretized_gaussian_log_likelihood(x0, mean, var))
    else:
        l_dec = sum_flat(0.5 * (torch.log(2 * math.pi * var) + (x0 - mean) ** 2 / var))
    total = l_prior + l_mid + l_dec
    bpd = total / (ndim * math.log(2)) if discrete else None
    return VLBResult(nats=total, bpd=bpd, prior=l_prior, diffusion=l_mid, decoder=l_dec,
                     diffusion_stderr=se, nfe=nfe, terms=kept)
