"""Property tests of the sampling entry point ``sde_gen.sampling.sample``.

Parametrized over SDE (VP, sub-VP, VE) x solver variant x shape ((B, 2) and (B, 3, 4, 4)) x dtype.
The model is a tiny analytic eps-model written here: the exact ``eps`` of isotropic Gaussian data
``N(MU, S^2 I)``, ``eps(x, t) = sigma_t (x - alpha_t MU) / (alpha_t^2 S^2 + sigma_t^2)``, which
works elementwise for any shape. It counts its own calls and records every time it is evaluated
at, independently of the package's ``CountingModel``.

Checked: output shape and dtype, finiteness, ``nfe`` against the test's counter (and against the
closed-form count where the solver has one), trajectory length and end points, the returned grid,
that the model is only evaluated inside the grid's ``[ts[-1], ts[0]]``, determinism under a fixed
``torch.Generator``, that ``x_T`` is honoured, and that bad input raises ``ValueError`` with a
message naming the problem.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

from helpers import EPS_SOLVERS, F64, SDES, check_refuses_the_chain, refuses_the_chain, seeded
from sde_gen.sampling import sample
from sde_gen.sde import SDE, VESDE, VPSDE
from sde_gen.tensor_utils import append_dims

F32 = torch.float32
MU, S = 0.5, 0.8  # the analytic model's data: N(MU, S^2) per coordinate
STEPS = 6  # grid intervals for every grid solver below

SHAPES = {"flat": (5, 2), "image": (3, 3, 4, 4)}
DTYPES = {"f32": F32, "f64": F64}


class GaussianEps:
    """Exact eps-model of ``N(MU, S^2 I)`` data; counts calls and records the times it sees."""

    def __init__(self, sde: SDE) -> None:
        self.sde = sde
        self.calls = 0
        self.t_min, self.t_max = float("inf"), float("-inf")
        self.bad_t: list[str] = []  # contract violations of the (x, t) call signature

    #: It gives its exact x0 too (``predict``), as sampling from a flow path's T needs.
    predicts_x0 = True

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eps, E[x0 | x_t])``, both finite where ``alpha_t = 0``; one counted call."""
        self.calls += 1
        if t.shape != (x.shape[0],) or t.dtype != x.dtype:
            self.bad_t.append(f"t {tuple(t.shape)} {t.dtype} for x {tuple(x.shape)} {x.dtype}")
        self.t_min = min(self.t_min, float(t.min()))
        self.t_max = max(self.t_max, float(t.max()))
        alpha, sigma = (append_dims(c.to(F64), x.ndim)
                        for c in self.sde.marginal_coeffs(t.to(F64)))
        resid = (x.to(F64) - alpha * MU) / (alpha**2 * S**2 + sigma**2)
        return (sigma * resid).to(x.dtype), (MU + alpha * S**2 * resid).to(x.dtype)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.predict(x, t)[0]


@dataclass(frozen=True)
class Variant:
    """A solver with options; ``nfe(n)``: closed-form NFE for ``n`` intervals without denoise."""

    solver: str
    options: dict = field(default_factory=dict)
    nfe: Callable[[int], int] | None = None

    @property
    def id(self) -> str:
        opts = "-".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.solver}[{opts}]" if opts else self.solver

    @property
    def stochastic(self) -> bool:
        """From the registry; checked against behaviour (x_mean, generator) below."""
        return EPS_SOLVERS[self.solver].is_stochastic(self.options)


# Option variants per solver beyond its defaults, each with its closed-form NFE written here
# independently of the registry's ``calls_per_step`` (None: the method decides). Every solver of
# EPS_SOLVERS is tested at its defaults even without an entry (NFE from the registry).
CASES: dict[str, list[tuple[dict, Callable[[int], int] | None]]] = {
    "ancestral": [({}, lambda n: n), ({"variance": "beta_tilde"}, lambda n: n)],
    "ddim": [({}, lambda n: n), ({"eta": 0.5}, lambda n: n), ({"discrete": True}, lambda n: n)],
    "sde": [({}, lambda n: n),  # device-side Euler-Maruyama
            # torchsde, one step per interval: its shape-check call is not a model call
            ({"method": "euler"}, lambda n: n), ({"method": "midpoint"}, lambda n: 2 * n)],
    "pc": [({}, lambda n: 2 * n),  # 1 corrector + 1 predictor per step
           ({"predictor": "ancestral", "n_corrector": 2}, lambda n: 3 * n),
           ({"predictor": "euler_maruyama", "corrector": "none"}, lambda n: n),
           ({"predictor": "none"}, lambda n: n)],  # corrector only
    "ode": [({}, None),  # adaptive dopri5: NFE set by the tolerances
            ({"method": "rk4"}, lambda n: 4 * n)],
    "dpm": [({}, lambda n: n), ({"order": 2}, lambda n: n)],
    "heun": [({}, lambda n: 2 * n)],
}


