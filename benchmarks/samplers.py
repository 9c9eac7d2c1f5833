"""Quality versus NFE for every sampler, driven by the exact score of analytic Gaussian mixtures.

For each problem (a 2-D asymmetric mixture, a D = 8 anisotropic mixture with full covariances) and
SDE (VP, sub-VP, VE) every solver of :func:`sde_gen.sampling.sample` runs at several NFE budgets
from one fixed prior draw ``x_T``, with the model ``GaussianMixture.eps_model(sde)``. Reported:

- ``NFE``: ``SampleResult.nfe`` (counted calls; peers: calls counted by the same wrapper);
- ``ODE err``: for deterministic solvers, mean L2 distance to the exact probability-flow ODE
  endpoint from the same ``x_T`` (dopri5 at tol 1e-10 in float64 to the sampler's end time, then
  the exact Tweedie denoiser ``gm.denoise`` there, since every sampler here ends with a denoise);
- ``SW2``: sliced Wasserstein-2 to fresh data (the two-sample noise floor is printed with it);
- ``wall``: seconds for the call, and ``overhead``: the fraction of it spent outside model calls
  (measured in process CPU time, which other processes on a shared machine do not inflate).

Peers (optional, pyproject extra ``bench``), on VP only, with the same model, ``x_T`` and NFE:
k-diffusion's ``sample_dpmpp_2m`` / ``sample_lms`` and diffusers' ``DDIMScheduler`` /
``DPMSolverMultistepScheduler``; missing peers are skipped with a note. How each is wired is
written into the results file.

Usage::

    python benchmarks/samplers.py            # full run (a few minutes on 2 CPU cores)
    python benchmarks/samplers.py --quick    # smoke run (under a minute)

Refs: [Lu22pp] DPM-Solver++; [Karras22] EDM; [Song21] Eq. (13); [Song21ddim].
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.peers import import_diffusers, import_kdiffusion, kdiffusion_denoiser, ve_sigma
from sde_gen.analytic import GaussianMixture
from sde_gen.data.toy2d import eight_gaussians
from sde_gen.metrics import sliced_wasserstein
from sde_gen.sampling import SOLVERS, make_grid, sample
from sde_gen.sde import SDE, VESDE, VPSDE, SubVPSDE

ROOT = Path(__file__).resolve().parents[1]

DTYPE = torch.float64  # solver error, not float32 rounding, is what the tables measure
REF_TOL = 1e-10
SW_PROJECTIONS = 256
SW_SEED = 1234


# -- problems -------------------------------------------------------------------------------------
def asymmetric_2d() -> GaussianMixture:
    """Three tilted, unequal Gaussians with weights 0.55 / 0.30 / 0.15."""
    means = torch.tensor([[-1.2, 0.6], [0.9, 1.1], [0.4, -1.3]], dtype=torch.float64)
    covs = torch.tensor(
        [[[0.08, 0.03], [0.03, 0.04]], [[0.02, -0.01], [-0.01, 0.06]], [[0.15, 0.0], [0.0, 0.01]]],
        dtype=torch.float64,
    )
    return GaussianMixture(means, covs, torch.tensor([0.55, 0.30, 0.15]))


def anisotropic_8d(seed: int = 0) -> GaussianMixture:
    """Four Gaussians in D = 8, random rotations of variances 0.005 .. 0.5, weights 0.4 .. 0.1."""
    g = torch.Generator().manual_seed(seed)
    k, d = 4, 8
    means = 1.5 * torch.randn(k, d, generator=g, dtype=torch.float64)
    variances = torch.logspace(-2.3, -0.3, d, dtype=torch.float64)
    covs = []
    for _ in range(k):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        covs.append(q @ torch.diag(variances) @ q.T)
    return GaussianMixture(means, torch.stack(covs), torch.tensor([0.4, 0.3, 0.2, 0.1]))


PROBLEMS: dict[str, Callable[[], GaussianMixture]] = {
    "2d-asym": asymmetric_2d,
    "8d-aniso": anisotropic_8d,
    "8gaussians": eight_gaussians,
}
SDES: dict[str, Callable[[], SDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


# -- timing and references ------------------------------------------------------------------------
class Clock:
    """Wall and process-CPU seconds of a ``with`` block (``wall``, ``cpu``)."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


