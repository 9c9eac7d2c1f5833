"""Samplers against the published update equations and the exact-score oracle."""

import inspect
from pathlib import Path

import pytest
import torch

from helpers import DIFFUSION_SDES, EPS_SOLVERS, check_refuses_the_chain, refuses_the_chain, seeded
from sde_gen import VESDE, VPSDE, GaussianMixture
from sde_gen.metrics import sliced_wasserstein
from sde_gen.sampling import SOLVERS, sample, sample_ddim
from sde_gen.sampling.solvers import solver_table
from sde_gen.sde import SDES

F64 = torch.float64


def mixture_2d() -> GaussianMixture:
    return GaussianMixture(torch.tensor([[1.0, 0.5], [-1.5, -0.3], [0.2, 1.8]]),
                           torch.tensor([[0.1, 0.3], [0.5, 0.05], [0.2, 0.2]]),
                           torch.tensor([0.5, 0.3, 0.2]))


def mixture_8d() -> GaussianMixture:
    g = torch.Generator().manual_seed(5)
    a = torch.randn(3, 8, 8, generator=g, dtype=F64) / 3
    return GaussianMixture(1.5 * torch.randn(3, 8, generator=g, dtype=F64),
                           a @ a.transpose(1, 2) + 0.05 * torch.eye(8, dtype=F64),
                           torch.tensor([0.2, 0.5, 0.3]))


class Counter:
    """Counts the calls of an eps-model; with ``x0_fn``, ``predict`` gives that x0 too (as a
    flow path's T needs), counted as one call."""

    def __init__(self, model, x0_fn=None):
        self.model, self.calls, self.x0_fn = model, 0, x0_fn
        self.predicts_x0 = x0_fn is not None

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)

    def predict(self, x, t):
        return self(x, t), self.x0_fn(x, t)


# -- published update equations ------------------------------------------------------------------

def test_ddpm_chain_equals_ho_algorithm_2():
    """The full 1000-step chain equals Alg. 2 of [Ho20], written here from the betas alone."""
    sde, gm = VPSDE(), mixture_2d()
    model = gm.eps_model(sde)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for variance in ("beta", "beta_tilde"):
        res = sample(model, sde, None, "ancestral", x_T=x_T, variance=variance,
                     generator=torch.Generator().manual_seed(1))
        beta = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
        alpha, abar = 1 - beta, torch.cumprod(1 - beta, 0)
        g = torch.Generator().manual_seed(1)
        x = x_T
        for i in range(999, -1, -1):  # DDPM's t = i + 1
            t = torch.full((64,), (i + 1) / 1000, dtype=F64)
            eps = model(x, t)
            mean = (x - beta[i] / torch.sqrt(1 - abar[i]) * eps) / torch.sqrt(alpha[i])
            if i > 0:
                var = beta[i] if variance == "beta" else (1 - abar[i - 1]) / (1 - abar[i]) * beta[i]
                x = mean + torch.sqrt(var) * torch.randn(x.shape, generator=g, dtype=F64)
            else:
                x = mean
        assert res.nfe == 1000
        torch.testing.assert_close(res.x, x, atol=1e-9, rtol=0)  # float64 round-off only


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_step_equals_eq_12(eta):
    sde, gm = VPSDE(), mixture_2d()
    model = gm.eps_model(sde)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=F64), 0)
    i, j = 980, 960  # diffusers' "leading" timesteps for 50 steps
    ts = sde.index_to_time(torch.tensor([i, j]))
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    out, _ = sample_ddim(model, sde, x, ts, eta=eta, discrete=True,
                         generator=torch.Generator().manual_seed(3))
    eps = model(x, torch.full((32,), (i + 1) / 1000, dtype=F64))
    x0 = (x - torch.sqrt(1 - abar[i]) * eps) / torch.sqrt(abar[i])
    sigma = eta * torch.sqrt((1 - abar[j]) / (1 - abar[i]) * (1 - abar[i] / abar[j]))  # Eq. (16)
    ref = torch.sqrt(abar[j]) * x0 + torch.sqrt(1 - abar[j] - sigma**2) * eps  # Eq. (12)
    if eta > 0:
        ref = ref + sigma * torch.randn(x.shape, generator=seeded(3), dtype=F64)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)