def _registry_nfe(solver: str, options: dict) -> Callable[[int], int] | None:
    per_step = EPS_SOLVERS[solver].nfe(1, options, denoise=False)
    return None if per_step is None else (lambda n: per_step * n)


VARIANTS = [Variant(s, o, nfe) for s in EPS_SOLVERS
            for o, nfe in CASES.get(s, [({}, _registry_nfe(s, {}))])]
GRID = pytest.mark.parametrize("variant", VARIANTS, ids=[v.id for v in VARIANTS])


def test_variants_cover_every_registered_solver() -> None:
    """The parametrization follows the registry; stray entries (a removed solver) fail here."""
    assert {v.solver for v in VARIANTS} == set(EPS_SOLVERS)
    assert set(CASES) <= set(EPS_SOLVERS)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.nfe is not None],
                         ids=[v.id for v in VARIANTS if v.nfe is not None])
def test_registry_calls_per_step_match_the_closed_forms(variant: Variant) -> None:
    """``SolverSpec.nfe`` (used by the README table and the benchmarks) agrees with the test's
    own closed form, where the registry claims one."""
    per_step = EPS_SOLVERS[variant.solver].nfe(1, variant.options, denoise=False)
    if per_step is not None:
        assert per_step * STEPS == variant.nfe(STEPS)
SDE_P = pytest.mark.parametrize("sde_name", list(SDES))
SHAPE_P = pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
DTYPE_P = pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))


def run(variant: Variant, sde: SDE, model, shape, dtype, **kw):
    return sample(model, sde, shape, variant.solver, steps=STEPS, dtype=dtype,
                  **variant.options, **kw)


# -------------------------------------------------------------------------------------------------
@GRID
@SDE_P
@SHAPE_P
@DTYPE_P
def test_output_contract(variant: Variant, sde_name: str, shape, dtype) -> None:
    """Shape, dtype, finiteness, NFE, grid, trajectory and the times the model is evaluated at."""
    sde = SDES[sde_name]()
    model = GaussianEps(sde)
    if refuses_the_chain(sde, variant.solver, variant.options):
        return check_refuses_the_chain(lambda: run(variant, sde, model, shape, dtype))
    res = run(variant, sde, model, shape, dtype, generator=seeded(0), denoise=False,
              return_trajectory=True)

    assert res.x.shape == shape and res.x_mean.shape == shape
    assert res.x.dtype == dtype and res.x_mean.dtype == dtype
    assert torch.isfinite(res.x).all() and torch.isfinite(res.x_mean).all()
    assert model.bad_t == [], model.bad_t[:3]  # model always gets t of shape (B,) in x's dtype

    # NFE: the package's count equals the test's independent counter ...
    assert res.nfe == model.calls
    # ... and the closed form where there is one (denoise=False: no final call). From a flow
    # path's T (alpha = 0) the reverse-SDE solvers take one posterior step first.
    first_alone = sde.pure_noise_at_T and variant.solver in ("sde", "pc")
    if variant.nfe is not None:
        assert res.nfe == (variant.nfe(STEPS - 1) + 1 if first_alone else variant.nfe(STEPS))
    else:  # adaptive ODE: NFE set by the tolerances (39-98 measured); torchsde: >= 1 per step
        assert res.nfe > STEPS

    # Grid: STEPS + 1 decreasing float64 times from T down to eps (snapped for discrete grids).
    ts = res.ts
    assert ts.dtype == F64 and ts.shape == (STEPS + 1,)
    assert (ts[1:] < ts[:-1]).all()
    assert ts[0].item() == sde.T
    discrete = variant.options.get("discrete", variant.solver == "ancestral")
    if not discrete:
        assert ts[-1].item() == sde.default_t_min
    else:  # on the chain's step times
        assert torch.equal(ts, sde.index_to_time(sde.time_to_index(ts)))

    # The model is only evaluated inside [ts[-1], ts[0]] (compared in the model's dtype).
    assert model.t_min >= ts[-1].to(dtype).item(), (model.t_min, ts[-1].item())
    assert model.t_max <= ts[0].to(dtype).item(), (model.t_max, ts[0].item())

    # Every solver reports its state at every grid time (regression: ode and torchsde gave None).
    traj = res.trajectory
    assert traj is not None and traj.shape == (STEPS + 1, *shape) and traj.dtype == dtype
    assert torch.equal(traj[-1], res.x)  # last state = output (no denoise here)
    assert res.n_nonfinite == 0
    if not variant.stochastic:
        assert torch.equal(res.x_mean, res.x)  # documented: x_mean == x when deterministic


