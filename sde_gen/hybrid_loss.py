"""Improved DDPM's hybrid objective for a learned reverse variance ([Nichol21] Sec. 3.1).

    L_hybrid = L_simple + lambda L_vlb,      lambda = 0.001            [Nichol21] Eq. (16)

on DDPM's discrete steps ``t in {1..N}`` (0-based ``i = t - 1``, the discrete ``abar_i``). Per
example, with ``i`` uniform, ``x_t = sqrt(abar) x0 + sqrt(1 - abar) z`` and one network call
``(eps, v) = model(x_t, t, with_variance=True)``:

| term       | per example                                                   | ref                 |
| ---------- | ------------------------------------------------------------- | ------------------- |
| L_simple   | ``reduce((eps - z)^2)``                                       | [Ho20] Eq. (14)     |
| L_t, t >= 2| ``reduce(KL(N(mu~, beta~) || N(mu_theta, Sigma_theta)))``     | [Ho20] Eq. (5)      |
| L_t, t = 1 | ``reduce(-log p_theta(x0 | x_1))`` (discretized for images)   | [Ho20] Eq. (13)     |
| loss       | ``r_i (L_simple + lambda N L_t)``                             | [Nichol21] Eq. (16) |

``Sigma_theta = exp(v log beta_t + (1 - v) log beta~_t)`` ([Nichol21] Eq. 15) and ``mu_theta``
is built from ``eps`` with a **stop-gradient**: the mean learns only from L_simple, the variance
only from L_vlb ("we apply a stop-gradient to the mu_theta output for the L_vlb term").

**Units and scale.** ``L_t`` is in nats and reduced over the data dimensions exactly as L_simple
is (``reduce="mean"``: nats per dimension, improved-diffusion's ``mean_flat``; ``"sum"``: nats per
example). ``N L_t`` with uniform ``t`` is an unbiased estimate of the bound's step sum
``sum_t L_t`` (``L_T``, constant in theta, is left out), so ``lambda N L_t`` with ``lambda =
0.001`` is improved-diffusion's ``vb * N / 1000``, except that its ``vb`` is in bits: the same
``lambda`` weighs our term by ``ln 2`` less.

**Importance sampling** ([Nichol21] Eq. 18, Sec. 3.3): :class:`VLBStepSampler` draws ``i`` with
``p_t ∝ sqrt(E[L_t^2])`` over the last 10 values of each ``L_t``, uniformly until every step has
10, and the factor ``r_i = 1 / (N p_i)`` on the whole per-example loss keeps it an unbiased
estimate of the uniform-step objective (``r = 1`` for uniform draws). The paper uses it to make
L_vlb alone trainable; with L_hybrid it found no gain.

Refs: [Nichol21] Eq. (15), (16), (18), Sec. 3.1, 3.3; [Ho20] Eq. (5), (13), (14).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .errors import UserInputError
from .likelihood.vlb import (
    DiscreteChain,
    discrete_chain,
    discretized_gaussian_log_likelihood,
    gaussian_kl,
)
from .losses import REDUCTIONS
from .parameterization import log_variance_from_v
from .sde import SDE
from .tensor_utils import append_dims

# model(x_t, t, with_variance=True) -> (eps, v): a ScoreModel(learn_variance=True) or a wrapper of
# its forward (DDP, torch.compile).
EpsVarForward = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class VLBStepSampler:
    """Importance sampler of DDPM's steps for L_vlb, ``p_t ∝ sqrt(E[L_t^2])`` ([Nichol21] Eq. 18).

    Keeps the last ``history`` values of each of the N terms ``L_t`` (a ring buffer per step, on
    the sampler's device, updated without host synchronisation). Until every step has
    ``history`` values it samples uniformly; then ``p = (1 - uniform_mix) w / sum(w) +
    uniform_mix / N`` with ``w_t = sqrt(mean of the stored L_t^2)``. ``uniform_mix`` (0.001 as in
    improved-diffusion; 0 is the paper's exact rule) keeps every step reachable so its history
    stays current. The state (:meth:`state_dict`) goes into checkpoints: exact resume needs it.

    Args:
        n_steps: N, the number of DDPM steps.
        history: values kept per step (10 in the paper).
        uniform_mix: share of the uniform distribution mixed in once warm, in ``[0, 1)``.
        device: where the history lives (the training device, so draws use its generator).
    """

    def __init__(self, n_steps: int, *, history: int = 10, uniform_mix: float = 0.001,
                 device: torch.device | str | None = None) -> None:
        if n_steps < 1 or history < 1:
            raise UserInputError(f"need n_steps >= 1 and history >= 1, got {n_steps}, {history}")
        if not 0.0 <= uniform_mix < 1.0:
            raise UserInputError(f"uniform_mix must be in [0, 1), got {uniform_mix}")
        self.n_steps, self.history_len, self.uniform_mix = n_steps, history, uniform_mix
        self.history = torch.zeros(n_steps, history, dtype=torch.float64, device=device)
        self.counts = torch.zeros(n_steps, dtype=torch.long, device=device)

    def is_warm(self) -> bool:
        """Whether every step has ``history`` values (a host synchronisation)."""
        return bool((self.counts >= self.history_len).all())

    def probs(self) -> torch.Tensor:
        """``(N,)`` float64 step probabilities (uniform until warm); they sum to one."""
        n = self.n_steps
        w = torch.sqrt((self.history**2).mean(1))  # Eq. (18) [Nichol21]
        total = w.sum()
        p = (1 - self.uniform_mix) * w / total.clamp_min(1e-300) + self.uniform_mix / n
        warm = (self.counts >= self.history_len).all() & (total > 0)
        return torch.where(warm, p, torch.full_like(p, 1.0 / n))

    def sample(self, batch: int, *, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(steps, r)``: ``(B,)`` 0-based steps drawn from :meth:`probs` and ``r = 1/(N p)``."""
        p = self.probs()
        steps = torch.multinomial(p, batch, replacement=True, generator=generator)
        return steps, 1.0 / (self.n_steps * p[steps])

    @torch.no_grad()
    def update(self, steps: torch.Tensor, losses: torch.Tensor) -> None:
        """Append ``losses[j]`` (the ``L_t`` of example j) to the history of ``steps[j]``.

        Within a batch later examples count as newer; a step drawn more than ``history`` times
        keeps its last ``history`` values. Shapes: ``steps (B,)`` long, ``losses (B,)``.
        """
        steps = steps.to(self.counts.device).long()
        losses = losses.detach().to(self.history)
        s, order = torch.sort(steps, stable=True)
        vals = losses[order]
        n_each = torch.bincount(s, minlength=self.n_steps)
        first = torch.cumsum(n_each, 0) - n_each  # where each step's run starts in s
        occ = torch.arange(len(s), device=s.device) - first[s]  # 0, 1, ... within a run
        keep = occ >= n_each[s] - self.history_len
        slot = (self.counts[s] + occ) % self.history_len
        self.history[s[keep], slot[keep]] = vals[keep]
        self.counts += n_each

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        h, c = state["history"], state["counts"]
        if h.shape != self.history.shape or c.shape != self.counts.shape:
            raise UserInputError(f"VLB step history of shape {tuple(h.shape)} does not fit "
                             f"{tuple(self.history.shape)} (sde.N or the history length changed)")
        self.history.copy_(h.to(self.history))
        self.counts.copy_(c.to(self.counts))


@dataclass(frozen=True)
class HybridLoss:
    """Per-example terms of L_hybrid (rows of ``shard`` when given).

    Attributes:
        loss: ``r (L_simple + lambda N L_t)``, to be averaged over the batch.
        simple: L_simple.
        vlb: ``L_t`` (nats, reduced over dims like L_simple), without ``N``, ``lambda`` or ``r``;
            its gradient reaches only the variance output.
        steps: the 0-based steps of the *whole* batch (for :meth:`VLBStepSampler.update`).
        weight: the importance factor ``r``.
    """

    loss: torch.Tensor
    simple: torch.Tensor
    vlb: torch.Tensor
    steps: torch.Tensor
    weight: torch.Tensor


def hybrid_loss(
    model: EpsVarForward,
    sde: SDE,
    x0: torch.Tensor,
    *,
    vlb_weight: float = 0.001,
    reduce: str = "mean",
    discrete_data: bool = False,
    sampler: VLBStepSampler | None = None,
    chain: DiscreteChain | None = None,
    generator: torch.Generator | None = None,
    shard: slice | None = None,
    y: torch.Tensor | None = None,
) -> HybridLoss:
    """L_hybrid per example ([Nichol21] Sec. 3.1), with the mean stopped in its L_vlb term.

    Args:
        model: ``model(x_t, t, with_variance=True) -> (eps, v)``, e.g. a
            :class:`~sde_gen.parameterization.ScoreModel` with ``learn_variance=True``.
        sde: VP or sub-VP (its discrete chain, :func:`~sde_gen.likelihood.vlb.discrete_chain`).
        x0: clean data in model units. Shapes: ``(B, *D)``.
        vlb_weight: lambda (>= 0).
        reduce: ``"mean"`` or ``"sum"`` over data dimensions, for both terms.
        discrete_data: ``x0`` lies on the 256 levels of ``[-1, 1]`` (8-bit images): the t = 1
            term is DDPM's discretized decoder; else a Gaussian density.
        sampler: draw steps by importance ([Nichol21] Eq. 18); ``None`` draws them uniformly.
        chain: the SDE's precomputed chain (on ``x0``'s device), to skip rebuilding it.
        generator: source of the steps and noise.
        shard: evaluate only these rows (steps and noise are drawn for the whole batch first, as
            in :func:`~sde_gen.losses.dsm_loss`).
        y: class labels for a class-conditional model, ``model(x_t, t, y, with_variance=True)``
            (``(B,)`` int64); ``None`` leaves them out of the call.

    Returns:
        :class:`HybridLoss`.
    """
    if not vlb_weight >= 0:
        raise UserInputError(f"vlb_weight must be >= 0, got {vlb_weight}")
    if reduce not in REDUCTIONS:
        raise UserInputError(f"unknown reduce {reduce!r}; choose one of {sorted(REDUCTIONS)}")
    ch = chain if chain is not None else discrete_chain(sde, device=x0.device)
    b, n, dt = x0.shape[0], sde.N, x0.dtype
    if sampler is None:
        steps = torch.randint(0, n, (b,), generator=generator, device=x0.device)
        r = torch.ones(b, dtype=dt, device=x0.device)
    else:
        steps, r = sampler.sample(b, generator=generator)
        steps, r = steps.to(x0.device), r.to(device=x0.device, dtype=dt)
    z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=dt)
    i, x0_, r_ = steps, x0, r
    if shard is not None:
        i, x0_, z, r_ = steps[shard], x0[shard], z[shard], r[shard]
        y = None if y is None else y[shard]
    nd = x0_.ndim
    alpha, sigma = append_dims(ch.alpha[i].to(dt), nd), append_dims(ch.sigma[i].to(dt), nd)
    x_t = alpha * x0_ + sigma * z
    cond = () if y is None else (y,)
    eps, v = model(x_t, ch.t[i].to(dt), *cond, with_variance=True)
    if v is None:
        raise UserInputError(
            "hybrid_loss needs a model with a learned variance (learn_variance=True)"
        )
    eps, v = eps.to(dt), v.to(dt)
    red = REDUCTIONS[reduce]
    simple = red((eps - z) ** 2)  # Eq. (14) [Ho20]

    # L_vlb with the mean stopped: x0_hat from eps.detach(), so only v gets this gradient.
    x0_hat = (x_t - sigma * eps.detach()) / alpha
    var = torch.exp(log_variance_from_v(v, ch.beta[i], ch.beta_tilde_clipped[i]))  # Eq. (15)
    is_first = append_dims(i == 0, nd)
    # t >= 2: KL(q(x_{t-1} | x_t, x0) || p_theta); mu~ - mu_theta = c_x0 (x0 - x0_hat). Step 0's
    # beta~ = 0 is swapped for 1 so that its unused KL stays finite (NaN-free gradients).
    beta_tilde = append_dims(ch.beta_tilde[i].to(dt), nd)
    kl = gaussian_kl(append_dims(ch.c_x0[i].to(dt), nd) * (x0_ - x0_hat),
                     torch.where(is_first, torch.ones_like(beta_tilde), beta_tilde), 0.0, var)
    # t = 1: the decoder -log p_theta(x0 | x_1), whose mean is x0_hat.
    if discrete_data:
        nll = -discretized_gaussian_log_likelihood(x0_, x0_hat, var)
    else:
        nll = 0.5 * (torch.log(2 * math.pi * var) + (x0_ - x0_hat) ** 2 / var)
    vlb = red(torch.where(is_first, nll, kl))
    loss = r_ * (simple + vlb_weight * n * vlb)  # Eq. (16) [Nichol21]
    return HybridLoss(loss=loss, simple=simple, vlb=vlb, steps=steps, weight=r_)