def test_ddim_matches_diffusers_scheduler_formula():
    """50 DDIM steps = diffusers' DDIMScheduler.step (eps prediction, set_alpha_to_one),
    re-derived."""
    sde, gm = VPSDE(), mixture_2d()
    model = gm.eps_model(sde)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=F64), 0)
    timesteps = list(range(980, -1, -20))  # leading spacing, steps_offset 0
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    x = x_T
    for k, i in enumerate(timesteps):
        prev = timesteps[k + 1] if k + 1 < len(timesteps) else -1
        a_t, a_prev = abar[i], abar[prev] if prev >= 0 else torch.tensor(1.0, dtype=F64)
        eps = model(x, torch.full((32,), (i + 1) / 1000, dtype=F64))
        x0 = (x - torch.sqrt(1 - a_t) * eps) / torch.sqrt(a_t)
        x = torch.sqrt(a_prev) * x0 + torch.sqrt(1 - a_prev) * eps
    ts = sde.index_to_time(torch.tensor(timesteps))
    res = sample(model, sde, None, "ddim", x_T=x_T, ts=ts, discrete=True)
    assert res.nfe == 50
    torch.testing.assert_close(res.x, x, atol=1e-10, rtol=0)


# -- deterministic solvers against the exact probability-flow endpoint -------------------------

def ode_error(gm, sde, solver, n=256, **kw):
    x_T = sde.prior_sampling((n, gm.dim), generator=torch.Generator().manual_seed(7), dtype=F64)
    res = sample(gm.eps_model(sde), sde, None, solver, x_T=x_T, denoise=False, **kw)
    ref = gm.ode_endpoint(sde, x_T, float(res.ts[-1]))
    return (res.x - ref).norm(dim=1).mean().item(), res.nfe