@GRID
@SDE_P
@SHAPE_P
@DTYPE_P
def test_generator_determinism_and_x_T(variant: Variant, sde_name: str, shape, dtype) -> None:
    """Same seed -> identical; the prior draw is ``sde.prior_sampling`` from the same generator;
    with x_T fixed, another seed changes stochastic solvers only."""
    sde = SDES[sde_name]()
    model = GaussianEps(sde)
    if refuses_the_chain(sde, variant.solver, variant.options):
        return check_refuses_the_chain(lambda: run(variant, sde, model, shape, dtype))
    a = run(variant, sde, model, shape, dtype, generator=seeded(0))
    calls_a = model.calls
    b = run(variant, sde, model, shape, dtype, generator=seeded(0))
    assert torch.equal(a.x, b.x) and torch.equal(a.x_mean, b.x_mean)
    assert a.nfe == b.nfe == calls_a  # with denoise (default) the count still matches the counter

    # x_T honoured: drawing it ourselves from the same generator reproduces the run exactly.
    g = seeded(0)
    x_T = sde.prior_sampling(shape, generator=g, dtype=dtype)
    c = run(variant, sde, model, shape, dtype, generator=g, x_T=x_T, return_trajectory=True)
    assert torch.equal(c.x, a.x)
    assert torch.equal(c.trajectory[0], x_T)

    d = run(variant, sde, model, shape, dtype, generator=seeded(1), x_T=x_T)
    if variant.stochastic:
        # a different noise stream from the same x_T: outputs differ (smallest max-abs change
        # measured over all stochastic cases: 1.06; threshold 1e-4)
        assert (d.x - c.x).abs().max() > 1e-4
    else:
        assert torch.equal(d.x, c.x)  # deterministic: the generator is not used after x_T


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.options == {}],
                         ids=[v.id for v in VARIANTS if v.options == {}])
def test_x_T_dtype_and_values_win(variant: Variant) -> None:
    """``x_T``'s dtype overrides ``dtype=``, and the output depends on the given ``x_T``."""
    sde = VPSDE()
    model = GaussianEps(sde)
    x_T = sde.prior_sampling((4, 2), generator=seeded(3), dtype=F64)
    r1 = sample(model, sde, (4, 2), variant.solver, steps=STEPS, x_T=x_T, dtype=F32,
                generator=seeded(0))
    assert r1.x.dtype == F64
    r2 = sample(model, sde, (4, 2), variant.solver, steps=STEPS, x_T=x_T + 3.0, dtype=F32,
                generator=seeded(0))
    # Smallest per-element change measured over these solvers: 1.6e-3 (sde, 6 EM steps; ode 2.4,
    # ancestral 1.2e-2); require > 1e-4 so an ignored x_T fails.
    assert (r2.x - r1.x).abs().min() > 1e-4


