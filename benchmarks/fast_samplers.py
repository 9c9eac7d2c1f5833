"""Fast samplers at 5, 10 and 20 NFE against k-diffusion and diffusers, on exact mixtures the
defaults were not tuned on, and on a trained digits model.

Every method starts from the same prior draws ``x_T`` at ``T`` and ends with a denoised sample at
the same end time ``eps`` (the SDE's default), with the same number of model calls (NFE) counted
by one wrapper. The error is the mean L2 distance to the exact probability-flow endpoint from
that ``x_T`` (dopri5 at tol 1e-10 with the exact mixture score, then the exact Tweedie denoiser
at ``eps``); for the trained model, to a dopri5 solve at tol 1e-7 with the model itself, denoised
by the model (no exact score is needed for that).

Cases. **Tuning** cases (``role = tune``): the three mixtures of ``benchmarks/samplers.py``
(2-D asymmetric, the 8 Gaussians, 8-D anisotropic), under VP, sub-VP and VE. Each of our solvers'
spacing, and the package's recommended fast solver, is chosen on these alone (geometric mean of
the error over them). **Unseen** cases (``role = unseen``): four mixtures drawn from seeds never
used for tuning (2-D with 4 components, 3-D with 5, 12-D with 3, 16-D with 6; rotated, anisotropic,
unequal components and weights), under the same three SDEs, reported with the spacing fixed on the
tuning cases. The digits model is unseen too.

Peers (optional extra ``bench``): k-diffusion ``sample_dpmpp_2m``, ``sample_lms`` and
``sample_heun`` on Karras (rho 7) and log-SNR-uniform sigmas; diffusers ``UniPCMultistepScheduler``
(bh1, bh2; orders 2 and 3), ``DPMSolverMultistepScheduler`` (DPM-Solver++ 3M),
``DEISMultistepScheduler`` (order 3) on their ``linspace``, Karras and exponential sigmas, and
``IPNDMScheduler`` on our log-SNR grid. Each peer is reported at its best spacing for the case (in
its favour). How they are wired is written into the results file.

Usage::

    python -m benchmarks.fast_samplers              # full run (about 20 CPU minutes)
    python -m benchmarks.fast_samplers --quick      # smoke run
    python -m benchmarks.fast_samplers --calibrated # only the calibrated section (benchmarks/
                                                    # calibrated.py; about 15 CPU minutes)
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import mean_l2
from benchmarks.peers import import_diffusers, import_kdiffusion, kdiffusion_denoiser, ve_sigma
from benchmarks.samplers import PROBLEMS as TUNING_PROBLEMS
from benchmarks.samplers import ROOT, TimedModel, environment
from sde_gen.analytic import GaussianMixture
from sde_gen.app.outputs import dumps_strict
from sde_gen.chain import grid_coeffs
from sde_gen.sampling import SOLVERS, make_grid, sample
from sde_gen.sampling.grids import SPACINGS
from sde_gen.sampling.optimized_grid import optimize_grid
from sde_gen.sde import SDE, VESDE, VPSDE, SubVPSDE
from sde_gen.tensor_utils import append_dims

DTYPE = torch.float64
NFES = (5, 10, 20)
SDES: dict[str, Callable[[], SDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


# -- cases ----------------------------------------------------------------------------------------
def random_mixture(dim: int, k: int, seed: int) -> GaussianMixture:
    """``k`` rotated Gaussians in ``dim`` dimensions with per-component variances log-uniform in
    [0.003, 0.5] and unequal weights, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(k, dim, generator=g, dtype=DTYPE)
    covs = []
    for _ in range(k):
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=DTYPE))
        v = torch.exp(math.log(0.003) + torch.rand(dim, generator=g, dtype=DTYPE)
                      * (math.log(0.5) - math.log(0.003)))
        covs.append(q @ torch.diag(v) @ q.T)
    weights = torch.softmax(torch.randn(k, generator=g, dtype=DTYPE), 0)
    return GaussianMixture(means, torch.stack(covs), weights)


UNSEEN: dict[str, Callable[[], GaussianMixture]] = {
    "2d-4comp": lambda: random_mixture(2, 4, 2101),
    "3d-5comp": lambda: random_mixture(3, 5, 2102),
    "12d-3comp": lambda: random_mixture(12, 3, 2103),
    "16d-6comp": lambda: random_mixture(16, 6, 2104),
}