def test_ddim_converges_to_the_pf_ode_first_order():
    gm, sde = mixture_2d(), VPSDE()
    errs = [ode_error(gm, sde, "ddim", steps=s)[0] for s in (25, 50, 100, 200)]
    # Measured 7.4e-2, 3.8e-2, 1.9e-2, 9.7e-3: halves with each doubling.
    assert all(1.6 < a / b < 2.4 for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 2e-2


@pytest.mark.parametrize("solver, kw", [("dpm", {"order": 2}), ("heun", {}), ("dpm", {"order": 3})])
def test_high_order_convergence(solver, kw):
    gm, sde = mixture_2d(), VPSDE()
    e1, _ = ode_error(gm, sde, solver, steps=20, **kw)
    e2, _ = ode_error(gm, sde, solver, steps=40, **kw)
    # Second order: doubling steps divides the error by ~4 (measured 3.9-6.5).
    assert e1 / e2 > 3.0, (e1, e2)


# Mean distance to the exact endpoint at the budgets, bounded at ~1.3x the measured value
# (measured vp / subvp / ve: ode 3.5e-5 / 4.2e-5 / 2.8e-5 (rtol 1e-5); ddim(100) 2.0e-2 / 2.1e-2 /
# 2.1e-2; dpm(19 + 1 NFE) 7.0e-3 / 2.0e-2 / 3.0e-3; heun(38 + 1 NFE) 4.2e-2 / 5.9e-2 / 1.3e-2).
DETERMINISTIC = {
    "ode": ({}, {"vp": 1e-4, "subvp": 1e-4, "ve": 1e-4}),
    "ddim": ({"steps": 100}, {"vp": 2.6e-2, "subvp": 2.8e-2, "ve": 2.7e-2}),
    "dpm": ({"steps": 19}, {"vp": 9e-3, "subvp": 2.6e-2, "ve": 4e-3}),
    "heun": ({"steps": 19}, {"vp": 5.5e-2, "subvp": 7.5e-2, "ve": 1.7e-2}),
}


@pytest.mark.parametrize("sde_name", list(DIFFUSION_SDES))
@pytest.mark.parametrize("solver", list(DETERMINISTIC))
def test_deterministic_solver_lands_on_exact_endpoint(sde_name, solver):
    sde = {**SDES, "ve": lambda: VESDE(sigma_max=10.0)}[sde_name]()
    opts, bounds = DETERMINISTIC[solver]
    bound = bounds[sde_name]
    err, nfe = ode_error(mixture_2d(), sde, solver, **opts)
    print(f"{solver} {sde_name}: {err:.2e} at {nfe} NFE")
    assert err < bound, err


def test_dpm_at_20_nfe_beats_half_the_kdiffusion_error():
    # k-diffusion DPM++(2M) at 20 NFE on this problem: 4.3e-2 (benchmarks/results/samplers.md).
    err, nfe = ode_error(mixture_2d(), VPSDE(), "dpm", steps=19)
    assert nfe == 19 and err < 0.5 * 4.3e-2, err


def test_shifted_time_grid_fails():
    """A t-vs-next-t slip (the model evaluated one step late) breaks the same bounds."""
    gm, sde = mixture_2d(), VPSDE()
    exact = gm.eps_model(sde)
    x_T = sde.prior_sampling((256, 2), generator=torch.Generator().manual_seed(7), dtype=F64)
    for solver, (opts, bounds) in DETERMINISTIC.items():
        shift = 1e-3 if solver == "ode" else 1.0 / opts["steps"]  # one DDPM index / one grid step
        res = sample(lambda x, t: exact(x, t + shift), sde, None, solver, x_T=x_T, denoise=False,
                     **opts)
        ref = gm.ode_endpoint(sde, x_T, float(res.ts[-1]))
        err = (res.x - ref).norm(dim=1).mean().item()
        assert err > 1.5 * bounds["vp"], (solver, err)


# -- distributions: every solver reproduces the data with the exact score -------------------------

def sw_floor(gm, n, seeds=4):
    vals = [sliced_wasserstein(gm.sample(n, generator=seeded(100 + s), dtype=F64),
                               gm.sample(n, generator=seeded(200 + s), dtype=F64),
                               generator=seeded(s)).item() for s in range(seeds)]
    return sum(vals) / seeds


STOCHASTIC_CASES = [
    ("ode", {}), ("ancestral", {}), ("sde", {}), ("pc", {}), ("ddim", {"steps": 100}),
    ("ddim", {"steps": 999, "eta": 1.0}), ("dpm", {"steps": 19}), ("heun", {"steps": 19}),
]


@pytest.mark.parametrize("problem", ["2d", "8d"])
@pytest.mark.parametrize("sde_name", list(DIFFUSION_SDES))
def test_every_solver_reproduces_the_data(problem, sde_name):
    gm = mixture_2d() if problem == "2d" else mixture_8d()
    sde = {**SDES, "ve": lambda: VESDE(sigma_max=20.0)}[sde_name]()
    n = 2048 if problem == "2d" else 1024
    floor = sw_floor(gm, n)
    data = gm.sample(n, generator=torch.Generator().manual_seed(9), dtype=F64)
    cases = STOCHASTIC_CASES
    if problem != "2d":
        cases = [c for c in STOCHASTIC_CASES if c[0] in ("ode", "dpm", "sde")]
    for solver, opts in cases:
        res = sample(gm.eps_model(sde), sde, (n, gm.dim), solver, dtype=F64,
                     generator=torch.Generator().manual_seed(11), **opts)
        sw = sliced_wasserstein(res.x, data, generator=torch.Generator().manual_seed(0)).item()
        # Within 2x the two-sample noise floor (measured floors 0.03-0.06; solvers 0.6-1.3x floor).
        assert sw < 2.0 * floor, (solver, opts, sw, floor)


def test_wrong_score_sign_is_rejected_by_the_distribution_test():
    gm, sde = mixture_2d(), VPSDE()
    n = 2048
    exact = gm.eps_model(sde)
    res = sample(lambda x, t: -exact(x, t), sde, (n, 2), "dpm", steps=19, dtype=F64,
                 generator=torch.Generator().manual_seed(11))
    data = gm.sample(n, generator=torch.Generator().manual_seed(9), dtype=F64)
    sw = sliced_wasserstein(torch.nan_to_num(res.x, nan=1e6), data).item()
    assert not sw < 2.0 * sw_floor(gm, n)


# -- the API contract --------------------------------------------------------------------------

# Every registered solver at 5 steps, plus option variants.
API_CASES = [(name, {"steps": 5}) for name in EPS_SOLVERS] + [
    ("ddim", {"steps": 5, "eta": 0.5}), ("sde", {"steps": 5, "method": "milstein"}),
    ("ode", {"method": "rk4", "steps": 5}), ("ode", {"rtol": 1e-3, "atol": 1e-3})]


@pytest.mark.parametrize("sde_cls", list(SDES.values()))
@pytest.mark.parametrize("shape", [(6, 2), (3, 2, 4, 4)])
@pytest.mark.parametrize("solver, opts", API_CASES)
def test_shapes_determinism_and_counted_nfe(sde_cls, shape, solver, opts):
    sde = sde_cls()
    w = torch.randn(shape[1:], generator=torch.Generator().manual_seed(0))
    counter = Counter(lambda x, t: torch.tanh(x * w) * (1 + t.reshape(-1, *([1] * (x.ndim - 1)))),
                      x0_fn=lambda x, t: torch.tanh(x))

    def run(seed):
        return sample(counter, sde, shape, solver, generator=seeded(seed), **opts)

    if refuses_the_chain(sde, solver, opts):
        return check_refuses_the_chain(lambda: run(0))

    a = run(0)
    assert a.x.shape == shape and torch.isfinite(a.x).all()
    assert a.nfe == counter.calls  # counted, not computed
    b = run(0)
    assert torch.equal(a.x, b.x)  # deterministic under a generator
    c = run(1)
    assert not torch.equal(a.x, c.x)  # the prior draw follows the generator


def test_trajectory_and_x_T():
    sde, gm = VPSDE(), mixture_2d()
    x_T = torch.randn(5, 2, dtype=F64)
    res = sample(gm.eps_model(sde), sde, None, "ddim", x_T=x_T, steps=7, return_trajectory=True)
    assert res.trajectory.shape == (8, 5, 2) and torch.equal(res.trajectory[0], x_T)
    assert res.x.dtype == F64 and res.nfe == 8


def test_adaptive_ode_never_leaves_eps_T():
    sde, gm = VPSDE(), mixture_2d()
    seen = []
    exact = gm.eps_model(sde)

    def model(x, t):
        seen.append(t)
        return exact(x, t)

    sample(model, sde, (64, 2), "ode", t_min=1e-3, denoise=False, dtype=F64)
    ts = torch.cat(seen)
    assert ts.min().item() >= 1e-3 - 1e-12 and ts.max().item() <= 1.0 + 1e-12


@pytest.mark.parametrize("kw, msg", [
    ({"solver": "nope"}, "unknown solver"), ({"steps": 0}, "steps must be a positive integer"),
    ({"shape": (4,)}, "shape must be"), ({"solver": "ddim", "eta": 2.0}, "eta must be in"),
    ({"solver": "pc", "predictor": "x"}, "unknown predictor"),
    ({"solver": "sde", "method": "x"}, "unknown torchsde method"),
    ({"solver": "ancestral", "steps": 5000}, "do not fit"),
    ({"solver": "dpm", "discrete": True}, "takes no option 'discrete'"),
])
def test_bad_input(kw, msg):
    sde, gm = VPSDE(), mixture_2d()
    args = {"shape": (4, 2), "solver": "ddim", **kw}
    with pytest.raises(ValueError, match=msg):
        sample(gm.eps_model(sde), sde, args.pop("shape"), args.pop("solver"), **args)


# -- the registry is the one list of solvers ----------------------------------------------------

def test_readme_solver_table_is_generated_from_the_registry():
    """README and ``SOLVERS`` agree: after changing the registry, paste ``solver_table()``."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert solver_table() in readme, (
        "README.md's solver table differs from sde_gen.sampling.SOLVERS; replace it with the "
        "output of python -c 'from sde_gen.sampling.solvers import solver_table; "
        "print(solver_table())'")


@pytest.mark.parametrize("name", list(SOLVERS))
def test_registry_options_are_the_functions_keywords(name):
    """Each spec's options (names and defaults) are exactly its function's keyword options, so a
    direct call and ``sample()`` behave alike."""
    spec = SOLVERS[name]
    params = inspect.signature(spec.fn).parameters.values()
    keywords = {p.name: p.default for p in params
                if p.kind is p.KEYWORD_ONLY and p.name not in ("generator", "callback")}
    options = {o.name: o.default for o in spec.options}
    if spec.x0_by_model:  # clip_sample / threshold: applied by sample() through the model
        assert {"clip_sample", "threshold"} <= set(options)
        options = {k: v for k, v in options.items() if k not in ("clip_sample", "threshold")}
    assert keywords == options
    for o in spec.options:
        assert o.help and o.type in (bool, int, float, str, tuple), o
        o.check(o.default)  # every default passes its own check
        if o.choices is not None and o.default is not None:
            assert o.default in o.choices


def test_registry_defaults_are_valid_grids():
    from sde_gen.sampling.grids import SPACINGS

    for name, spec in SOLVERS.items():
        assert spec.spacing is None or spec.spacing in SPACINGS, name
        for sde_cls in SDES.values():
            assert spec.spacing_for(sde_cls()) in SPACINGS, name
        assert spec.steps is None or spec.steps >= 1, name
        assert isinstance(spec.stochastic, bool) or spec.stochastic in spec.option_names, name