@pytest.mark.parametrize("sde_name", list(SDES))
@DTYPE_P
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_dopri5_stays_inside_eps_T(sde_name: str, dtype, shape) -> None:
    """Adaptive dopri5 never evaluates the model below eps (1e-3 for VP) or above T."""
    sde = SDES[sde_name]()
    eps = sde.default_t_min
    model = GaussianEps(sde)
    res = sample(model, sde, shape, "ode", t_min=eps, generator=seeded(0), dtype=dtype,
                 method="dopri5", rtol=1e-5, atol=1e-5)
    assert res.nfe == model.calls > 20  # it really integrated (measured 56-98 calls)
    lo = torch.tensor(eps, dtype=F64).to(dtype).item()
    assert model.t_min >= lo, f"evaluated at t={model.t_min} < t_min={lo}"
    assert model.t_max <= sde.T, f"evaluated at t={model.t_max} > T={sde.T}"
    # Both ends are actually visited: the start, and eps (the denoising call lands on it).
    assert model.t_max == sde.T and model.t_min == lo


# -------------------------------------------------------------------------------------------------
BAD_INPUTS = [
    pytest.param(dict(solver="euler"), "unknown solver 'euler'", id="unknown-solver"),
    pytest.param(dict(solver="ddim", steps=0), "steps must be a positive integer", id="steps-0"),
    pytest.param(dict(solver="ddim", steps=-3), "steps must be a positive integer", id="steps-neg"),
    pytest.param(dict(solver="ddim", steps=2.5), "steps must be a positive integer",
                 id="steps-float"),
    pytest.param(dict(solver="ddim", shape=(4,)), r"shape must be \(B, \*D\)", id="shape-1d"),
    pytest.param(dict(solver="ddim", shape=(0, 2)), r"shape must be \(B, \*D\)", id="shape-zero"),
    pytest.param(dict(solver="ddim", shape=(4, -2)), r"shape must be \(B, \*D\)", id="shape-neg"),
    pytest.param(dict(solver="ddim", shape=5), "shape must be a tuple", id="shape-int"),
    pytest.param(dict(solver="ddim", shape=None), "shape must be a tuple", id="shape-none"),
    pytest.param(dict(solver="ddim", eta=2.0), r"eta must be in \[0, 1\]", id="eta-2"),
    pytest.param(dict(solver="ddim", eta=-0.1), r"eta must be in \[0, 1\]", id="eta-neg"),
    pytest.param(dict(solver="pc", predictor="leapfrog"), "unknown predictor 'leapfrog'",
                 id="pc-predictor"),
    pytest.param(dict(solver="pc", corrector="hmc"), "unknown corrector 'hmc'", id="pc-corrector"),
    pytest.param(dict(solver="pc", snr=0.0), "snr > 0", id="pc-snr"),
    pytest.param(dict(solver="sde", method="rk45"), "unknown torchsde method 'rk45'",
                 id="torchsde-method"),
    pytest.param(dict(solver="ode", method="rk45"), "unknown ODE method 'rk45'", id="ode-method"),
    pytest.param(dict(solver="dpm", order=4), "order must be 2 or 3", id="dpm-order"),
    pytest.param(dict(solver="ancestral", variance="fixed_large"), "unknown variance",
                 id="ancestral-variance"),
    pytest.param(dict(solver="ddim", variance="beta"), "solver 'ddim' takes no option 'variance'",
                 id="option-of-another-solver"),
    pytest.param(dict(solver="ddim", spacing="cosine"), "unknown spacing 'cosine'", id="spacing"),
    # N = 1000 steps -> at most 999 intervals fit on the discrete chain.
    pytest.param(dict(solver="ancestral", steps=1000), "do not fit on the 1000-step discrete chain",
                 id="ancestral-discrete-too-many"),
    pytest.param(dict(solver="ddim", steps=1000, discrete=True),
                 "do not fit on the 1000-step discrete chain", id="ddim-discrete-too-many"),
]


@pytest.mark.parametrize("kwargs,match", BAD_INPUTS)
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_bad_input_raises_value_error(kwargs: dict, match: str, sde_name: str) -> None:
    sde = SDES[sde_name]()
    model = GaussianEps(sde)
    kwargs = dict(kwargs)
    shape = kwargs.pop("shape", (4, 2))
    solver = kwargs.pop("solver")
    with pytest.raises(ValueError, match=match):
        sample(model, sde, shape, solver, generator=seeded(0), **kwargs)


