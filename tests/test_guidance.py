"""Label wrappers: conditional models and classifier-free guidance ([Ho22] Eq. 6), checked
against the exact per-class scores of a Gaussian mixture."""

from __future__ import annotations

import math

import pytest
import torch

from sde_gen.analytic import GaussianMixture
from sde_gen.guidance import classifier_free, conditional
from sde_gen.nets.mlp import MLP
from sde_gen.parameterization import ScoreModel
from sde_gen.sampling import sample
from tests.helpers import EPS_SOLVERS, F64, SDES, mixture, seeded, user_error


def _inputs(n: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 2, generator=seeded(seed), dtype=F64)
    return x, torch.full((n,), 0.37, dtype=F64)


class Spy:
    """An exact class-conditional model that records the batch size of every call."""

    def __init__(self, sde) -> None:
        self.exact = mixture().class_conditional_model(sde)
        self.num_classes = self.exact.num_classes
        self.batches: list[int] = []

    def __call__(self, x, t, y=None):
        self.batches.append(x.shape[0])
        return self.exact(x, t, y)


@pytest.mark.parametrize("name", list(SDES))
def test_scale_zero_is_the_conditional_model_exactly(name: str) -> None:
    sde = SDES[name]()
    model = mixture().class_conditional_model(sde)
    x, t = _inputs()
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2, 1, 0])
    for labels in (1, y):
        cond = conditional(model, labels)(x, t)
        torch.testing.assert_close(classifier_free(model, labels, 0.0)(x, t), cond, rtol=0, atol=0)
        torch.testing.assert_close(cond, model(x, t, torch.as_tensor(labels).expand(9)),
                                   rtol=0, atol=0)
    # the null label (or None) is the unconditional mixture
    torch.testing.assert_close(conditional(model, None)(x, t), mixture().eps(x, t, sde),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("w", [0.5, 1.0, 4.0])
def test_guided_eps_is_the_formula(w: float) -> None:
    sde = SDES["vp"]()
    model = mixture().class_conditional_model(sde)
    x, t = _inputs()
    y = torch.tensor([2, 0, 1, 1, 0, 2, 0, 1, 2])
    expected = (1 + w) * model(x, t, y) - w * model(x, t, None)  # Eq. (6) [Ho22]
    torch.testing.assert_close(classifier_free(model, y, w)(x, t), expected, rtol=0, atol=1e-12)


def test_batched_call_equals_two_calls_on_a_network() -> None:
    """One 2B-row call of a real class-conditional network gives both terms of the formula."""
    sde = SDES["vp"]()
    torch.manual_seed(0)
    net = MLP(2, width=32, depth=2, emb_dim=16, num_classes=3).double()
    for p in net.parameters():  # the output layer starts at zero: give it weights
        torch.nn.init.normal_(p, std=0.3, generator=seeded(1))
    model = ScoreModel(net, sde)
    x, t = _inputs(6)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    with torch.no_grad():
        expected = 3.0 * model(x, t, y) - 2.0 * model(x, t, None)
        got = classifier_free(model, y, 2.0)(x, t)
    assert float(expected.abs().max()) > 1e-3  # a non-trivial output
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("solver", list(EPS_SOLVERS))
def test_one_nfe_per_batched_call_in_every_solver(solver: str) -> None:
    sde = SDES["vp"]()
    spy = Spy(sde)
    res = sample(classifier_free(spy, 1, 2.0), sde, (8, 2), solver, steps=4, generator=seeded(2),
                 dtype=F64)
    assert res.nfe == len(spy.batches) > 0
    assert set(spy.batches) == {16}  # cat(x, x): conditional and null rows in one call
    assert torch.isfinite(res.x).all()
    spy.batches.clear()
    res = sample(classifier_free(spy, 1, 0.0), sde, (8, 2), solver, steps=4, generator=seeded(2),
                 dtype=F64)
    assert set(spy.batches) == {8} and res.nfe == len(spy.batches)  # w = 0: the plain model


def _exact_output_law(sde, component):
    """Mean and covariance of Tweedie's denoise of x_eps ~ q_eps for a Gaussian component: the
    exact law of sample()'s output when the PF-ODE is solved exactly to eps."""
    t = torch.tensor([sde.default_t_min], dtype=F64)
    alpha, sigma = (float(c) for c in sde.marginal_coeffs(t))
    s = component.covs[0]
    c = alpha**2 * s + sigma**2 * torch.eye(2, dtype=F64)
    return component.means[0], alpha**2 * s @ torch.linalg.solve(c, s)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_scale_zero_with_exact_scores_reproduces_each_class(name: str) -> None:
    """w = 0, exact per-class scores and a tight PF-ODE solve: each class's samples follow that
    class's exact law. Whitened by it, the samples are N(0, I): the tolerances are 5 standard
    errors of the mean (1/sqrt(n)) and of the covariance entries (sqrt(2/n))."""
    sde = SDES[name]()
    gm = mixture()
    model = gm.class_conditional_model(sde)
    n = 6000
    y = torch.arange(n) % 3
    res = sample(classifier_free(model, y, 0.0), sde, (n, 2), "ode", generator=seeded(3),
                 dtype=F64, rtol=1e-7, atol=1e-7)
    per = n // 3
    tol_mean, tol_cov = 5 / math.sqrt(per), 5 * math.sqrt(2 / per)
    for k in range(3):
        mean, cov = _exact_output_law(sde, gm.component(k))
        chol = torch.linalg.cholesky(cov)

        def whitened(x, chol=chol, mean=mean):
            return torch.linalg.solve_triangular(chol, (x - mean).T, upper=False).T

        z = whitened(res.x[y == k])
        assert float(z.mean(0).abs().max()) < tol_mean, (k, z.mean(0))
        assert float((torch.cov(z.T) - torch.eye(2, dtype=F64)).abs().max()) < tol_cov, k
        # the check has power: another class's samples fail it by far
        other = whitened(res.x[y == (k + 1) % 3])
        assert float(other.mean(0).abs().max()) > 20 * tol_mean


def test_positive_scale_sharpens_the_class() -> None:
    """w > 0 moves samples toward their class: on two overlapping classes, more of them are
    likeliest under their own class than with w = 0 (where the rate is the Bayes rate)."""
    sde = SDES["vp"]()
    gm = GaussianMixture(torch.tensor([[-0.5, 0.0], [0.5, 0.0]], dtype=F64),
                         torch.tensor([0.5, 0.5], dtype=F64))
    model = gm.class_conditional_model(sde)
    y = torch.arange(2000) % 2
    hits = []
    for w in (0.0, 3.0):
        x = sample(classifier_free(model, y, w), sde, (2000, 2), "dpm", steps=20,
                   generator=seeded(4), dtype=F64).x
        lp = torch.stack([gm.component(k).log_prob(x) for k in range(2)], 1)
        hits.append(float((lp.argmax(1) == y).double().mean()))
    bayes = 0.5 * (1 + math.erf(0.5 / math.sqrt(2 * 0.5)))  # P(N(0.5, 0.5) > 0)
    assert abs(hits[0] - bayes) < 0.04 and hits[1] > hits[0] + 0.05, (hits, bayes)


def test_bad_input_gives_one_line_errors() -> None:
    sde = SDES["vp"]()
    model = mixture().class_conditional_model(sde)
    plain = mixture().eps_model(sde)
    x, t = _inputs(4)
    assert "class-conditional" in user_error(lambda: classifier_free(plain, 0, 1.0))
    assert "class-conditional" in user_error(lambda: conditional(plain, 0))
    assert "class-conditional" in user_error(lambda: classifier_free(conditional(model, 0), 0, 1.0))
    assert "outside" in user_error(lambda: conditional(model, 4))
    assert "outside" in user_error(lambda: conditional(model, torch.tensor([0, -1])))
    assert "null label" in user_error(lambda: classifier_free(model, 3, 1.0))
    assert "integers" in user_error(lambda: conditional(model, torch.tensor([0.0, 1.0])))
    assert "integers" in user_error(lambda: conditional(model, True))
    assert "shape" in user_error(lambda: conditional(model, torch.zeros(2, 2, dtype=torch.long)))
    for scale in (-0.5, float("nan"), float("inf"), "2", True, None):
        assert "scale" in user_error(lambda scale=scale: classifier_free(model, 0, scale))
    guided = classifier_free(model, torch.tensor([0, 1, 2]), 1.0)
    assert "3 class labels for a batch of 4" in user_error(lambda: guided(x, t))


def test_learned_variance_passes_through_the_wrappers() -> None:
    """variance='learned' reads the wrapped network's (eps, v): guided eps with the conditional
    half's v, from the same single 2B-row call."""
    sde = SDES["vp"](N=100)
    torch.manual_seed(0)
    net = MLP(2, width=16, depth=1, emb_dim=8, num_classes=2, out_dim=4).double()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3, generator=seeded(5))
    model = ScoreModel(net, sde, learn_variance=True)
    x, t = _inputs(4)
    y = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        eps_c, v_c = model.eps_and_variance(x, t, y)
        eps_u, _ = model.eps_and_variance(x, t, None)
        eps, v = classifier_free(model, y, 1.5).eps_and_variance(x, t)
        torch.testing.assert_close(eps, 2.5 * eps_c - 1.5 * eps_u, rtol=0, atol=1e-12)
        torch.testing.assert_close(v, v_c, rtol=0, atol=1e-12)
        for wrapped in (conditional(model, 1), classifier_free(model, 1, 1.5)):
            res = sample(wrapped, sde, (4, 2), "ancestral", steps=10, variance="learned",
                         generator=seeded(6), dtype=F64)
            assert res.nfe == 11 and torch.isfinite(res.x).all()


def test_guided_model_drives_impute() -> None:
    """A guided model is an ordinary eps-model: imputation with it keeps the known part."""
    from sde_gen.sampling import impute

    sde = SDES["vp"]()
    model = classifier_free(mixture().class_conditional_model(sde), 2, 1.0)
    x_known = torch.tensor([[0.3, float("nan")]] * 4, dtype=F64)
    res = impute(model, sde, x_known, torch.tensor([1, 0]), steps=10, generator=seeded(7))
    assert torch.equal(res.x[:, 0], x_known[:, 0]) and torch.isfinite(res.x).all()
