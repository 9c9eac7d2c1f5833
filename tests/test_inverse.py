"""Inverse problems with a linear measurement: operators and their adjoints, the exact posterior
of a Gaussian mixture against brute force, and the refusals."""

from __future__ import annotations

import pytest
import torch

from sde_gen.analytic import GaussianMixture
from sde_gen.errors import UserInputError
from sde_gen.inverse import (
    Blur,
    Colorize,
    Downsample,
    FunctionOperator,
    Mask,
    Projection,
    check_linear,
)
from sde_gen.sampling.colorize import to_decorrelated

torch.set_num_threads(1)

G64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


OPERATORS = {
    "mask-vector": (lambda: Mask(torch.tensor([1, 0, 1, 1, 0])), (5,)),
    "mask-image": (lambda: Mask(torch.rand(2, 4, 4, generator=_gen(1)) > 0.5), (2, 4, 4)),
    "down2": (lambda: Downsample(2), (3, 8, 6)),
    "down4": (lambda: Downsample(4), (1, 8, 8)),
    "blur": (lambda: Blur(1.5), (2, 9, 7)),
    "blur-small-kernel": (lambda: Blur(0.8, size=3), (1, 5, 5)),
    "projection-vector": (lambda: Projection(torch.randn(3, 6, generator=_gen(2))), (6,)),
    "projection-image": (lambda: Projection(torch.randn(4, 12, generator=_gen(3)),
                                            shape=(3, 2, 2)), (3, 2, 2)),
    "colorize": (lambda: Colorize(), (3, 4, 5)),
    "function-autograd-adjoint": (lambda: FunctionOperator(lambda x: x[:, :2] - 2 * x[:, 2:],
                                                           (4,)), (4,)),
}


@pytest.mark.parametrize("name", list(OPERATORS))
def test_adjoint_identity(name):
    op, shape = OPERATORS[name][0](), OPERATORS[name][1]
    g = _gen(4)
    x = torch.randn(3, *shape, generator=g, dtype=G64)
    ax = op(x)
    y = torch.randn(ax.shape, generator=g, dtype=G64)
    aty = op.adjoint(y)
    assert aty.shape == x.shape
    lhs, rhs = (ax * y).flatten(1).sum(1), (x * aty).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)  # float64 round-off
    check_linear(op, shape)  # the probe passes every ready operator
    mat = op.matrix(shape)  # the dense matrix is the same map
    torch.testing.assert_close(x.flatten(1) @ mat.T, ax.flatten(1), rtol=1e-12, atol=1e-12)


def test_operators_compute_what_they_say():
    x = torch.arange(16.0, dtype=G64).reshape(1, 1, 4, 4)
    torch.testing.assert_close(Downsample(2)(x)[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]],
                                                                    dtype=G64))
    rgb = torch.randn(2, 3, 3, 3, generator=_gen(5), dtype=G64)
    # the grey value is the first axis of the colour basis over sqrt(3)
    torch.testing.assert_close(Colorize()(rgb) * 3**0.5, to_decorrelated(rgb)[:, :1])
    flat = torch.ones(1, 1, 9, 9, dtype=G64)
    blurred = Blur(1.0, size=5)(flat)
    assert abs(float(blurred[0, 0, 4, 4]) - 1) < 1e-12  # normalized kernel away from the border
    assert float(blurred[0, 0, 0, 0]) < 0.6  # zero padding darkens the corner
    m = Mask(torch.tensor([[1, 0], [0, 1]]))
    torch.testing.assert_close(m(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])),
                               torch.tensor([[1.0, 4.0]]))


def _mixture_2d() -> GaussianMixture:
    return GaussianMixture(torch.tensor([[-1.5, 0.5], [1.0, -1.0], [0.5, 2.0]]),
                           torch.tensor([[[0.5, 0.3], [0.3, 0.4]], [[0.2, -0.1], [-0.1, 0.6]],
                                         [[0.3, 0.0], [0.0, 0.3]]]),
                           torch.tensor([0.5, 0.3, 0.2]))


@pytest.mark.parametrize("rows", [1, 2])
def test_posterior_matches_importance_sampling(rows):
    gmm = _mixture_2d()
    a = torch.tensor([[1.0, 0.7], [-0.4, 1.0]], dtype=G64)[:rows]
    s = 0.4
    y = torch.tensor([0.3, 0.8], dtype=G64)[:rows]
    post = gmm.posterior(a, y, s)
    n = 400_000
    x = gmm.sample(n, generator=_gen(6), dtype=G64)
    logw = -0.5 * ((x @ a.T - y) ** 2).sum(1) / s**2  # the likelihood N(y; A x, s^2 I)
    w = torch.softmax(logw, 0)
    ess = float(1 / (w**2).sum())
    assert ess > 20_000  # enough for the tolerances below
    mean_is = w @ x
    cov_is = (w[:, None] * (x - mean_is)).T @ (x - mean_is)
    # Monte Carlo error of a self-normalized estimate ~ sd / sqrt(ESS) (sd < 1.2 here): 5 s.e.
    tol = 5 * 1.2 / ess**0.5
    torch.testing.assert_close(post.mean(), mean_is, rtol=0, atol=tol)
    torch.testing.assert_close(post.covariance(), cov_is, rtol=0, atol=2 * tol)
    # and its draws agree with the closed-form moments
    xs = post.sample(200_000, generator=_gen(7), dtype=G64)
    torch.testing.assert_close(xs.mean(0), post.mean(), rtol=0, atol=0.01)