def test_discrete_grid_with_n_minus_1_steps_is_accepted() -> None:
    """The boundary of the check above: 999 intervals on the 1000-step chain are every step."""
    sde = VPSDE()
    model = GaussianEps(sde)
    res = sample(model, sde, (2, 2), "ddim", steps=999, discrete=True, generator=seeded(0))
    assert torch.equal(sde.time_to_index(res.ts), torch.arange(999, -1, -1))
    assert res.nfe == model.calls == 1000


# -------------------------------------------------------------------------------------------------
class _Timeout(Exception):
    pass


def _with_alarm(seconds: int, fn):
    """Run ``fn`` with a SIGALRM watchdog so a hang fails the test instead of the suite."""

    def handler(signum, frame):
        raise _Timeout(f"did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("sde_name,steps,dtype", [
    # float64: formerly an extra ~1e-16 step (VP 6, VE 10) and an endless BrownianInterval split
    # (VE 100, sample() never returned); fixed by padding dt.
    ("vp", 6, F64), ("ve", 10, F64), ("ve", 100, F64),
    # float32: the same extra step while the padding (1e-8) was below float32 rounding.
    ("vp", 6, F32), ("ve", 7, F32), ("ve", 10, F32),
], ids=lambda v: str(v).replace("torch.", ""))
def test_torchsde_takes_exactly_the_requested_steps(sde_name: str, steps: int, dtype) -> None:
    sde = SDES[sde_name]()
    model = GaussianEps(sde)
    res = _with_alarm(5, lambda: sample(model, sde, (4, 2), "sde", method="euler", steps=steps,
                                         generator=seeded(0), dtype=dtype))
    # Euler: one drift call per interval and the denoising call; torchsde's shape check on the
    # start state of each interval reuses the step's own drift (it used to cost a model call).
    assert res.nfe == model.calls == steps + 1


# -- regressions of issue 12 -----------------------------------------------------------------------
class TimesSeen(GaussianEps):
    """:class:`GaussianEps` that also keeps every time it is called at (the batch's first)."""

    def __init__(self, sde: SDE) -> None:
        super().__init__(sde)
        self.times: list[float] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.times.append(float(t[0]))
        return super().__call__(x, t)


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "karras", "explicit"])
@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_torchsde_steps_on_the_requested_grid(spacing: str, method: str) -> None:
    """Formerly a uniform dt whatever the spacing, while ``res.ts`` reported the requested grid.
    Euler evaluates the drift at each interval's start, midpoint also at its middle."""
    sde = VPSDE()
    model = TimesSeen(sde)
    grid = dict(ts=torch.tensor([1.0, 0.6, 0.5, 0.05, 1e-3], dtype=F64)) if spacing == "explicit" \
        else dict(steps=STEPS, spacing=spacing)
    res = sample(model, sde, (4, 2), "sde", method=method, generator=seeded(0), dtype=F64,
                 denoise=False, return_trajectory=True, **grid)
    starts = res.ts[:-1].tolist()
    if method == "euler":
        assert model.times == starts  # exactly the grid's times, one call per interval
    else:
        assert model.times[::2] == starts
        mids = ((res.ts[:-1] + res.ts[1:]) / 2).tolist()
        assert model.times[1::2] == pytest.approx(mids, rel=1e-12, abs=0)
    assert res.nfe == model.calls == EPS_SOLVERS["sde"].nfe(len(starts), {"method": method},
                                                         denoise=False)
    assert res.trajectory.shape == (len(res.ts), 4, 2) and torch.equal(res.trajectory[-1], res.x)


