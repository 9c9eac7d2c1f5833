"""Gaussian and Gaussian-mixture data with exact perturbed marginals under every SDE here.

Under any SDE of this package ``x_t | x0 ~ N(alpha_t x0, sigma_t^2 I)``, so a mixture
``sum_k w_k N(mu_k, S_k)`` stays a mixture:
``q_t = sum_k w_k N(alpha_t mu_k, alpha_t^2 S_k + sigma_t^2 I)``.
Its log-density, score, eps (``-sigma_t score``) and denoiser are closed-form. Use it as an oracle:
``GaussianMixture.eps_model(sde)`` is a perfect ``model(x, t)`` to drive any sampler, and
``log_prob_t`` is the exact density a likelihood method should reproduce.

Refs: [Song21] Eq. (7), (29)-(30); [Karras22] Sec. 2 (ideal denoiser).
"""

from __future__ import annotations

import math

import torch

from .errors import UserInputError
from .pf_ode import odeint_between, probability_flow
from .sde import SDE


class GaussianMixture:
    """A mixture of K Gaussians in D dimensions with full, diagonal or isotropic covariances.

    Args:
        means: ``(K, D)``.
        covs: ``(K, D, D)`` full, ``(K, D)`` diagonal, or ``(K,)`` isotropic variances.
        weights: ``(K,)`` positive, normalized here; uniform if omitted.
    """

    def __init__(
        self,
        means: torch.Tensor,
        covs: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise UserInputError(f"means must be (K, D), got {tuple(means.shape)}")
        k, d = means.shape
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.shape == (k,):
            covs = covs[:, None, None] * torch.eye(d, dtype=torch.float64)
        elif covs.shape == (k, d):
            covs = torch.diag_embed(covs)
        elif covs.shape != (k, d, d):
            raise UserInputError(f"covs must be (K,), (K, D) or (K, D, D) with K={k}, D={d}")
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else (
            torch.as_tensor(weights, dtype=torch.float64))
        if weights.shape != (k,) or (weights <= 0).any():
            raise UserInputError("weights must be K positive numbers")
        self.means, self.covs, self.weights = means, covs, weights / weights.sum()
        self.chol0 = torch.linalg.cholesky(covs)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @classmethod
    def gaussian(cls, mean: torch.Tensor, cov: torch.Tensor) -> "GaussianMixture":
        """A single Gaussian ``N(mean, cov)``; ``cov`` full ``(D, D)``, diagonal ``(D,)`` or
        scalar."""
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        return cls(mean, cov.reshape(1) if cov.ndim == 0 else cov[None])

    def mean(self) -> torch.Tensor:
        """Mixture mean ``(D,)``."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Mixture covariance ``(D, D)``."""
        m = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covs + self.means[:, :, None]
                              * self.means[:, None, :])
        return second - torch.outer(m, m)

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def sample(
        self, n: int, *, generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32, return_labels: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Exact samples ``(n, D)`` from the data distribution; with ``return_labels`` also the
        component index of each, ``(n,)`` int64 (the same draws either way)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = (self.means[k] + torch.einsum("nij,nj->ni", self.chol0[k], z)).to(dtype)
        return (x, k) if return_labels else x

    def component(self, k: int) -> "GaussianMixture":
        """Component ``k`` alone: the exact class-conditional law when the label is the index."""
        if not 0 <= int(k) < self.num_components:
            raise UserInputError(f"component {k} is outside 0..{self.num_components - 1}")
        return GaussianMixture(self.means[k:k + 1], self.covs[k:k + 1])

    def conditional(self, known: torch.Tensor, values: torch.Tensor) -> "GaussianMixture":
        """The exact law of the unknown coordinates given ``x[known] = values``: a mixture.

        For ``x = (a, b)`` with ``a`` known, component ``k`` gives ``b | a ~ N(mu_b + S_ba S_aa^-1
        (a - mu_a), S_bb - S_ba S_aa^-1 S_ab)`` and its weight becomes ``w_k N(a; mu_a, S_aa)``
        renormalized ([Bishop06] Eq. (2.81)-(2.82)).

        Args:
            known: ``(D,)`` bool mask, true where the coordinate is observed (some, not all).
            values: the observed coordinates, ``(D,)`` (entries where ``known`` is false are
                ignored) or ``(n_known,)``.

        Returns:
            A mixture over the ``D - n_known`` unknown coordinates, in their original order.
        """
        known = torch.as_tensor(known, dtype=torch.bool).reshape(-1)
        if known.shape != (self.dim,) or bool(known.all()) or not bool(known.any()):
            raise UserInputError(f"known must be a ({self.dim},) mask with some but not all true")
        values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        a = values[known] if values.shape == (self.dim,) else values
        if a.shape != (int(known.sum()),):
            raise UserInputError(f"values must have {self.dim} or {int(known.sum())} entries, "
                                 f"got {tuple(values.shape)}")
        ia, ib = known.nonzero().squeeze(1), (~known).nonzero().squeeze(1)
        s_aa = self.covs[:, ia][:, :, ia]
        s_ba = self.covs[:, ib][:, :, ia]
        s_bb = self.covs[:, ib][:, :, ib]
        chol = torch.linalg.cholesky(s_aa)
        diff = (a[None] - self.means[:, ia]).unsqueeze(-1)  # (K, A, 1)
        gain = torch.cholesky_solve(s_ba.transpose(1, 2), chol).transpose(1, 2)  # S_ba S_aa^-1
        means = self.means[:, ib] + (gain @ diff).squeeze(-1)
        covs = s_bb - gain @ s_ba.transpose(1, 2)
        white = torch.linalg.solve_triangular(chol, diff, upper=False).squeeze(-1)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        log_w = torch.log(self.weights) - 0.5 * (logdet + white.pow(2).sum(-1))
        weights = torch.softmax(log_w, dim=0)
        keep = weights > 0  # components the observation rules out entirely
        covs = 0.5 * (covs + covs.transpose(1, 2))
        return GaussianMixture(means[keep], covs[keep], weights[keep])

    def posterior(self, op_matrix: torch.Tensor, y: torch.Tensor, noise_std: float,
                  *, rcond: float = 1e-10) -> "GaussianMixture":
        """The exact posterior ``p(x0 | y)`` for ``y = A x0 + s z``, ``z ~ N(0, I)``: a mixture.

        Component ``k`` gives the Gaussian posterior with ``C_k = A S_k A^T + s^2 I``,
        ``mu_k + S_k A^T C_k^+ (y - A mu_k)`` and ``S_k - S_k A^T C_k^+ A S_k``, reweighted by its
        evidence ``w_k N(y; A mu_k, C_k)`` ([Bishop06] Eq. (2.113)-(2.117)). The inverse is
        rank-aware (eigendecomposition of ``C_k``, eigenvalues below ``rcond`` times the largest
        dropped): with ``s = 0`` and rank-deficient ``A`` (repeated or dependent rows) the
        evidence is the density on the range of ``A``, the same subspace for every component, so
        the weights stay comparable. With ``s = 0`` the posterior covariances are singular (the
        measured directions are fixed): a :class:`SingularGaussianMixture`.

        Args:
            op_matrix: ``(m, D)`` (e.g. :meth:`sde_gen.inverse.LinearOperator.matrix`).
            y: the measurement, ``(m,)``.
            noise_std: ``s >= 0``.

        Raises:
            UserInputError: bad shapes, ``s`` negative or NaN, or (``s = 0``) a ``y`` outside the
                range of ``A``.
        """
        a = torch.as_tensor(op_matrix, dtype=torch.float64)
        if a.ndim != 2 or a.shape[1] != self.dim:
            raise UserInputError(f"op_matrix must be (m, {self.dim}), got {tuple(a.shape)}")
        y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
        if y.shape != (a.shape[0],) or not bool(torch.isfinite(y).all()):
            raise UserInputError(f"y must be {a.shape[0]} finite values, got {tuple(y.shape)}")
        s = float(noise_std)
        if not math.isfinite(s) or s < 0:
            raise UserInputError(f"noise_std must be a finite number >= 0, got {noise_std}")
        sa = self.covs @ a.T  # S_k A^T, (K, D, m)
        c = a @ sa + s**2 * torch.eye(a.shape[0], dtype=torch.float64)  # (K, m, m)
        evals, evecs = torch.linalg.eigh(0.5 * (c + c.transpose(1, 2)))
        keep = evals > rcond * evals[:, -1:].clamp_min(1e-300)
        inv = torch.where(keep, 1 / evals.clamp_min(1e-300), 0.0)
        diff = y[None] - self.means @ a.T  # (K, m)
        white = torch.einsum("kmr,km->kr", evecs, diff)  # coordinates in C_k's eigenbasis
        outside = (white.pow(2) * (~keep)).sum(-1).sqrt()
        if bool((outside > 1e-6 * (1 + diff.norm(dim=-1))).all()):
            raise UserInputError("y is not in the range of the operator: impossible with "
                                 "noise_std = 0")
        rank = keep.sum(-1)
        log_ev = -0.5 * (rank * math.log(2 * math.pi) + torch.where(keep, evals.log(), 0.0).sum(-1)
                         + (white.pow(2) * inv).sum(-1))
        log_ev = torch.where(outside > 1e-6 * (1 + diff.norm(dim=-1)), -math.inf, log_ev)
        c_pinv = torch.einsum("kir,kr,kjr->kij", evecs, inv, evecs)
        gain = sa @ c_pinv  # S_k A^T C_k^+, (K, D, m)
        means = self.means + (gain @ diff[..., None]).squeeze(-1)
        covs = self.covs - gain @ sa.transpose(1, 2)
        weights = torch.softmax(torch.log(self.weights) + log_ev, dim=0)
        on = weights > 0
        covs = 0.5 * (covs + covs.transpose(1, 2))[on]
        if s > 0:
            return GaussianMixture(means[on], covs, weights[on])
        return SingularGaussianMixture(means[on], covs, weights[on])

    # -- perturbed marginals ----------------------------------------------------------------------
    def _components_t(
        self, sde: SDE, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Means ``(B, K, D)``, Cholesky factors ``(B, K, D, D)`` and ``(alpha, sigma)`` at
        time t."""
        t = t.to(torch.float64)
        if t.numel() > 1 and bool((t == t[0]).all()):  # one time for the batch: factor once
            means, chol, alpha, sigma = self._components_t(sde, t[:1])
            b = t.shape[0]
            return (means.expand(b, *means.shape[1:]), chol.expand(b, *chol.shape[1:]),
                    alpha.expand(b), sigma.expand(b))
        alpha_t, sigma_t = (c.to(torch.float64) for c in sde.marginal_coeffs(t))
        eye = torch.eye(self.dim, dtype=torch.float64)
        a2 = (alpha_t**2)[:, None, None, None]
        cov_t = a2 * self.covs[None] + (sigma_t**2)[:, None, None, None] * eye
        means_t = alpha_t[:, None, None] * self.means[None]
        return means_t, torch.linalg.cholesky(cov_t), alpha_t, sigma_t

    def _log_components(self, x: torch.Tensor, means: torch.Tensor, chol: torch.Tensor):
        diff = (x.to(torch.float64)[:, None, :] - means).unsqueeze(-1)  # (B, K, D, 1)
        white = torch.linalg.solve_triangular(chol, diff, upper=False)
        maha = white.squeeze(-1).pow(2).sum(-1)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        log_norm = -0.5 * (self.dim * math.log(2 * math.pi) + logdet + maha)
        return torch.log(self.weights) + log_norm, diff

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log q_0(x)`` in nats. Shapes: ``(B, D) -> (B,)`` (float64)."""
        chol = self.chol0.expand(x.shape[0], *self.chol0.shape)
        log_comp, _ = self._log_components(x, self.means[None], chol)
        return torch.logsumexp(log_comp, dim=1)

    def log_prob_t(self, x: torch.Tensor, t: torch.Tensor, sde: SDE) -> torch.Tensor:
        """Exact ``log q_t(x)`` of the perturbed marginal.

        Shapes: ``x (B, D)``, ``t (B,)`` -> ``(B,)``."""
        means, chol, _, _ = self._components_t(sde, t)
        log_comp, _ = self._log_components(x, means, chol)
        return torch.logsumexp(log_comp, dim=1)

    def score(self, x: torch.Tensor, t: torch.Tensor, sde: SDE) -> torch.Tensor:
        """Exact ``grad_x log q_t(x)`` (float64): ``sum_k r_k(x) C_k^{-1} (m_k - x)``."""
        means, chol, _, _ = self._components_t(sde, t)
        log_comp, diff = self._log_components(x, means, chol)
        resp = torch.softmax(log_comp, dim=1)  # posterior responsibilities r_k(x)
        prec_diff = torch.cholesky_solve(diff, chol).squeeze(-1)  # C_k^{-1} (x - m_k)
        return -(resp[..., None] * prec_diff).sum(1)

    def eps(self, x: torch.Tensor, t: torch.Tensor, sde: SDE) -> torch.Tensor:
        """Exact ``eps(x, t) = -sigma_t score`` (float64)."""
        sigma_t = sde.marginal_coeffs(t.to(torch.float64))[1].to(torch.float64)
        return -sigma_t[:, None] * self.score(x, t, sde)

    def eps_and_x0(self, x: torch.Tensor, t: torch.Tensor, sde: SDE
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact ``(eps, E[x0 | x_t = x])`` (float64), finite wherever ``C_k = alpha^2 S_k +
        sigma^2 I`` is invertible, ``alpha_t = 0`` included: with responsibilities ``r_k`` and
        ``d_k = C_k^{-1} (x - alpha mu_k)``, ``eps = sigma sum_k r_k d_k`` and
        ``x0 = sum_k r_k (mu_k + alpha S_k d_k)`` ([Bishop06] Eq. (2.116)).
        """
        means, chol, alpha_t, sigma_t = self._components_t(sde, t)
        log_comp, diff = self._log_components(x, means, chol)
        resp = torch.softmax(log_comp, dim=1)[..., None]  # (B, K, 1)
        prec_diff = torch.cholesky_solve(diff, chol).squeeze(-1)  # (B, K, D)
        eps = sigma_t[:, None] * (resp * prec_diff).sum(1)
        post = self.means[None] + alpha_t[:, None, None] * torch.einsum(
            "kij,bkj->bki", self.covs, prec_diff)
        return eps, (resp * post).sum(1)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, sde: SDE) -> torch.Tensor:
        """Exact ``E[x0 | x_t = x]`` (float64), finite where ``alpha_t = 0`` too."""
        return self.eps_and_x0(x, t, sde)[1]

    def ode_endpoint(
        self, sde: SDE, x_T: torch.Tensor, t_end: float, *, t_start: float | None = None,
        tol: float = 1e-10,
    ) -> torch.Tensor:
        """Exact probability-flow ODE solution from ``x_T`` at ``t_start`` (default T) to ``t_end``.

        Solved in float64 with the exact score by dopri5 at ``rtol = atol = tol``, landing
        exactly on ``t_end``: the reference for deterministic samplers.
        """
        x = x_T.to(torch.float64)
        ts = torch.tensor([sde.T if t_start is None else t_start, t_end], dtype=torch.float64)
        return odeint_between(probability_flow(self.eps_model(sde), sde), x, ts[0], ts[1],
                              method="dopri5", rtol=tol, atol=tol)

    def eps_model(self, sde: SDE) -> "ExactModel":
        """A perfect ``model(x, t) -> eps`` for ``sde`` (returning ``x``'s dtype), which also
        gives its exact x0 (``predict``), as a flow path's ``T`` needs."""
        return ExactModel(self, sde)

    def class_conditional_model(self, sde: SDE) -> "ExactClassModel":
        """A perfect class-conditional eps-model: label ``k`` is component ``k``."""
        return ExactClassModel(self, sde)


class SingularGaussianMixture(GaussianMixture):
    """A mixture whose covariances may be singular (a noiseless :meth:`GaussianMixture.posterior`
    pins the measured directions). ``chol0`` is the symmetric square root ``U sqrt(L) U^T``
    (any ``B`` with ``B B^T = S`` samples exactly), so :meth:`sample`, :meth:`mean` and
    :meth:`covariance` hold, and so do the perturbed marginals at ``t > 0`` (``alpha^2 S +
    sigma^2 I`` is invertible): scores, eps and denoiser. The data density does not exist.
    """

    def __init__(self, means: torch.Tensor, covs: torch.Tensor, weights: torch.Tensor) -> None:
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = weights / weights.sum()
        evals, evecs = torch.linalg.eigh(self.covs)
        self.chol0 = evecs @ torch.diag_embed(evals.clamp_min(0).sqrt()) @ evecs.transpose(1, 2)

    def _refuse(self, what: str) -> UserInputError:
        return UserInputError(f"{what} is undefined for a mixture with singular covariances "
                              f"(a noiseless posterior); sample it, or condition with s > 0")

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise self._refuse("log_prob")

    def conditional(self, known: torch.Tensor, values: torch.Tensor) -> "GaussianMixture":
        raise self._refuse("conditional")

    def posterior(self, op_matrix: torch.Tensor, y: torch.Tensor, noise_std: float,
                  *, rcond: float = 1e-10) -> "GaussianMixture":
        raise self._refuse("posterior")

    def component(self, k: int) -> "GaussianMixture":
        if not 0 <= int(k) < self.num_components:
            raise UserInputError(f"component {k} is outside 0..{self.num_components - 1}")
        return SingularGaussianMixture(self.means[k:k + 1], self.covs[k:k + 1],
                                       torch.ones(1, dtype=torch.float64))


class ExactModel:
    """``model(x, t) -> eps`` of a :class:`GaussianMixture` under ``sde``, exact; ``predict``
    gives ``(eps, x0)`` (:meth:`GaussianMixture.eps_and_x0`), both in ``x``'s dtype."""

    predicts_x0 = True

    def __init__(self, mixture: GaussianMixture, sde: SDE) -> None:
        self.mixture, self.sde = mixture, sde

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.mixture.eps(x, t, self.sde).to(x.dtype)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eps, x0 = self.mixture.eps_and_x0(x, t, self.sde)
        return eps.to(x.dtype), x0.to(x.dtype)


class ExactClassModel:
    """``model(x, t, y=None) -> eps``: the exact eps of component ``y`` of a mixture, or of the
    whole mixture for the null label ``num_classes`` (or ``y=None``), per example.

    The oracle for classifier-free guidance: with the null label it is the unconditional model
    that label dropout trains.
    """

    def __init__(self, mixture: GaussianMixture, sde: SDE) -> None:
        self.mixture, self.sde = mixture, sde
        self.num_classes = mixture.num_components
        self.parts = [mixture.component(k) for k in range(self.num_classes)]

    predicts_x0 = True

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.predict(x, t, y, with_x0=False)[0]

    def predict(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *,
                with_x0: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(eps, x0)`` of each example's component (``x0`` None unless ``with_x0``)."""
        labels = (torch.full((x.shape[0],), self.num_classes, device=x.device) if y is None
                  else torch.as_tensor(y, device=x.device).reshape(-1).expand(x.shape[0]))
        eps = torch.empty_like(x, dtype=torch.float64)
        x0 = torch.empty_like(eps) if with_x0 else None
        for k in torch.unique(labels).tolist():
            rows = labels == k
            part = self.mixture if k == self.num_classes else self.parts[k]
            if with_x0:
                eps[rows], x0[rows] = part.eps_and_x0(x[rows], t[rows], self.sde)
            else:
                eps[rows] = part.eps(x[rows], t[rows], self.sde)
        return eps.to(x.dtype), None if x0 is None else x0.to(x.dtype)
