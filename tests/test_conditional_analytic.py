"""The exact conditionals of a Gaussian mixture: given some coordinates, and given the class."""

from __future__ import annotations

import pytest
import torch

from sde_gen.analytic import GaussianMixture
from sde_gen.errors import UserInputError
from tests.helpers import F64, SDES, seeded


def _mixture(d: int = 5, k: int = 3, seed: int = 0) -> GaussianMixture:
    g = seeded(seed)
    a = torch.randn(k, d, d, generator=g, dtype=F64)
    covs = a @ a.transpose(1, 2) / d + 0.05 * torch.eye(d, dtype=F64)
    w = torch.rand(k, generator=g, dtype=F64) + 0.2
    return GaussianMixture(2 * torch.randn(k, d, generator=g, dtype=F64), covs, w)


@pytest.mark.parametrize("known", [[1, 0, 0, 1, 0], [0, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
def test_conditional_density_is_joint_over_marginal(known) -> None:
    """log p(a, b) - log p(b | a) is the same number for every b: log p(a), the known part's
    marginal, itself a mixture of the components' marginals."""
    gm = _mixture()
    known = torch.tensor(known, dtype=torch.bool)
    a = torch.randn(int(known.sum()), generator=seeded(1), dtype=F64)
    cond = gm.conditional(known, a)
    b = torch.randn(7, int((~known).sum()), generator=seeded(2), dtype=F64)
    x = torch.zeros(7, 5, dtype=F64)
    x[:, known], x[:, ~known] = a, b
    diff = gm.log_prob(x) - cond.log_prob(b)
    idx = known.nonzero().squeeze(1)
    marginal = GaussianMixture(gm.means[:, idx], gm.covs[:, idx][:, :, idx], gm.weights)
    torch.testing.assert_close(diff, marginal.log_prob(a[None]).expand(7), rtol=0, atol=1e-10)


def test_conditional_moments_match_monte_carlo() -> None:
    """Against rejection-free Monte Carlo on a 2-D mixture: p(x2 | x1 in a thin slab)."""
    gm = _mixture(d=2, k=3, seed=4)
    x = gm.sample(2_000_000, generator=seeded(5), dtype=F64)
    a = float(gm.mean()[0])
    slab = (x[:, 0] - a).abs() < 0.01
    cond = gm.conditional(torch.tensor([True, False]), torch.tensor([a], dtype=F64))
    mc = x[slab, 1]
    assert slab.sum() > 2000
    tol = 4 * float(mc.std()) / slab.sum() ** 0.5 + 5e-3
    assert abs(float(mc.mean()) - float(cond.mean()[0])) < tol
    assert abs(float(mc.var()) / float(cond.covariance()[0, 0]) - 1) < 0.1


def test_conditional_of_a_gaussian_is_the_textbook_formula() -> None:
    cov = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=F64)
    g = GaussianMixture.gaussian(torch.tensor([1.0, -1.0], dtype=F64), cov)
    c = g.conditional(torch.tensor([True, False]), torch.tensor([2.0, 99.0], dtype=F64))
    torch.testing.assert_close(c.means[0],
                               torch.tensor([-1.0 + 0.6 / 2.0 * (2.0 - 1.0)], dtype=F64))
    torch.testing.assert_close(c.covs[0], torch.tensor([[1.0 - 0.36 / 2.0]], dtype=F64))


def test_labels_are_component_indices_and_do_not_change_the_draws() -> None:
    gm = _mixture(d=3)
    x = gm.sample(500, generator=seeded(6), dtype=F64)
    x2, k = gm.sample(500, generator=seeded(6), dtype=F64, return_labels=True)
    torch.testing.assert_close(x, x2, rtol=0, atol=0)
    assert k.dtype == torch.int64 and set(k.tolist()) <= {0, 1, 2}
    # each point is likeliest under (or at least plausible for) its own component
    comp_lp = torch.stack([gm.component(j).log_prob(x) for j in range(3)], 1)
    assert (comp_lp.argmax(1) == k).float().mean() > 0.8


@pytest.mark.parametrize("name", list(SDES))
def test_exact_class_model(name: str) -> None:
    sde = SDES[name]()
    gm = _mixture(d=3)
    model = gm.class_conditional_model(sde)
    x = torch.randn(6, 3, generator=seeded(7), dtype=F64)
    t = torch.full((6,), 0.4, dtype=F64)
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    out = model(x, t, y)
    for i in range(6):
        ref = gm if y[i] == 3 else gm.component(int(y[i]))
        torch.testing.assert_close(out[i], ref.eps(x[i:i + 1], t[i:i + 1], sde)[0])
    torch.testing.assert_close(model(x, t), gm.eps(x, t, sde))


def test_bad_conditioning_raises() -> None:
    gm = _mixture(d=3)
    with pytest.raises(UserInputError, match="some but not all"):
        gm.conditional(torch.ones(3, dtype=torch.bool), torch.zeros(3))
    with pytest.raises(UserInputError, match="some but not all"):
        gm.conditional(torch.zeros(3, dtype=torch.bool), torch.zeros(3))
    with pytest.raises(UserInputError, match="entries"):
        gm.conditional(torch.tensor([True, False, False]), torch.zeros(2))
    with pytest.raises(UserInputError, match="outside"):
        gm.component(3)