@pytest.mark.parametrize("sde_fn, eps, lowest", [
    # Regression: each failed with "999 intervals do not fit on the 1000-step discrete chain;
    # use at most 999 steps" (and "99 intervals ... 100-step chain" for N = 100).
    pytest.param(VESDE, 1e-3, 1, id="ve-eps1e-3"),  # levels i/999: level 1 at 1.001e-3
    pytest.param(VPSDE, 1e-2, 9, id="vp-eps1e-2"),  # steps (i+1)/1000: step 9 at t = 0.01
    pytest.param(lambda: VPSDE(N=100), None, 0, id="vp-N100"),  # eps 1e-3 nearest step 0 (0.01)
    # A short chain works (N = 21 is the shortest valid linear chain at beta_max = 20: beta_i < 1;
    # it was N = 7, whose betas reach 2.86 and now raise).
    pytest.param(lambda: VPSDE(N=21), None, 0, id="vp-N21"),
    pytest.param(lambda: VESDE(N=100), None, 0, id="ve-N100"),  # eps 1e-5 nearest level 0 (t=0)
    pytest.param(VPSDE, None, 0, id="vp-default"),  # DDPM's full chain, as before
])
def test_default_discrete_grid_is_every_chain_step_from_eps(sde_fn, eps, lowest) -> None:
    sde = sde_fn()
    model = GaussianEps(sde)
    res = sample(model, sde, (3, 2), "ancestral", t_min=eps, generator=seeded(0), denoise=False)
    assert torch.equal(sde.time_to_index(res.ts), torch.arange(sde.N - 1, lowest - 1, -1))
    assert torch.equal(res.ts, sde.index_to_time(torch.arange(sde.N - 1, lowest - 1, -1)))
    assert res.nfe == model.calls == sde.N - 1 - lowest
    if eps is not None:  # the steps lie inside [eps, T] (to float64 rounding of the step times)
        assert res.ts[-1].item() >= eps * (1 - 1e-12)
    # The explicit maximum is the default: it fits, and one more does not.
    n = sde.N - 1 - lowest
    again = sample(model, sde, (3, 2), "ancestral", t_min=eps, steps=n, generator=seeded(0))
    assert torch.equal(again.ts, res.ts)
    with pytest.raises(ValueError, match=f"use at most {n} steps"):
        sample(model, sde, (3, 2), "ancestral", t_min=eps, steps=n + 1, generator=seeded(0))


def test_default_ddim_grid_on_a_short_discrete_chain_is_every_step() -> None:
    """ddim's default 49 intervals do not fit on a 25-step chain: the default becomes every step.
    (It was N = 20, whose last beta_i = beta_max / N = 1 is no valid DDPM chain and now raises.)"""
    sde = VPSDE(N=25)
    model = GaussianEps(sde)
    res = sample(model, sde, (3, 2), "ddim", discrete=True, generator=seeded(0))
    assert torch.equal(sde.time_to_index(res.ts), torch.arange(24, -1, -1))
    assert res.nfe == model.calls == 24 + 1


@pytest.mark.parametrize("sde_fn, eps, steps, limit", [
    # The limit stated is the real one for that eps (formerly "use at most 999 steps" for each).
    pytest.param(VESDE, 1e-3, 999, 998, id="ve-eps1e-3"),
    pytest.param(VPSDE, 1e-2, 999, 990, id="vp-eps1e-2"),
    pytest.param(lambda: VPSDE(N=100), None, 100, 99, id="vp-N100"),
])
def test_too_many_discrete_steps_state_the_limit_for_that_eps(sde_fn, eps, steps, limit) -> None:
    sde = sde_fn()
    model = GaussianEps(sde)
    for solver, opts in (("ancestral", {}), ("ddim", {"discrete": True})):
        with pytest.raises(ValueError, match=rf"{steps} intervals do not fit on the {sde.N}-step "
                                             rf"discrete chain .* use at most {limit} steps"):
            sample(model, sde, (3, 2), solver, t_min=eps, steps=steps, generator=seeded(0), **opts)
        res = sample(model, sde, (3, 2), solver, t_min=eps, steps=limit, generator=seeded(0),
                     **opts)
        assert len(res.ts) == limit + 1


BAD_GRIDS = [
    # Regression: an increasing grid gave NaN in sample_em (sqrt of a negative step); the others
    # passed silently.
    pytest.param([1e-3, 0.5, 1.0], "ts must be strictly decreasing", id="increasing"),
    pytest.param([1.0, 0.5, 0.5, 1e-3], "ts must be strictly decreasing", id="repeated"),
    pytest.param([1.0], r"at least 2 times \(one interval\)", id="one-point"),
    pytest.param([[1.0, 0.5]], r"1-D grid", id="two-d"),
    pytest.param([1.0, float("nan"), 1e-3], r"non-finite time \(NaN or inf\): ts\[1\]", id="nan"),
    pytest.param([float("inf"), 0.5, 1e-3], r"non-finite time \(NaN or inf\): ts\[0\]", id="inf"),
    pytest.param([2.0, 0.5, 1e-3], r"ts must lie in \[0, T\]", id="above-T"),
    pytest.param([1.0, 0.5, -0.1], r"ts must lie in \[0, T\]", id="below-0"),
    pytest.param([1.0, 0.5, 0.0], r"end time ts\[-1\] must be > 0", id="ends-at-0"),
]