class Case:
    """One mixture (or model) under one SDE: fixed ``x_T``, ``eps``, the model and the reference."""

    def __init__(self, name: str, role: str, sde_name: str, sde: SDE, model, x_T: torch.Tensor,
                 ref: torch.Tensor) -> None:
        self.name, self.role, self.sde_name, self.sde = name, role, sde_name, sde
        self.model, self.x_T, self.ref = model, x_T, ref
        self.eps = sde.default_t_min

    @classmethod
    def mixture(cls, name: str, role: str, gm: GaussianMixture, sde_name: str, n: int,
                seed: int) -> "Case":
        sde = SDES[sde_name]()
        x_T = sde.prior_sampling((n, gm.dim), generator=torch.Generator().manual_seed(seed),
                                 dtype=DTYPE)
        x = gm.ode_endpoint(sde, x_T, sde.default_t_min, tol=1e-10)
        ref = gm.denoise(x, torch.full((n,), sde.default_t_min, dtype=DTYPE), sde)
        return cls(name, role, sde_name, sde, gm.eps_model(sde), x_T, ref)

    @property
    def label(self) -> str:
        return f"{self.name} / {self.sde_name}"

    def err(self, x: torch.Tensor) -> float:
        return mean_l2(x, self.ref)


# -- ours -----------------------------------------------------------------------------------------
#: Our fixed-step deterministic solvers and the option sets worth a row each (skipped when the
#: solver is not registered).
OURS: dict[str, list[tuple[str, dict]]] = {
    "ddim": [("ddim", {})],
    "dpm": [("dpm 2M", {"order": 2}), ("dpm 3M", {"order": 3}),
            ("dpm 3M taylor3", {"order": 3, "variant": "taylor3"})],
    "heun": [("heun (EDM)", {})],
    "unipc": [("unipc bh1-2", {"variant": "bh1", "order": 2}),
              ("unipc bh1-3", {"variant": "bh1", "order": 3}),
              ("unipc bh2-2", {"variant": "bh2", "order": 2}),
              ("unipc bh2-3", {"variant": "bh2", "order": 3})],
    "ipndm": [("ipndm 3", {"order": 3}), ("ipndm 4", {"order": 4})],
    "deis": [("deis tAB2", {"order": 2}), ("deis tAB3", {"order": 3})],
}


@dataclass(frozen=True)
class Method:
    label: str
    solver: str
    options: dict = field(default_factory=dict)

    @property
    def per_step(self) -> int:
        spec = SOLVERS[self.solver]
        return spec.calls_per_step(spec.resolve(self.solver, dict(self.options)))


def our_methods() -> list[Method]:
    return [Method(label, solver, opts) for solver, rows in OURS.items() if solver in SOLVERS
            for label, opts in rows]