def test_posterior_of_a_noiseless_mask_is_the_conditional():
    gmm = GaussianMixture(torch.tensor([[0.0, 1.0, -1.0], [1.0, -1.0, 0.5]]),
                          torch.tensor([[[1.0, 0.4, 0.2], [0.4, 0.8, -0.1], [0.2, -0.1, 0.5]],
                                        [[0.6, 0.0, 0.1], [0.0, 0.9, 0.3], [0.1, 0.3, 0.7]]]))
    known = torch.tensor([True, False, True])
    values = torch.tensor([0.4, 0.0, -0.2], dtype=G64)
    cond = gmm.conditional(known, values)
    op = Mask(known)
    y = op(values[None])[0]
    for a, yy in ((op.matrix((3,)), y),
                  # the same measurement with a repeated row: rank-deficient C at s = 0
                  (torch.cat([op.matrix((3,)), op.matrix((3,))[:1]]), torch.cat([y, y[:1]]))):
        post = gmm.posterior(a, yy, 0.0)
        torch.testing.assert_close(post.weights, cond.weights, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(post.means[:, 1], cond.means[:, 0], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(post.covs[:, 1:2, 1:2], cond.covs, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(post.means[:, known], y.expand(2, 2), rtol=0, atol=1e-10)
        assert float(post.covs[:, known][:, :, known].abs().max()) < 1e-10  # pinned
        draws = post.sample(5, generator=_gen(8), dtype=G64)
        torch.testing.assert_close(draws[:, known], y.expand(5, 2), rtol=0, atol=1e-6)


def test_posterior_refusals():
    gmm = _mixture_2d()
    a = torch.tensor([[1.0, 0.0]], dtype=G64)
    y = torch.tensor([0.2], dtype=G64)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(UserInputError, match="noise_std"):
            gmm.posterior(a, y, bad)
    with pytest.raises(UserInputError, match=r"op_matrix must be \(m, 2\)"):
        gmm.posterior(torch.ones(1, 3), y, 0.1)
    with pytest.raises(UserInputError, match="y must be 1"):
        gmm.posterior(a, torch.zeros(2), 0.1)
    with pytest.raises(UserInputError, match="not in the range"):  # two readings of one entry
        gmm.posterior(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0.2, 0.5]), 0.0)


def test_operator_refusals():
    with pytest.raises(UserInputError, match="divisible by 2"):
        Downsample(2)(torch.zeros(1, 1, 5, 4))
    with pytest.raises(UserInputError, match=r"images \(C, H, W\)"):
        Blur(1.0)(torch.zeros(2, 5))
    with pytest.raises(UserInputError, match="mask's shape"):
        Mask(torch.tensor([1, 0, 1]))(torch.zeros(2, 4))
    with pytest.raises(UserInputError, match=r"adjoint takes \(B, 3\)"):
        Projection(torch.ones(3, 4)).adjoint(torch.zeros(2, 4))
    with pytest.raises(UserInputError, match="RGB"):
        Colorize()(torch.zeros(1, 1, 4, 4))
    with pytest.raises(UserInputError, match="0/1"):
        Mask(torch.tensor([0.5, 1.0]))
    with pytest.raises(UserInputError, match="factor"):
        Downsample(0)
    with pytest.raises(UserInputError, match="odd"):
        Blur(1.0, size=4)
    with pytest.raises(UserInputError, match="finite floating"):
        Projection(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(UserInputError, match="floating"):
        Downsample(2)(torch.zeros(1, 1, 4, 4, dtype=torch.long))


def test_linearity_probe_refuses_what_is_not_linear():
    with pytest.raises(UserInputError, match="not linear"):
        check_linear(FunctionOperator(lambda x: x**2, (3,)), (3,))
    with pytest.raises(UserInputError, match="not linear"):
        check_linear(FunctionOperator(lambda x: x + 1, (3,)), (3,))
    with pytest.raises(UserInputError, match="adjoint is not its transpose"):
        check_linear(FunctionOperator(lambda x: 2 * x, (3,), adjoint=lambda y: y), (3,))
    with pytest.raises(UserInputError, match="must be a sde_gen.inverse operator"):
        check_linear(lambda x: x, (3,))
    with pytest.raises(UserInputError, match="divisible"):
        check_linear(Downsample(4), (1, 6, 6))