@pytest.mark.parametrize("grid, match", BAD_GRIDS)
@pytest.mark.parametrize("solver", ["sde", "ddim", "dpm", "ode"])
def test_explicit_grid_is_validated(grid, match: str, solver: str) -> None:
    sde = VPSDE()
    with pytest.raises(ValueError, match=match):
        sample(GaussianEps(sde), sde, (3, 2), solver, ts=torch.tensor(grid, dtype=F64),
               generator=seeded(0))


def test_explicit_grid_may_end_at_t0_on_the_discrete_chain() -> None:
    """VE's lowest SMLD level sits at t = 0: a discrete grid may end there."""
    sde = VESDE()
    ts = sde.index_to_time(torch.tensor([999, 500, 0]))
    res = sample(GaussianEps(sde), sde, (3, 2), "ancestral", ts=ts, generator=seeded(0))
    assert torch.equal(res.ts, ts) and torch.isfinite(res.x).all()


def test_ts_excludes_steps_eps_and_spacing() -> None:
    sde = VPSDE()
    with pytest.raises(ValueError, match="pass either ts or steps/t_min, not both"):
        sample(GaussianEps(sde), sde, (3, 2), "ddim", ts=torch.tensor([1.0, 0.5]), steps=4,
               t_min=0.1)


BAD_END_TIMES = [
    # Regression: dpm with eps 2 gave samples of std 4e5, eps 1 or 0 all-NaN samples; heun with
    # eps 1 finite garbage; both took negative eps. ode with eps 0: torchdiffeq's "underflow".
    pytest.param(s, e, id=f"{s}-eps{e:g}")
    for s in EPS_SOLVERS for e in (0.0, -0.1, 1.0, 2.0, float("nan"))
]


@pytest.mark.parametrize("solver, eps", BAD_END_TIMES)
def test_end_time_must_lie_inside_0_T(solver: str, eps: float) -> None:
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"t_min \(the end time\) must be in \(0, T\) = \(0, 1\)"):
        sample(GaussianEps(sde), sde, (3, 2), solver, t_min=eps, generator=seeded(0))


@pytest.mark.parametrize("kwargs, match", [
    # Regression: rtol/atol 0 reached torchdiffeq's "AssertionError: underflow in dt 0.0".
    (dict(rtol=0.0), "need rtol > 0, got 0.0"), (dict(atol=0.0), "need atol > 0, got 0.0"),
    (dict(rtol=-1e-3), "need rtol > 0"), (dict(rtol=float("nan")), "need rtol > 0"),
    (dict(n_corrector=-1), "need n_corrector >= 0"), (dict(snr=-1.0), "need snr > 0"),
    (dict(order=2.0), "order must be of type int"), (dict(eta="0.5"), "eta must be of type float"),
    (dict(discrete=1), "discrete must be of type bool"),
])
def test_option_values_are_checked_against_the_registry(kwargs: dict, match: str) -> None:
    name = next(iter(kwargs))
    solver = next(s for s, spec in EPS_SOLVERS.items() if name in spec.option_names)
    sde = VPSDE()
    with pytest.raises(ValueError, match=match):
        sample(GaussianEps(sde), sde, (3, 2), solver, generator=seeded(0), **kwargs)


def test_a_diverged_run_is_flagged_not_raised() -> None:
    """A NaN-weight model samples NaN: ``SampleResult.n_nonfinite`` counts the bad samples."""
    sde = VPSDE()

    def nan_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[:2] = float("nan")  # two of the five examples diverge
        return out

    res = sample(nan_model, sde, (5, 2), "ddim", steps=4, generator=seeded(0))
    assert res.n_nonfinite == 2
    assert sample(GaussianEps(sde), sde, (5, 2), "ddim", steps=4).n_nonfinite == 0