def run_ours(case: Case, m: Method, nfe: int, spacing: str | None = None,
             ts: torch.Tensor | None = None) -> tuple[float, int]:
    """Error and NFE of one of our methods: ``(nfe - 1) // per_step`` intervals plus the final
    denoise (heun: 2 calls per interval, so an even budget leaves one call unused)."""
    model = TimedModel(case.model)
    if ts is None:
        steps = max(1, (nfe - 1) // m.per_step)
        res = sample(model, case.sde, None, m.solver, x_T=case.x_T, steps=steps, t_min=case.eps,
                     spacing=spacing, **m.options)
    else:
        res = sample(model, case.sde, None, m.solver, x_T=case.x_T, ts=ts, **m.options)
    return case.err(res.x), model.calls


# -- peers ----------------------------------------------------------------------------------------
def kdiff_sigmas(kd, case: Case, m: int, spacing: str) -> torch.Tensor:
    s_max, s_min = ve_sigma(case.sde, case.sde.T), ve_sigma(case.sde, case.eps)
    fn = kd.get_sigmas_karras if spacing == "karras" else kd.get_sigmas_exponential
    return (fn(m, s_min, s_max, rho=7.0) if spacing == "karras" else fn(m, s_min, s_max)).to(DTYPE)


def run_kdiff(kd, case: Case, which: str, nfe: int, spacing: str) -> tuple[float, int]:
    """k-diffusion on the VE-form state ``x / alpha`` with sigmas from sigma_T/alpha_T to
    sigma_eps/alpha_eps, then 0: the last step of DPM++(2M) and Heun to 0 is the denoise."""
    model = TimedModel(case.model)
    m = (nfe + 1) // 2 if which == "heun" else nfe  # heun: 2 calls per sigma but the last
    sigmas = kdiff_sigmas(kd, case, m, spacing)
    alpha_T = float(case.sde.marginal_coeffs(torch.tensor([case.sde.T], dtype=DTYPE))[0])
    fn = {"2m": kd.sample_dpmpp_2m, "lms": kd.sample_lms, "heun": kd.sample_heun}[which]
    with torch.no_grad():
        x = fn(kdiffusion_denoiser(case.sde, model), case.x_T / alpha_T, sigmas, disable=True)
    return case.err(x), model.calls


def matched_betas(sde: SDE, n: int = 1000) -> np.ndarray:
    """diffusers ``trained_betas`` whose ``abar_i = 1 / (1 + rho_i^2)`` puts timestep ``i`` at our
    time ``sde.index_to_time(i)`` (``rho = sigma/alpha``): the scheduler's noise levels are ours."""
    t = sde.index_to_time(torch.arange(n)).to(DTYPE)
    alpha, sigma = sde.marginal_coeffs(t)
    abar = 1.0 / (1.0 + (sigma / alpha) ** 2)
    prev = torch.cat([torch.ones(1, dtype=DTYPE), abar[:-1]])
    return (1.0 - abar / prev).clamp(min=1e-12, max=0.999999).numpy()


DIFFUSERS = {  # label -> (scheduler class name, config)
    "UniPC bh1-2": ("UniPCMultistepScheduler", {"solver_type": "bh1", "solver_order": 2}),
    "UniPC bh1-3": ("UniPCMultistepScheduler", {"solver_type": "bh1", "solver_order": 3}),
    "UniPC bh2-2": ("UniPCMultistepScheduler", {"solver_type": "bh2", "solver_order": 2}),
    "UniPC bh2-3": ("UniPCMultistepScheduler", {"solver_type": "bh2", "solver_order": 3}),
    "DPM++ 3M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++",
                                                 "solver_order": 3}),
    "DEIS 3": ("DEISMultistepScheduler", {"solver_order": 3}),
}
DIFFUSERS_SPACINGS = {"linspace": {"timestep_spacing": "linspace"},
                      "karras": {"use_karras_sigmas": True},
                      "exponential": {"use_exponential_sigmas": True}}