class TimedModel:
    """Wraps ``model(x, t)``; counts calls and accumulates the CPU seconds spent inside them."""

    def __init__(self, model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.model, self.calls, self.cpu = model, 0, 0.0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        start = time.process_time()
        out = self.model(x, t)
        self.cpu += time.process_time() - start
        self.calls += 1
        return out


def overhead(clock: Clock, model: TimedModel) -> float:
    """Fraction of the run's CPU time spent outside model calls."""
    return max(0.0, clock.cpu - model.cpu) / max(clock.cpu, 1e-12)


@dataclass
class Row:
    method: str
    nfe: int
    err: float | None
    sw2: float
    wall: float
    overhead: float
    note: str = ""


class Problem:
    """One mixture under one SDE: a fixed ``x_T``, fresh data, and cached exact references."""

    def __init__(self, name: str, gm: GaussianMixture, sde_name: str, n: int, seed: int) -> None:
        self.name, self.gm, self.sde_name = name, gm, sde_name
        self.sde = SDES[sde_name]()
        g = torch.Generator().manual_seed(seed)
        self.x_T = self.sde.prior_sampling((n, gm.dim), generator=g, dtype=DTYPE)
        self.data = gm.sample(n, generator=g, dtype=DTYPE)
        floors = torch.tensor([self.sw2(gm.sample(n, generator=g, dtype=DTYPE)) for _ in range(5)])
        self.floor, self.floor_sd = float(floors.mean()), float(floors.std())
        self._refs: dict[tuple[float, float], torch.Tensor] = {}

    @property
    def label(self) -> str:
        return f"{self.name} / {self.sde_name}"

    @property
    def header(self) -> str:
        return (f"**{self.label}** (SW2 two-sample noise floor: fresh data vs data, "
                f"{self.floor:.3f} +- {self.floor_sd:.3f} over 5 draws)")

    def model(self) -> TimedModel:
        return TimedModel(self.gm.eps_model(self.sde))

    def sw2(self, x: torch.Tensor) -> float:
        g = torch.Generator().manual_seed(SW_SEED)  # the same projections for every row
        return float(sliced_wasserstein(x, self.data, n_projections=SW_PROJECTIONS, generator=g))

    def reference(self, t_end: float, t_start: float | None = None) -> torch.Tensor:
        """Exact PF-ODE endpoint from ``x_T`` at ``t_start`` (default T), denoised at ``t_end``."""
        key = (self.sde.T if t_start is None else t_start, t_end)
        if key not in self._refs:
            x = self.gm.ode_endpoint(self.sde, self.x_T, t_end, t_start=key[0], tol=REF_TOL)
            t = torch.full((x.shape[0],), t_end, dtype=torch.float64)
            self._refs[key] = self.gm.denoise(x, t, self.sde)
        return self._refs[key]

    def err(self, x: torch.Tensor, t_end: float, t_start: float | None = None) -> float:
        return float((x.to(torch.float64) - self.reference(t_end, t_start)).norm(dim=1).mean())

    def row(self, method: str, x: torch.Tensor, nfe: int, clock: Clock, model: TimedModel, *,
            t_end: float | None, t_start: float | None = None, note: str = "") -> Row:
        err = None if t_end is None else self.err(x, t_end, t_start)
        return Row(method, nfe, err, self.sw2(x), clock.wall, overhead(clock, model), note)


# -- our solvers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    label: str
    solver: str
    calls_per_step: int  # NFE per grid interval (the final denoise adds one)
    deterministic: bool
    options: tuple = ()


#: Labels and option variants worth a row of their own; every other fixed-step solver of the
#: registry gets one row with its defaults, so a new solver is benchmarked without an edit here.
VARIANTS = {
    "sde": [("sde (EM)", ())],
    "pc": [("pc (RD + Langevin)", ())],
    "dpm": [("dpm order 2", (("order", 2),)), ("dpm order 3", (("order", 3),))],
}


def _configs() -> tuple[Config, ...]:
    """One :class:`Config` per variant of each fixed-step solver in ``SOLVERS``."""
    out = []
    for name, spec in SOLVERS.items():
        for label, options in VARIANTS.get(name, [(name, ())]):
            full = spec.resolve(name, dict(options))
            per_step = spec.calls_per_step(full)
            if per_step is None:  # adaptive (ode): rows by tolerance, see sweep_ours
                continue
            out.append(Config(label, name, per_step, not spec.is_stochastic(full), options))
    return tuple(out)


CONFIGS = _configs()
ODE_TOLS = (1e-3, 1e-5)


def run_ours(p: Problem, cfg: Config, nfe: int, **extra) -> Row:
    steps = max(1, math.ceil((nfe - 1) / cfg.calls_per_step))
    return run_sample(p, cfg.label, cfg.solver, deterministic=cfg.deterministic, steps=steps,
                      **dict(cfg.options), **extra)


def run_sample(p: Problem, label: str, solver: str, *, deterministic: bool, note: str = "",
               **kw) -> Row:
    model = p.model()
    g = torch.Generator().manual_seed(7)
    with Clock() as clock:
        res = sample(model, p.sde, p.x_T.shape, solver, x_T=p.x_T, generator=g, **kw)
    assert res.nfe == model.calls, (res.nfe, model.calls)
    t_end = float(res.ts[-1]) if deterministic else None
    return p.row(label, res.x, res.nfe, clock, model, t_end=t_end, note=note)


def warm_up(kd, df) -> None:
    """One tiny run of every code path, so that first-call costs stay out of the timings."""
    p = Problem("2d-asym", asymmetric_2d(), "vp", 16, 0)
    sweep_ours(p, [10], [10])
    run_sample(p, "", "dpm", deterministic=True, steps=9, spacing="quadratic", order=3)
    if kd is not None:
        run_kdiff(p, kd, "2m", 10, 1e-3, "karras")
        run_kdiff(p, kd, "lms", 10, 1e-3, "logsnr")
    if df is not None:
        run_diffusers(p, df, "ddim", 10)
        run_diffusers(p, df, "dpm", 10, timesteps=snapped_logsnr_indices(p.sde, 10, 1e-3))


def sweep_ours(p: Problem, det_nfes: list[int], sto_nfes: list[int]) -> list[Row]:
    rows = []
    for cfg in CONFIGS:
        for nfe in det_nfes if cfg.deterministic else sto_nfes:
            rows.append(run_ours(p, cfg, nfe))
    for tol in ODE_TOLS:
        rows.append(run_sample(p, f"ode (dopri5, tol {tol:g})", "ode", deterministic=True,
                               rtol=tol, atol=tol))
    return rows


# -- peers ----------------------------------------------------------------------------------------
def sigma_ends(sde: SDE, eps: float) -> tuple[float, float]:
    """``(sigma_max, sigma_min)`` of the VE-form state ``x / alpha``: ``sigma/alpha`` at T, eps."""
    return ve_sigma(sde, sde.T), ve_sigma(sde, eps)


def kdiff_sigmas(kd, sde: SDE, nfe: int, eps: float, spacing: str) -> torch.Tensor:
    """``nfe`` noise levels from sigma_max to sigma_min, then 0 (k-diffusion's convention)."""
    s_max, s_min = sigma_ends(sde, eps)
    if spacing == "karras":
        sigmas = kd.get_sigmas_karras(nfe, s_min, s_max, rho=7.0)
    else:  # uniform in log sigma = uniform in log-SNR
        sigmas = kd.get_sigmas_exponential(nfe, s_min, s_max)
    return sigmas.to(DTYPE)


def run_kdiff(p: Problem, kd, which: str, nfe: int, eps: float, spacing: str) -> Row:
    model = p.model()
    sigmas = kdiff_sigmas(kd, p.sde, nfe, eps, spacing)
    alpha_T = float(p.sde.marginal_coeffs(torch.tensor([p.sde.T], dtype=torch.float64))[0])
    fn = kd.sample_dpmpp_2m if which == "2m" else kd.sample_lms
    with Clock() as clock, torch.no_grad():
        x = fn(kdiffusion_denoiser(p.sde, model), p.x_T / alpha_T, sigmas, disable=True)
    name = "k-diff DPM++(2M)" if which == "2m" else "k-diff LMS(4)"
    return p.row(f"{name} {spacing}", x, model.calls, clock, model, t_end=eps)


def diffusers_config() -> dict:
    return {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
            "beta_schedule": "linear", "prediction_type": "epsilon"}


def run_diffusers(p: Problem, df, which: str, nfe: int,
                  timesteps: list[int] | None = None) -> tuple[Row, list[int]]:
    """Drive a diffusers scheduler with the eps model at ``t = sde.index_to_time(timestep)``."""
    model = p.model()
    if which == "ddim":
        sched = df.DDIMScheduler(**diffusers_config(), clip_sample=False, set_alpha_to_one=True,
                                 timestep_spacing="trailing")
        sched.set_timesteps(nfe)
    else:
        sched = df.DPMSolverMultistepScheduler(
            **diffusers_config(), algorithm_type="dpmsolver++", solver_order=2,
            lower_order_final=True, final_sigmas_type="zero")
        if timesteps is None:
            sched.set_timesteps(nfe)
        else:
            sched.set_timesteps(timesteps=timesteps)
    steps = [int(s) for s in sched.timesteps]
    x = p.x_T.clone()
    n = x.shape[0]
    with Clock() as clock, torch.no_grad():
        for s in steps:
            t = p.sde.index_to_time(torch.tensor(s)).to(DTYPE).expand(n)
            eps = model(x, t)
            if which == "ddim":
                x = sched.step(eps, s, x, eta=0.0).prev_sample
            else:
                x = sched.step(eps, s, x).prev_sample
    t_start = float(p.sde.index_to_time(torch.tensor(steps[0])))
    t_end = float(p.sde.index_to_time(torch.tensor(steps[-1])))
    name = "diffusers DDIM (trailing)" if which == "ddim" else (
        "diffusers DPM++(2M) " + ("linspace" if timesteps is None else "our logsnr grid, snapped"))
    row = p.row(name, x, model.calls, clock, model, t_end=t_end, t_start=t_start,
                note=f"t {t_start:.3f} -> {t_end:.3f}")
    return row, steps


def snapped_logsnr_indices(sde: SDE, nfe: int, eps: float) -> list[int]:
    """Our logsnr grid, ``nfe - 1`` intervals, on the 1000-step chain, kept strictly decreasing."""
    idx = sde.time_to_index(make_grid(sde, nfe - 1, t_min=eps, spacing="logsnr")).tolist()
    for k in range(len(idx) - 2, -1, -1):  # from the clean end upwards, one step apart at least
        idx[k] = max(idx[k], idx[k + 1] + 1)
    return idx


# -- sections -------------------------------------------------------------------------------------
def dpm_vs_kdiff(p: Problem, kd, nfes: list[int], eps_list: list[float]) -> list[tuple]:
    """Our dpm (order x spacing) against k-diffusion DPM++(2M): same NFE, sigma_max, sigma_min."""
    out = []
    for eps in eps_list:
        for nfe in nfes:
            peer = {}
            if kd is not None:
                for spacing in ("karras", "logsnr"):
                    peer[f"2m-{spacing}"] = run_kdiff(p, kd, "2m", nfe, eps, spacing)
                peer["lms-karras"] = run_kdiff(p, kd, "lms", nfe, eps, "karras")
            ours = {}
            for order in (2, 3):
                for spacing in ("logsnr", "karras", "quadratic"):
                    ours[f"dpm{order}-{spacing}"] = run_sample(
                        p, f"dpm{order} {spacing}", "dpm", deterministic=True, steps=nfe - 1,
                        t_min=eps, spacing=spacing, order=order)
            ours["dpm3-logsnr-noLOF"] = run_sample(
                p, "dpm3 logsnr no LOF", "dpm", deterministic=True, steps=nfe - 1, t_min=eps,
                spacing="logsnr", order=3, lower_order_final=False)
            out.append((eps, nfe, peer, ours))
    return out


def peers_vp(p: Problem, kd, df, nfes: list[int]) -> list[Row]:
    """Every peer at each NFE, each next to our solver on the identical grid."""
    rows: list[Row] = []
    eps = p.sde.default_t_min
    for nfe in nfes:
        if kd is not None:
            rows.append(run_kdiff(p, kd, "2m", nfe, eps, "karras"))
            rows.append(run_kdiff(p, kd, "lms", nfe, eps, "karras"))
        rows.append(run_sample(p, "ours dpm2 logsnr (default)", "dpm", deterministic=True,
                               steps=nfe - 1, t_min=eps, order=2))
        if df is None:
            continue
        row, steps = run_diffusers(p, df, "ddim", nfe)
        rows.append(row)
        ts = p.sde.index_to_time(torch.tensor(steps))
        rows.append(run_sample(p, "ours ddim, same grid, discrete abar", "ddim", deterministic=True,
                               ts=ts, discrete=True, note=row.note))
        rows.append(run_sample(p, "ours ddim, same grid, continuous", "ddim", deterministic=True,
                               ts=ts, note=row.note))
        for timesteps in (None, snapped_logsnr_indices(p.sde, nfe, eps)):
            row, steps = run_diffusers(p, df, "dpm", nfe, timesteps=timesteps)
            rows.append(row)
            ts = p.sde.index_to_time(torch.tensor(steps))
            rows.append(run_sample(p, "ours dpm2, same grid", "dpm", deterministic=True, ts=ts,
                                   order=2, note=row.note))
            if len(ts) - 1 < 15:  # where our lower_order_final differs from diffusers'
                rows.append(run_sample(p, "ours dpm2, same grid, lower_order_final=False", "dpm",
                                       deterministic=True, ts=ts, order=2,
                                       lower_order_final=False, note=row.note))
    return rows


# -- formatting -----------------------------------------------------------------------------------
def fmt(v: float | None, spec: str = ".2e") -> str:
    return "n/a" if v is None else format(v, spec)


def family(method: str) -> str:
    """Method name without its grid or settings, for the overhead summary."""
    for cut in (" (", " karras", " linspace", " our "):
        method = method.split(cut)[0]
    return method


def rows_table(rows: list[Row]) -> list[str]:
    lines = ["| method | NFE | ODE err | SW2 | wall s | overhead | note |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r.method} | {r.nfe} | {fmt(r.err)} | {r.sw2:.3f} | {r.wall:.3f} | "
                     f"{100 * r.overhead:.0f}% | {r.note} |")
    return lines


def dpm_table(name: str, results: list[tuple]) -> list[str]:
    peers = ["2m-karras", "2m-logsnr", "lms-karras"]
    ours = [f"dpm{o}-{s}" for o in (2, 3) for s in ("logsnr", "karras", "quadratic")]
    ours.insert(4, "dpm3-logsnr-noLOF")
    ratios = ["dpm2-logsnr", "dpm3-logsnr", "dpm3-logsnr-noLOF"]
    has_peer = any(res[2] for res in results)
    cols = (peers if has_peer else []) + ours
    lines = [f"{name}: ODE err (mean L2 distance to the exact PF-ODE endpoint, Tweedie-denoised "
             "at eps)" + ("; ratio = ours / k-diff DPM++(2M) karras at the same eps and NFE"
                          if has_peer else ""),
             "",
             "| eps | NFE | " + " | ".join(f"`{c}`" for c in cols)
             + ("".join(f" | ratio `{c}`" for c in ratios) + " | best ours: ratio |"
                if has_peer else " |"),
             "| ---: | ---: |" + " ---: |" * len(cols)
             + (" ---: |" * len(ratios) + " --- |" if has_peer else "")]
    for eps, nfe, peer, mine in results:
        nfes = {r.nfe for r in list(peer.values()) + list(mine.values())}
        assert nfes == {nfe}, (nfe, nfes)
        cells = [fmt(peer[c].err) for c in cols if c in peer] + [fmt(mine[c].err) for c in ours]
        line = f"| {eps:g} | {nfe} | " + " | ".join(cells) + " |"
        if has_peer:
            base = peer["2m-karras"].err
            best = min(ours, key=lambda c: mine[c].err)
            line += "".join(f" {mine[c].err / base:.2f} |" for c in ratios)
            line += f" `{best}`: {mine[best].err / base:.2f} |"
        lines.append(line)
    return lines


SECTION1 = """\
VP, start T = 1 (sigma_max = sigma_T/alpha_T), end eps (sigma_min = sigma_eps/alpha_eps), every
method finishing with one Tweedie denoise at eps. `2m-*`/`lms-*`: k-diffusion `sample_dpmpp_2m` /
`sample_lms` on karras (rho 7) or log-SNR-uniform sigmas. `dpm{order}-{spacing}`:
`sample(..., "dpm", steps=NFE-1, t_min=eps, spacing=..., order=...)`; `dpm2-logsnr` is the package
default. `noLOF`: `lower_order_final=False` (differs only below 15 steps). On one grid `dpm2` and
k-diffusion's 2M are the same update (compare `2m-logsnr` with `dpm2-logsnr`, `2m-karras` with
`dpm2-karras`; they differ only at 10 NFE, through our `lower_order_final`)."""

SECTION3 = """\
Package defaults for grid and end time (`eps` = 1e-3 VP/sub-VP, 1e-5 VE; spacing `uniform` except
`dpm` logsnr and `heun` karras); NFE budgets map to `steps = ceil((NFE - 1) / calls per step)`
(heun and pc make 2 calls per step), plus the final denoise. Stochastic solvers have no ODE error.
`overhead` = (CPU time of the call - CPU time inside model calls) / CPU time of the call."""

WIRING = """\
### How the peers are wired

All peers get the same analytic eps model (`GaussianMixture.eps_model(VPSDE())`, counted and timed
by the same wrapper), the same float64 `x_T` and the same NFE; their outputs are compared with the
exact PF-ODE endpoint from that `x_T` over *their own* start and end times, Tweedie-denoised at the
end time (every method here finishes with one denoising evaluation).

- **k-diffusion** (`sample_dpmpp_2m`, `sample_lms` with order 4) works on the VE-form state
  `x_ve = x_vp / alpha_t` at noise level `sigma = sigma_t / alpha_t`. Denoiser:
  `D(x_ve, sigma) = (x - sigma_t eps(x, t)) / alpha_t` with `t = sde.t_from_log_snr(-log sigma)`
  and `x = alpha_t x_ve`. Start `x_T / alpha_T`. Sigmas: `get_sigmas_karras(NFE, sigma_min,
  sigma_max, rho=7)` (`karras`) or `get_sigmas_exponential` (`logsnr`, uniform in log-SNR, i.e.
  our `logsnr` grid), with `sigma_max = sigma_T / alpha_T` (about 152 for VP at T = 1) and
  `sigma_min = sigma_eps / alpha_eps` (0.0105 at eps = 1e-3), then 0 appended. NFE = number of
  nonzero sigmas; the last step (to sigma = 0) of DPM++(2M) is exactly the Tweedie denoise at
  `sigma_min`, the same final evaluation our `sample(..., denoise=True)` makes. LMS integrates the
  last interval to sigma = 0 instead; that differs from Tweedie-at-`sigma_min` only at second
  order in `sigma_min`.
- **Ours** on the same budget: `sample(model, sde, shape, "dpm", steps=NFE - 1, t_min=eps,
  spacing=..., order=...)`: NFE - 1 solver steps from T to eps plus the final denoise. On the same
  grid, `dpm` order 2 and k-diffusion DPM++(2M) are the same algorithm; they differ only where
  our `lower_order_final` applies (fewer than 15 steps: our last step into eps is first order).
- **diffusers** `DDIMScheduler` (`clip_sample=False`, `set_alpha_to_one=True`,
  `timestep_spacing="trailing"`, `eta=0`) and `DPMSolverMultistepScheduler`
  (`algorithm_type="dpmsolver++"`, `solver_order=2`, `lower_order_final=True`,
  `final_sigmas_type="zero"`), both with `beta_start=1e-4, beta_end=0.02, linear`, 1000 train
  steps, `prediction_type="epsilon"`. The model is called at continuous time
  `t = VPSDE.index_to_time(timestep) = (timestep + 1) / 1000`, while the schedulers use the
  discrete `abar` (off the continuous `alpha_t^2` by a few 1e-3), so part of their error is that
  mismatch, not the solver. DDIM's step goes to `timestep - 1000 // NFE` (trailing spacing keeps
  that consistent and starts at timestep 999 = T) and its last step returns the x0-prediction at
  the last timestep; DPM-Solver's final step (to sigma 0) is first order, i.e. the same denoise.
  The reference for each run starts at its first timestep's time and is denoised at its last
  timestep's time (column *note*); the rows beneath it run our solver on that identical grid
  (`sample(..., ts=index_to_time(timesteps))`, `discrete=True` reproducing the scheduler's abar).
  `our logsnr grid, snapped` passes our logsnr grid, rounded to distinct chain steps, as custom
  `timesteps` (start 999, end 0, i.e. T and eps = 1e-3: the same ends as ours).
- **Timing.** The peers' glue (k-diffusion's sigma -> t conversion and Tweedie wrapper, the
  diffusers loop's timestep -> t mapping) counts as their overhead, as `sample()`'s own glue counts
  as ours. `wall` is elapsed time and grows when other processes share the CPU (the load average
  at start is in the header); `overhead` uses CPU time and is not affected by that.
"""


def environment(peers: dict[str, object]) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    versions = []
    for name, mod in peers.items():
        try:
            ver = version(name)
        except PackageNotFoundError:
            ver = "not installed"
        versions.append(f"{name} {ver}" + ("" if mod is not None else " (not used)"))
    try:
        load = "load average at start: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = ""
    return {
        "device": f"CPU: {cpu}, {os.cpu_count()} cores (torch threads: "
                  f"{torch.get_num_threads()}); {load}",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "peers": ", ".join(versions),
        "python": platform.python_version(),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }


# -- main -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="sub-minute smoke run (VP, 2-D, few NFE)")
    ap.add_argument("--samples", type=int, default=None,
                    help="samples per run (default 2000; 500 with --quick)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "samplers.md",
                    help="markdown output file")
    ap.add_argument("--no-peers", action="store_true", help="skip k-diffusion and diffusers")
    ap.add_argument("--seed", type=int, default=0, help="seed of x_T and of the data samples")
    args = ap.parse_args(argv)
    if args.samples is not None and args.samples < 10:
        ap.error("--samples must be at least 10")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    n = args.samples or (500 if args.quick else 2000)
    if args.quick:
        sweep = {"2d-asym": ["vp"]}
        det_nfes, sto_nfes, peer_nfes = [10, 20, 50], [50, 200], [20]
        cmp_nfes, cmp_eps = [20], [1e-3]
        cmp_problems = ["2d-asym"]
    else:
        sweep = {"2d-asym": ["vp", "subvp", "ve"], "8d-aniso": ["vp", "subvp", "ve"]}
        det_nfes, sto_nfes = [10, 20, 50, 100, 200], [50, 200, 1000]
        peer_nfes, cmp_nfes, cmp_eps = [10, 20, 50], [10, 20, 50], [1e-3, 1e-4]
        cmp_problems = ["2d-asym", "8gaussians", "8d-aniso"]
    kd = None if args.no_peers else import_kdiffusion()
    df = None if args.no_peers else import_diffusers()
    warm_up(kd, df)
    notes = []
    if args.no_peers:
        notes.append("Peers skipped (`--no-peers`).")
    else:
        notes += [f"{name} not installed: its rows are skipped." for name, mod in
                  (("k-diffusion", kd), ("diffusers", df)) if mod is None]

    env = environment({"k-diffusion": kd, "diffusers": df})
    out = ["# Sampler benchmark: quality vs NFE with the exact mixture score", ""]
    out += [f"- **{k}**: `{v}`" if k == "command" else f"- **{k}**: {v}" for k, v in env.items()]
    out += [(f"- **samples per run**: {n} (state and model in float64); SW2 with "
             f"{SW_PROJECTIONS} projections; reference: dopri5 at tol {REF_TOL:g}")]
    out += [f"- {note}" for note in notes] + [""]

    # 1. dpm vs k-diffusion
    out += ["## 1. `dpm` against k-diffusion DPM++(2M) (same NFE, sigma_max, sigma_min)", "",
            SECTION1, ""]
    summary = []
    for name in cmp_problems:
        p = Problem(name, PROBLEMS[name](), "vp", n, args.seed)
        print(f"[{time.perf_counter() - t0:6.1f}s] dpm vs k-diffusion: {p.label}", flush=True)
        results = dpm_vs_kdiff(p, kd, cmp_nfes, cmp_eps)
        out += dpm_table(f"**{p.label}**", results) + [""]
        for eps, nfe, peer, mine in results:
            if nfe == 20 and eps == cmp_eps[0] and peer:
                base = peer["2m-karras"].err
                summary.append(
                    f"- {p.label}, 20 NFE, eps {eps:g}: k-diff DPM++(2M) karras {base:.2e}; "
                    f"ours default (order 3, `dpm3-logsnr`) {mine['dpm3-logsnr'].err:.2e} "
                    f"(ratio {mine['dpm3-logsnr'].err / base:.2f}), order 2 `dpm2-logsnr` "
                    f"{mine['dpm2-logsnr'].err:.2e} (ratio {mine['dpm2-logsnr'].err / base:.2f}); "
                    f"k-diff 2M on our logsnr grid {peer['2m-logsnr'].err:.2e}.")
    if summary:
        out += ["Summary at 20 NFE (goal: ratio <= 0.5):", ""] + summary + [""]

    # 2. peers on VP, next to ours on identical grids
    overheads: dict[str, list[float]] = {}
    out += ["## 2. Peers on VP, each beside our solver on the identical grid", ""]
    for name in sweep:
        p = Problem(name, PROBLEMS[name](), "vp", n, args.seed)
        print(f"[{time.perf_counter() - t0:6.1f}s] peers: {p.label}", flush=True)
        rows = peers_vp(p, kd, df, peer_nfes)
        for r in rows:
            if not r.method.startswith("ours"):
                overheads.setdefault(family(r.method), []).append(r.overhead)
        out += [p.header, ""] + rows_table(rows) + [""]
    out += [WIRING]

    # 3. every solver of ours
    out += ["## 3. Every solver, every SDE", "", SECTION3, ""]
    for name, sde_names in sweep.items():
        for sde_name in sde_names:
            p = Problem(name, PROBLEMS[name](), sde_name, n, args.seed)
            print(f"[{time.perf_counter() - t0:6.1f}s] sweep: {p.label}", flush=True)
            rows = sweep_ours(p, det_nfes, sto_nfes)
            for r in rows:
                overheads.setdefault(family(r.method), []).append(r.overhead)
            out += [p.header, ""] + rows_table(rows) + [""]
    medians = ", ".join(f"{k} {100 * sorted(v)[len(v) // 2]:.0f}%" for k, v in overheads.items())
    out += [("Median overhead fraction (CPU time outside model calls / CPU time) per method over "
             f"sections 2 and 3: {medians}"), ""]
    total = time.perf_counter() - t0
    out += [f"Total runtime: {total:.0f} s."]
    text = "\n".join(out) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} in {total:.0f} s")


if __name__ == "__main__":
    main()