def _to_ours(case: Case, x_d: torch.Tensor, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Our state and time for diffusers' VP-form state ``x_d`` at noise level ``rho``."""
    r = torch.tensor([rho], dtype=DTYPE)
    t = case.sde.t_from_log_snr(-torch.log(r)).clamp(0.0, case.sde.T)
    alpha = case.sde.marginal_coeffs(t)[0]
    y = x_d * math.sqrt(1 + rho**2)  # x / alpha
    return float(alpha) * y, t.to(x_d.dtype).expand(x_d.shape[0])


def run_diffusers(df, case: Case, label: str, nfe: int, spacing: str) -> tuple[float, int]:
    """A diffusers multistep scheduler on :func:`matched_betas`. With ``final_sigmas_type="zero"``
    (UniPC, DPM++) its last step to sigma 0 is the denoise: NFE timesteps. DEIS ends at sigma_min
    with a zero-length last step: we skip that step and denoise instead (in its favour)."""
    cls_name, cfg = DIFFUSERS[label]
    cls = getattr(df, cls_name)
    extra = {"final_sigmas_type": "zero"} if cls_name != "DEISMultistepScheduler" else {}
    sched = cls(num_train_timesteps=1000, trained_betas=matched_betas(case.sde),
                prediction_type="epsilon", lower_order_final=True, **cfg, **extra,
                **DIFFUSERS_SPACINGS[spacing])
    denoise_last = cls_name == "DEISMultistepScheduler"
    sched.set_timesteps(nfe if not denoise_last else nfe)
    model = TimedModel(case.model)
    rho0 = float(sched.sigmas[0])
    x_ours0 = case.x_T  # at T: rescale to diffusers' first noise level (ours: sigma_T/alpha_T)
    alpha_T, sigma_T = (float(c) for c in case.sde.marginal_coeffs(torch.tensor([case.sde.T],
                                                                              dtype=DTYPE)))
    x = x_ours0 / alpha_T / math.sqrt(1 + rho0**2)  # same y = x/alpha; rho0 ~ sigma_T/alpha_T
    steps = list(sched.timesteps)
    if denoise_last:
        steps = steps[:-1]
    with torch.no_grad():
        for k, ts in enumerate(steps):
            x_o, t = _to_ours(case, x, float(sched.sigmas[k]))
            eps = model(x_o, t)
            x = sched.step(eps, ts, x).prev_sample
        if denoise_last:
            rho = float(sched.sigmas[len(steps)])
            x_o, t = _to_ours(case, x, rho)
            eps = model(x_o, t)
            alpha, sigma = (append_dims(c, x_o.ndim) for c in case.sde.marginal_coeffs(t))
            x = (x_o - sigma * eps) / alpha
    return case.err(x), model.calls


def run_diffusers_ipndm(df, case: Case, nfe: int) -> tuple[float, int]:
    """diffusers ``IPNDMScheduler`` with ``trained_betas`` = the VP-form noise levels
    ``sin = rho / sqrt(1 + rho^2)`` of our log-SNR grid (nfe - 1 intervals, then 0): it steps
    between those levels (on a v-prediction, converted from eps); its last step to 0 returns the
    denoised estimate."""
    ts = make_grid(case.sde, nfe - 1, t_min=case.eps, spacing="logsnr")
    rho = grid_coeffs(case.sde, ts).sigma_tilde
    levels = torch.cat([rho / torch.sqrt(1 + rho**2), torch.zeros(1, dtype=DTYPE)])
    sched = df.IPNDMScheduler(num_train_timesteps=1000, trained_betas=levels.numpy())
    sched.set_timesteps(nfe)
    model = TimedModel(case.model)
    alpha_T = float(case.sde.marginal_coeffs(torch.tensor([case.sde.T], dtype=DTYPE))[0])
    x = case.x_T / alpha_T / math.sqrt(1 + float(rho[0]) ** 2)
    with torch.no_grad():
        for k, t_d in enumerate(sched.timesteps):
            r = float(rho[k])
            x_o, t = _to_ours(case, x, r)
            eps = model(x_o, t)
            # It expects a v-prediction: with cos = 1/sqrt(1 + rho^2), sin = rho cos,
            # eps = sin x + cos v, so v = (eps - sin x) / cos.
            cos = 1.0 / math.sqrt(1 + r**2)
            x = sched.step((eps - r * cos * x) / cos, t_d, x).prev_sample
    return case.err(x), model.calls


# -- tables ---------------------------------------------------------------------------------------
def fmt(v: float) -> str:
    return "inf" if not math.isfinite(v) else f"{v:.2e}"


def gmean(values: list[float]) -> float:
    vals = [v for v in values if math.isfinite(v) and v > 0]
    return math.exp(sum(map(math.log, vals)) / len(vals)) if len(vals) == len(values) else math.inf


def choose_spacings(results: dict, methods: list[Method], cases: list[Case]) -> dict:
    """Per method, NFE and SDE, the spacing of least geometric-mean error over the tuning cases
    of that SDE (a spacing in t is a different grid on each SDE)."""
    chosen = {}
    for sde_name in SDES:
        keys = [c.label for c in cases if c.role == "tune" and c.sde_name == sde_name]
        if not keys:
            continue
        for m in methods:
            for nfe in NFES:
                chosen[(m.label, nfe, sde_name)] = min(SPACINGS, key=lambda s: gmean(
                    [results[key][(m.label, s, nfe)][0] for key in keys]))
    return chosen


def at_chosen(results: dict, case: Case, m: Method, nfe: int, chosen: dict) -> tuple[float, int]:
    return results[case.label][(m.label, chosen[(m.label, nfe, case.sde_name)], nfe)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: VP, two cases, 200 samples")
    ap.add_argument("--samples", type=int, default=1000, help="prior draws per case")
    ap.add_argument("--digits-run", type=Path,
                    default=ROOT / "runs" / "images_quality" / "digits" / "after",
                    help="a trained digits run (skipped if absent)")
    ap.add_argument("--no-optimize", action="store_true", help="skip the optimized grids")
    ap.add_argument("--out", type=Path,
                    default=ROOT / "benchmarks" / "results" / "fast_samplers.md")
    ap.add_argument("--calibrated", action="store_true",
                    help="only the calibrated default against the best peers at 4-20 NFE on "
                         "every path; replaces that section of --out, keeps the rest")
    ap.add_argument("--calibrated-mining", action="store_true",
                    help="only the hard-draw mining ablation of the calibration (teacher mine 8 "
                         "against 1) at 10 and 20 NFE")
    ap.add_argument("--calibrated-soft", action="store_true",
                    help="only the soft-loss ablation of the calibration (tuning cases, 10 NFE); "
                         "replaces that section of --out")
    ap.add_argument("--calibrated-digits", type=Path, default=None, metavar="RUN",
                    help="only the calibrated default on a trained digits run (10 and 20 NFE); "
                         "replaces that section of --out")
    ap.add_argument("--calibrate-budget", type=float, default=None,
                    help="--calibrated: seconds of descent per NFE (default 5)")
    ap.add_argument("--cases", nargs="+", default=None, metavar="LABEL",
                    help="--calibrated: only these cases ('8d-aniso / ve'), at 10 and 20 NFE")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.calibrated or args.calibrated_soft or args.calibrated_digits or args.calibrated_mining:
        return calibrated_section(args)
    t0 = time.perf_counter()
    kd, df = import_kdiffusion(), import_diffusers()
    n = 200 if args.quick else args.samples
    sde_names = ["vp"] if args.quick else list(SDES)
    tune = {k: v for k, v in TUNING_PROBLEMS.items() if not args.quick or k == "2d-asym"}
    unseen = {k: v for k, v in UNSEEN.items() if not args.quick or k == "12d-3comp"}
    cases = [Case.mixture(name, "tune", fn(), s, n, 0) for name, fn in tune.items()
             for s in sde_names]
    cases += [Case.mixture(name, "unseen", fn(), s, n, 0) for name, fn in unseen.items()
              for s in sde_names]
    methods = our_methods()
    results: dict = {}
    for case in cases:
        print(f"[{time.perf_counter() - t0:6.0f}s] {case.label} ({case.role})", flush=True)
        r = results[case.label] = {}
        for m in methods:
            for s in SPACINGS:
                for nfe in NFES:
                    r[(m.label, s, nfe)] = run_ours(case, m, nfe, spacing=s)
        for nfe in NFES:
            run_peers(r, case, kd, df, nfe)
    tune = [c for c in cases if c.role == "tune"]
    chosen = choose_spacings(results, methods, cases)
    best = {nfe: min(methods, key=lambda m: gmean([at_chosen(results, c, m, nfe, chosen)[0]
                                                   for c in tune]))
            for nfe in NFES}
    optimized: dict = {}
    if not args.no_optimize:
        for case in cases:
            print(f"[{time.perf_counter() - t0:6.0f}s] optimized grids: {case.label}", flush=True)
            for nfe in NFES:
                m = best[nfe]
                g = optimize_grid(case.model, case.sde, tuple(case.x_T.shape[1:]), m.solver, nfe,
                                  n=256, n_heldout=16, seed=100, dtype=DTYPE,
                                  spacing=chosen[(m.label, nfe, case.sde_name)], **m.options)
                optimized[(case.label, nfe)] = run_ours(case, m, nfe, ts=g.ts), g.seconds
    if args.digits_run.is_dir() and not args.quick:
        print(f"[{time.perf_counter() - t0:6.0f}s] digits model", flush=True)
        digits = digits_case(args.digits_run, 256)
        r = results[digits.label] = {}
        for m in methods:
            for nfe in NFES:
                sp = chosen[(m.label, nfe, digits.sde_name)]
                r[(m.label, sp, nfe)] = run_ours(digits, m, nfe, spacing=sp)
        for nfe in NFES:
            run_peers(r, digits, kd, df, nfe)
            if not args.no_optimize:
                m = best[nfe]
                g = optimize_grid(digits.model, digits.sde, tuple(digits.x_T.shape[1:]), m.solver,
                                  nfe, n=64, n_heldout=16, seed=100, evals=100,
                                  spacing=chosen[(m.label, nfe, digits.sde_name)], **m.options)
                optimized[(digits.label, nfe)] = run_ours(digits, m, nfe, ts=g.ts), g.seconds
        cases.append(digits)
    write_report(args, cases, methods, results, chosen, best, optimized, kd, df, t0)


def calibrated_section(args) -> None:
    """``--calibrated`` / ``--calibrated-soft``: :mod:`benchmarks.calibrated`, spliced into
    ``args.out``."""
    from benchmarks import calibrated

    out = args.out if not args.quick else args.out.with_name("fast_samplers_quick.md")
    if args.calibrated_digits:
        section = calibrated.digits(args.calibrated_digits, import_kdiffusion(),
                                    import_diffusers())
        marker = calibrated.DIGITS_MARKER
    elif args.calibrated_soft:
        section, marker = calibrated.soft_ablation(quick=args.quick), calibrated.SOFT_MARKER
    elif args.calibrated_mining:
        section = calibrated.mining_ablation(quick=args.quick)
        marker = calibrated.MINING_MARKER
    else:
        budget = args.calibrate_budget or calibrated.BUDGET_S
        rows, seconds = calibrated.run(import_kdiffusion(), import_diffusers(), quick=args.quick,
                                       budget_s=budget, only=args.cases,
                                       nfes=(10, 20) if args.cases else calibrated.NFES)
        command = "python -m benchmarks.fast_samplers --calibrated" + (
            f" --calibrate-budget {budget:g}" if args.calibrate_budget else "") + (
            " --cases " + " ".join(f"'{c}'" for c in args.cases) if args.cases else "") + (
            f" --out {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}"
            if args.cases or args.calibrate_budget else "")
        section = calibrated.report(rows, seconds, budget, command,
                                    n_test=200 if args.quick else calibrated.N_TEST)
        marker = calibrated.MARKER
        out.with_name(out.stem + "_calibrated.json").write_text(dumps_strict(rows, indent=1)
                                                                + "\n")
    print("\n".join(section))
    old = out.read_text() if out.is_file() else ""
    out.write_text(calibrated.splice(old, section, marker=marker))
    print(f"wrote the section {marker!r} of {out}")


def run_peers(r: dict, case: Case, kd, df, nfe: int) -> None:
    """Every peer at every spacing, into ``r[(name, spacing, nfe)] = (error, calls)``."""
    if kd is not None:
        for which, name in zip(("2m", "lms", "heun"), PEERS_KD):
            for sp in ("karras", "logsnr"):
                r[(name, sp, nfe)] = run_kdiff(kd, case, which, nfe, sp)
    if df is not None:
        for label in DIFFUSERS:
            for sp in DIFFUSERS_SPACINGS:
                r[("diffusers " + label, sp, nfe)] = _safe(run_diffusers, df, case, label, nfe,
                                                           sp)
        r[("diffusers iPNDM", "logsnr", nfe)] = run_diffusers_ipndm(df, case, nfe)


def _safe(fn, *args):
    """A peer run; a failure to set up (a noise level float32 cannot hold) is n/a (NaN)."""
    try:
        return fn(*args)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        print(f"  {fn.__name__}{args[2:]}: {type(e).__name__}: {str(e)[:80]}")
        return (math.nan, 0)


def digits_case(run_dir: Path, n: int) -> Case:
    """The trained digits model; reference: dopri5 at tol 1e-7 with the model, denoised by it."""
    from sde_gen.app.factory import data_shape
    from sde_gen.app.runs import load_run

    run = load_run(run_dir)
    x_T = run.sde.prior_sampling((n, *data_shape(run.cfg.data)),
                                 generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = sample(run.model, run.sde, None, "ode", x_T=x_T, t_min=run.sde.default_t_min,
                     rtol=1e-7, atol=1e-7).x
    return Case("digits (trained)", "unseen", run.cfg.sde.name, run.sde, run.model, x_T, ref)


# -- report ---------------------------------------------------------------------------------------
PEERS_KD = ("k-diff DPM++(2M)", "k-diff LMS", "k-diff Heun")


def best_peer(r: dict, name: str, nfe: int) -> tuple[float, str]:
    """A peer's least error over its spacings, and that spacing (NaN: it cannot run here)."""
    runs = [(v[0], sp) for (m, sp, k), v in r.items() if m == name and k == nfe]
    finite = [x for x in runs if not math.isnan(x[0])]
    return min(finite) if finite else (math.nan, "n/a")


def write_report(args, cases, methods, results, chosen, best, optimized, kd, df, t0) -> None:
    env = environment({"k-diffusion": kd, "diffusers": df})
    out = ["# Fast samplers: 5, 10 and 20 NFE against k-diffusion and diffusers", ""]
    out += [f"- **{k}**: `{v}`" if k == "command" else f"- **{k}**: {v}" for k, v in env.items()]
    out += [f"- **draws per case**: {200 if args.quick else args.samples} prior samples "
            "(float64; the digits model: 256 in float32); error = mean L2 distance to the exact "
            "PF-ODE endpoint from the same draws, denoised at eps", ""]
    tune = [c for c in cases if c.role == "tune"]
    sdes = [n for n in SDES if any(c.sde_name == n for c in tune)]
    out += ["## Spacings and the recommended solver, chosen on the tuning cases only", "",
            "For each method, NFE and SDE the spacing of least geometric-mean error over the "
            "tuning cases of that SDE (the project's three mixtures) is chosen; the recommended "
            "method per NFE is the one of least geometric mean over all tuning cases, each on "
            "its chosen spacing. No unseen case enters a choice. Spacings are listed as "
            + " / ".join(sdes) + ".", "",
            "| method | " + " | ".join(f"spacing @{n}" for n in NFES) + " | "
            + " | ".join(f"tuning gmean @{n}" for n in NFES) + " |",
            "| --- |" + " --- |" * len(NFES) + " ---: |" * len(NFES)]
    for m in methods:
        g = [gmean([at_chosen(results, c, m, n, chosen)[0] for c in tune]) for n in NFES]
        sp = [" / ".join(chosen[(m.label, n, sd)] for sd in sdes) for n in NFES]
        out.append(f"| {m.label} | " + " | ".join(sp) + " | " + " | ".join(fmt(v) for v in g)
                   + " |")
    out += ["", "Recommended (least tuning gmean): " + "; ".join(
        f"{n} NFE: **{best[n].label}**" for n in NFES), ""]
    peers = list(PEERS_KD) + ["diffusers " + k for k in DIFFUSERS] + ["diffusers iPNDM"]
    out += ["## Every case", "",
            "Ours at the spacing chosen above (`*`: recommended at some NFE; `(k)`: k calls, "
            "where the budget does not divide); `optimized`: the recommended solver of that NFE "
            "on a grid from `optimize_grid` (GITS, then descent), tuned on 256 other prior draws "
            "of the same case; peers at their best spacing for the case (named).", ""]
    goals = []
    for case in cases:
        r = results[case.label]
        out += [f"**{case.label}** ({case.role})", "",
                "| method | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
                "| --- |" + " ---: |" * len(NFES)]
        for m in methods:
            cells = []
            for n in NFES:
                e, calls = at_chosen(results, case, m, n, chosen)
                cells.append(fmt(e) + ("" if calls == n else f" ({calls})"))
            mark = " *" if any(best[n].label == m.label for n in NFES) else ""
            out.append(f"| ours {m.label}{mark} | " + " | ".join(cells) + " |")
        if optimized:
            cells = [f"{fmt(optimized[(case.label, n)][0][0])} ({best[n].label})"
                     if (case.label, n) in optimized else "n/a" for n in NFES]
            out.append("| ours, optimized grid | " + " | ".join(cells) + " |")
        for name in peers:
            if not any(k[0] == name for k in r):
                continue
            cells = []
            for n in NFES:
                e, sp = best_peer(r, name, n)
                cells.append("n/a" if math.isnan(e) else f"{fmt(e)} ({sp})")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
        goals.append(goal_row(case, r, chosen, best, optimized))
    out += goal_section(goals)
    out += [WIRING, f"Total runtime: {time.perf_counter() - t0:.0f} s."]
    text = "\n".join(out) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    raw = {label: {f"{m}|{sp}|{n}": v[0] for (m, sp, n), v in r.items()}
           for label, r in results.items()}
    args.out.with_suffix(".json").write_text(dumps_strict(
        {"results": raw, "chosen": {"|".join(map(str, k)): v for k, v in chosen.items()},
         "recommended": {n: best[n].label for n in NFES}}, indent=1) + "\n")
    print(f"wrote {args.out} and its .json (every method at every spacing)")


def goal_row(case: Case, r: dict, chosen: dict, best: dict, optimized: dict) -> dict:
    ours = {n: r[(best[n].label, chosen[(best[n].label, n, case.sde_name)], n)][0]
            for n in NFES}
    opt = {n: optimized[(case.label, n)][0][0] if (case.label, n) in optimized else math.nan
           for n in NFES}
    df10 = [best_peer(r, "diffusers " + k, 10)[0] for k in DIFFUSERS]
    df10 += [best_peer(r, "diffusers iPNDM", 10)[0]]
    df10 = [v for v in df10 if not math.isnan(v)]
    return {"case": case.label, "role": case.role, "ours10": ours[10], "ours20": ours[20],
            "opt10": opt[10], "opt20": opt[20], "df10": min(df10) if df10 else math.nan,
            "kd2m20": best_peer(r, "k-diff DPM++(2M)", 20)[0],
            "kd2m20_karras": r.get(("k-diff DPM++(2M)", "karras", 20), (math.nan, 0))[0],
            "kd_best20": min((best_peer(r, name, 20)[0] for name in PEERS_KD),
                             default=math.nan)}


def goal_section(rows: list[dict]) -> list[str]:
    def ratio(a: float, b: float) -> str:
        ok = all(math.isfinite(v) for v in (a, b)) and b > 0
        return f"{a / b:.2f}" if ok else "n/a"

    out = ["## Against the goals", "",
           "Goal: the recommended solver at 10 NFE <= 0.5x the best diffusers solver at 10 NFE "
           "(the best of all its schedulers and spacings for that case), and at 20 NFE <= 0.5x "
           "k-diffusion's DPM++(2M) at its best spacing (on Karras sigmas in parentheses). "
           "Stretch: ours at 10 NFE below k-diffusion's best solver at 20 NFE. `opt`: ours on "
           "the optimized grid.", "",
           "| case | role | 10: ours / best diffusers | opt | 20: ours / k-diff 2M (karras) "
           "| opt | stretch: ours@10 / k-diff best@20 | opt |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for g in rows:
        out.append(f"| {g['case']} | {g['role']} | {ratio(g['ours10'], g['df10'])} | "
                   f"{ratio(g['opt10'], g['df10'])} | {ratio(g['ours20'], g['kd2m20'])} "
                   f"({ratio(g['ours20'], g['kd2m20_karras'])}) | "
                   f"{ratio(g['opt20'], g['kd2m20'])} | {ratio(g['ours10'], g['kd_best20'])} | "
                   f"{ratio(g['opt10'], g['kd_best20'])} |")
    out.append("")
    return out


WIRING = """\
## How the peers are wired

- Same model (the exact mixture eps, or the trained network), same `x_T`, same NFE (counted by
  one wrapper), same start `T` and end `eps`, every method ending in a denoised sample at `eps`.
- **k-diffusion**: the VE-form state `x / alpha_t` at `sigma = sigma_t / alpha_t`, denoiser
  `D = (x - sigma_t eps) / alpha_t` at `t = t_from_log_snr(-log sigma)`; sigmas from
  `sigma_T/alpha_T` to `sigma_eps/alpha_eps` (Karras rho 7, or exponential = log-SNR uniform),
  then 0: the last step of DPM++(2M) and Heun, to 0, is the denoise. Heun makes 2 calls per
  sigma but the last, so an even budget runs one call short, as ours does.
- **diffusers** multistep schedulers: `trained_betas` built so that `abar_i = 1 / (1 +
  rho(t_i)^2)` with `t_i = sde.index_to_time(i)` and `rho = sigma/alpha`: timestep `i`'s noise
  level is exactly ours at `t_i`, for VP, sub-VP and VE alike. The state is diffusers'
  `x_d = y / sqrt(1 + rho^2)` with `y = x / alpha_t` (eps is the same in both), and the model is
  called at our `t` of the scheduler's `sigmas[k]`. `final_sigmas_type="zero"` (UniPC, DPM++):
  the last step to sigma 0 is the denoise. DEIS ends with a zero-length step at sigma_min,
  which we skip and replace with the denoise (in its favour). Spacings: `linspace`,
  `use_karras_sigmas`, `use_exponential_sigmas`; each case reports the best. diffusers keeps
  `alphas_cumprod` in float32, so sub-VP's end noise level (sigma/alpha about 1e-4 at eps = 1e-3,
  `abar = 1 - 1e-8`) rounds to 0: those rows are n/a. UniPC bh1 returns NaN at its final step
  (infinity times zero) in diffusers 0.42.1: shown as inf.
- **diffusers iPNDM** (`IPNDMScheduler`): `trained_betas` = the VP-form levels `sin = rho /
  sqrt(1 + rho^2)` of our log-SNR grid, then 0; it expects a v-prediction, given as
  `v = (eps - sin x) / cos`.
"""


if __name__ == "__main__":
    main()
