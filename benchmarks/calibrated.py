"""The calibrated default solver (``sde_gen.sampling.calibrate``, LD3) at 4-20 NFE against the
best diffusers and k-diffusion solver of each case at the same NFE, on exact mixtures under every
path: the "Calibrated" section of ``benchmarks/results/fast_samplers.md``.

Run through ``python -m benchmarks.fast_samplers --calibrated`` (about 15 CPU minutes), which
replaces that section of the results file and keeps the rest.

Every method starts from the same 4000 prior draws ``x_T`` (seed 0) and is scored by the mean L2
distance of its denoised samples to the exact probability-flow endpoint from those draws (dopri5
at tol 1e-10 with the exact mixture score, denoised exactly at ``t_min``; the diffusers flow
schedulers, which step to sigma = 0, against the exact endpoint at 1e-6), with a paired bootstrap
interval of ours / the best peer. 4000 draws, not 500: the error is heavy-tailed (a draw routed
to the wrong mode costs the distance between modes), and on the 12-D VE mixture 3 of 500 draws
held 85 % of every method's error at 10 and 20 NFE. The calibration never
sees these draws: it draws its own 256 tuning and 128 validation draws (seed 100) and solves its
own teacher with the same exact model at tol 1e-7, as it would for a trained model.

Cases. **Tuning** (``role = tune``): 2-D asymmetric and 8-D anisotropic mixtures of
``benchmarks/samplers.py``; the calibration's settings (hard loss, step size, start) were chosen
on these. **Unseen**: the 2-D/4-component and 12-D/3-component mixtures of
``benchmarks/fast_samplers.py``. Each under VP, sub-VP, VE, flow and trig.

Peers: on VP, sub-VP and VE every solver and spacing of ``benchmarks/fast_samplers.py``
(k-diffusion DPM++(2M), LMS, Heun; diffusers UniPC, DPM++ 3M, DEIS, iPNDM); on the flow path the
diffusers flow-matching schedulers of ``benchmarks/flow_paths.py`` (Euler, UniPC bh2-2/3, DPM++
2M, each on its own sigmas and on Karras sigmas); k-diffusion is not wired on the flow paths
(``sigma_T / alpha_T`` is infinite there), and no peer ships the trig path. Each peer is at its
best configuration for the case (in its favour).
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import torch

from benchmarks import fast_samplers as fs
from benchmarks import flow_paths as fp
from benchmarks.common import mean_l2, paired_ratio_ci, recording
from benchmarks.samplers import PROBLEMS as TUNING_PROBLEMS
from sde_gen.sampling import CALIBRATABLE, calibrate, sample
from sde_gen.sampling.calibrate import teacher
from sde_gen.sde import SDES

F64 = torch.float64
NFES = (4, 5, 6, 8, 10, 20)
PATHS = ("vp", "subvp", "ve", "flow", "trig")
TUNE = ("2d-asym", "8d-aniso")
UNSEEN = ("2d-4comp", "12d-3comp")
#: Seconds of descent per calibration (the shared teacher solve comes on top).
BUDGET_S = 5.0
#: Held-out prior draws per case (``--quick``: 200).
N_TEST = 4000
MARKER = "## Calibrated: the learned grid against the best peer at 4-20 NFE"


def _case(name: str, role: str, path: str, n: int) -> SimpleNamespace:
    gm = TUNING_PROBLEMS[name]() if role == "tune" else fs.UNSEEN[name]()
    sde = SDES[path]()
    x_T = sde.prior_sampling((n, gm.dim), generator=torch.Generator().manual_seed(0), dtype=F64)
    t_min = sde.default_t_min
    ref = gm.denoise(gm.ode_endpoint(sde, x_T, t_min, tol=1e-10),
                     torch.full((n,), t_min, dtype=F64), sde)
    return SimpleNamespace(name=name, role=role, path=path, gm=gm, sde=sde, x_T=x_T, ref=ref,
                           model=gm.eps_model(sde), label=f"{name} / {path}")


def _err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return mean_l2(x, ref)


def best_peers(case: SimpleNamespace, nfe: int, kd, df) -> dict[str, tuple[float, str]]:
    """``{"diffusers": (error, what), "k-diffusion": (error, what)}``, each the least error of
    that library's solvers and spacings for the case at ``nfe`` (``(nan, "n/a")``: none runs)."""
    out = {"diffusers": (math.nan, "n/a"), "k-diffusion": (math.nan, "n/a")}
    if case.path in fs.SDES:
        fcase = fs.Case(case.name, case.role, case.path, case.sde, case.model, case.x_T, case.ref)
        r: dict = {}
        fs.run_peers(r, fcase, kd, df, nfe)
        for lib, names in (("k-diffusion", fs.PEERS_KD),
                           ("diffusers", [n for n, _, _ in r if n.startswith("diffusers")])):
            runs = [(*fs.best_peer(r, name, nfe), name) for name in set(names)]
            runs = [(e, f"{name} ({sp})") for e, sp, name in runs if not math.isnan(e)]
            if runs:
                out[lib] = min(runs)
    elif case.path == "flow" and df is not None:
        ref0 = case.gm.denoise(case.gm.ode_endpoint(case.sde, case.x_T, 1e-6, tol=1e-10),
                               torch.full((case.x_T.shape[0],), 1e-6, dtype=F64), case.sde)
        ns = SimpleNamespace(x_T=case.x_T, model=case.model, ref0=ref0)
        out["diffusers"] = min((fp.run_peer(df, ns, label, nfe, karras),
                                f"{label[10:]} ({'karras' if karras else 'flow sigmas'})")
                               for label in fp.PEERS for karras in (False, True))
    return out


def run_case(case: SimpleNamespace, kd, df, budget_s: float,
             nfes: tuple[int, ...] = NFES) -> list[dict]:
    """Ours calibrated and on its default grid, and the best peers, at every NFE of
    :data:`NFES`; the calibration's cost includes its share of the teacher solve."""
    shape = (256, case.gm.dim)
    tch = teacher(case.model, case.sde, shape, n_val=128,
                  generator=torch.Generator().manual_seed(100), dtype=F64)
    rows = []
    for nfe in nfes:
        cal = calibrate(case.model, case.sde, shape, nfe=nfe, budget_s=budget_s,
                        given_teacher=tch, dtype=F64)
        res = sample(case.model, case.sde, None, cal.solver, x_T=case.x_T, ts=cal.ts,
                     **cal.options)
        assert res.nfe == nfe, (cal.solver, res.nfe, nfe)
        default = sample(case.model, case.sde, None, cal.solver, x_T=case.x_T, steps=cal.steps,
                         **CALIBRATABLE[cal.solver])
        label = cal.solver + (" + scales" if "step_scales" in cal.options else "")
        record = recording()
        ours = _err(res.x, case.ref)
        ours_draws = record[ours][0]
        row = {"case": case.label, "role": case.role, "nfe": nfe, "solver": label,
               "ours": ours, "default": _err(default.x, case.ref), "start": cal.start,
               "iterations": cal.iterations, "seconds": cal.seconds + tch.seconds / len(nfes),
               **{k: v for k, v in best_peers(case, nfe, kd, df).items()}}
        best = _best(row)
        peer = record.get(best) if math.isfinite(best) and math.isfinite(ours) else None
        row["ci"] = ((math.nan, math.nan) if peer is None
                     else paired_ratio_ci(ours_draws, peer[0]))
        rows.append(row)
    return rows


def run(kd, df, *, quick: bool = False, n: int = N_TEST, budget_s: float = BUDGET_S,
        only: list[str] | None = None, nfes: tuple[int, ...] = NFES,
        log=print) -> tuple[list[dict], float]:
    """Every case (``quick``: 2d-asym and 12d-3comp under VP and flow; ``only``: the cases of
    these labels, ``"8d-aniso / ve"``) at ``nfes``; returns the rows and the wall time."""
    t0 = time.perf_counter()
    paths = ("vp", "flow") if quick else PATHS
    cases = [(name, "tune") for name in (TUNE[:1] if quick else TUNE)]
    cases += [(name, "unseen") for name in (UNSEEN[1:] if quick else UNSEEN)]
    rows = []
    for name, role in cases:
        for path in paths:
            if only and f"{name} / {path}" not in only:
                continue
            log(f"[{time.perf_counter() - t0:6.0f}s] calibrated: {name} / {path} ({role})")
            rows += run_case(_case(name, role, path, 200 if quick else n), kd, df, budget_s,
                             nfes)
    return rows, time.perf_counter() - t0


def _fmt(v: float) -> str:
    return "n/a" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.2e}")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if math.isfinite(a) and math.isfinite(b) and b > 0 else "n/a"


def _best(row: dict) -> float:
    vals = [row[k][0] for k in ("diffusers", "k-diffusion") if not math.isnan(row[k][0])]
    return min(vals) if vals else math.nan


def report(rows: list[dict], seconds: float, budget_s: float,
           command: str = "python -m benchmarks.fast_samplers --calibrated",
           n_test: int = N_TEST) -> list[str]:
    """The Markdown section: the goal summary, then every case."""
    nfes = sorted({r["nfe"] for r in rows})
    out = [MARKER, "",
           f"`{command}` ({seconds:.0f} s). "
           "`sde_gen.sampling.calibrate` with its defaults (the default solver per NFE: deis up "
           "to 5, ipndm above; LD3's hard loss; GITS or the solver's default grid as the "
           f"start), {budget_s:g} s of descent per NFE; cost = descent + the NFE's share of "
           f"one teacher solve (256 + 128 draws, dopri5 tol 1e-7). Error on {n_test} other "
           "draws (seed 0) against the exact endpoint. `ratio` = ours / the best peer (the "
           "better of diffusers' and k-diffusion's best for the case), with its 90 % paired "
           "bootstrap interval (2000 resamples of the draws); `CI <= 0.5`: cases whose interval "
           "lies wholly at or below 0.5. Tuning and unseen cases apart.", ""]
    for role in ("tune", "unseen"):
        sel = [r for r in rows if r["role"] == role]
        out += [f"**Goal, {role} cases**: ours <= 0.5x the best peer", "",
                "| NFE | cases with a peer | met (<= 0.5x) | CI <= 0.5 | ratio range | median "
                "cost (s) |",
                "| ---: | ---: | ---: | ---: | --- | ---: |"]
        if not sel:
            out.append("")
            continue
        for nfe in nfes:
            ratios = [r["ours"] / _best(r) for r in sel if r["nfe"] == nfe
                      and math.isfinite(_best(r)) and _best(r) > 0]
            cost = sorted(r["seconds"] for r in sel if r["nfe"] == nfe)
            met = sum(x <= 0.5 for x in ratios)
            sure = sum(r["ci"][1] <= 0.5 for r in sel if r["nfe"] == nfe)
            rng = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "n/a"
            out.append(f"| {nfe} | {len(ratios)} | {met} | {sure} | {rng} | "
                       f"{cost[len(cost) // 2]:.1f} |")
        out.append("")
    out += ["Stretch (ours at 5 NFE below the best peer at 10 NFE): met on "
            + _stretch(rows) + ".", ""]
    out += ["| case | role | NFE | solver | ours calibrated | ours default grid | start | steps "
            "| cost (s) | best diffusers | best k-diffusion | ratio |",
            "| --- | --- | ---: | --- | ---: | ---: | --- | ---: | ---: | --- | --- | ---: |"]
    for r in rows:
        peers = [f"{_fmt(r[k][0])} {r[k][1]}" if not math.isnan(r[k][0]) else "n/a"
                 for k in ("diffusers", "k-diffusion")]
        out.append(f"| {r['case']} | {r['role']} | {r['nfe']} | {r['solver']} | "
                   f"{_fmt(r['ours'])} | {_fmt(r['default'])} | {r['start']} | "
                   f"{r['iterations']} | {r['seconds']:.1f} | {peers[0]} | {peers[1]} | "
                   f"{_ratio(r['ours'], _best(r))}{_ci(r)} |")
    out.append("")
    return out


def _ci(row: dict) -> str:
    lo, hi = row.get("ci", (math.nan, math.nan))
    return f" ({lo:.2f}-{hi:.2f})" if math.isfinite(lo) and math.isfinite(hi) else ""


def _stretch(rows: list[dict]) -> str:
    by = {(r["case"], r["nfe"]): r for r in rows}
    cases = sorted({r["case"] for r in rows})
    ok = [c for c in cases if (c, 5) in by and (c, 10) in by
          and math.isfinite(_best(by[(c, 10)])) and by[(c, 5)]["ours"] < _best(by[(c, 10)])]
    with_peer = [c for c in cases if (c, 10) in by and math.isfinite(_best(by[(c, 10)]))]
    return f"{len(ok)} of {len(with_peer)} cases with a peer" + (
        f" ({', '.join(ok)})" if ok else "")


def soft_ablation(*, quick: bool = False, n: int = 500, budget_s: float = BUDGET_S,
                  radii: tuple[float, ...] = (0.0, 0.01, 0.05), nfe: int = 10,
                  log=print) -> list[str]:
    """LD3's soft loss (ball radius ``r sigma_T sqrt(D)``) against its hard loss (``r = 0``) at
    ``nfe`` on the tuning cases under every path: the held-out error of each, as a section."""
    t0 = time.perf_counter()
    paths = ("vp", "flow") if quick else PATHS
    rows = []
    for name in TUNE[:1] if quick else TUNE:
        for path in paths:
            log(f"[{time.perf_counter() - t0:6.0f}s] soft loss: {name} / {path}")
            case = _case(name, "tune", path, 200 if quick else n)
            shape = (256, case.gm.dim)
            tch = teacher(case.model, case.sde, shape, n_val=128,
                          generator=torch.Generator().manual_seed(100), dtype=F64)
            errs = []
            for r in radii:
                cal = calibrate(case.model, case.sde, shape, nfe=nfe, budget_s=budget_s,
                                given_teacher=tch, dtype=F64, radius=r)
                x = sample(case.model, case.sde, None, cal.solver, x_T=case.x_T, ts=cal.ts,
                           **cal.options).x
                errs.append(_err(x, case.ref))
            rows.append((case.label, errs))
    out = [SOFT_MARKER, "",
           f"`python -m benchmarks.fast_samplers --calibrated-soft` "
           f"({time.perf_counter() - t0:.0f} s): the tuning cases at {nfe} NFE, "
           f"{budget_s:g} s of descent each, held-out error (500 draws) for each radius r of "
           "the soft loss's ball (r = 0: the hard loss, the default).", "",
           "| case | " + " | ".join(f"r = {r:g}" for r in radii) + " |",
           "| --- |" + " ---: |" * len(radii)]
    for label, errs in rows:
        best = min(errs)
        out.append(f"| {label} | " + " | ".join(
            (f"**{_fmt(e)}**" if e == best else _fmt(e)) for e in errs) + " |")
    wins = [sum(e[i] == min(e) for _, e in rows) for i in range(len(radii))]
    out += ["", "Least error: " + ", ".join(f"r = {r:g} on {w}" for r, w in zip(radii, wins))
            + f" of {len(rows)} cases.", ""]
    return out


SOFT_MARKER = "## Calibrated: LD3's soft loss against its hard loss"
MINING_MARKER = "## Calibrated: hard-draw mining"


def mining_ablation(*, quick: bool = False, n: int = N_TEST, mine: int = 8, iterations: int = 120,
                    nfes: tuple[int, ...] = (10, 20), log=print) -> list[str]:
    """The teacher's hard-draw mining (``teacher(mine=...)``) against none, every case at
    ``nfes``, a fixed number of descent steps (no clock: the same work for both), as a section
    of held-out error ratios (mined / plain), tuning and unseen cases apart."""
    t0 = time.perf_counter()
    paths = ("vp", "flow") if quick else PATHS
    cases = [(name, "tune") for name in TUNE] + [(name, "unseen") for name in UNSEEN]
    rows = []
    for name, role in cases[:1] + cases[-1:] if quick else cases:
        for path in paths:
            log(f"[{time.perf_counter() - t0:6.0f}s] mining: {name} / {path}")
            case = _case(name, role, path, 200 if quick else n)
            shape = (256, case.gm.dim)
            errs, cost = {}, {}
            for m in (1, mine):
                tch = teacher(case.model, case.sde, shape, n_val=128, dtype=F64, mine=m,
                              generator=torch.Generator().manual_seed(100))
                cost[m] = tch.seconds
                for nfe in nfes:
                    cal = calibrate(case.model, case.sde, shape, nfe=nfe, budget_s=1e6,
                                    max_iterations=iterations, given_teacher=tch, dtype=F64)
                    errs[(m, nfe)] = _err(sample(case.model, case.sde, None, cal.solver,
                                                 x_T=case.x_T, ts=cal.ts, **cal.options).x,
                                          case.ref)
            rows.append((case.label, role, errs, cost))
    out = [MINING_MARKER, "",
           f"`python -m benchmarks.fast_samplers --calibrated-mining` "
           f"({time.perf_counter() - t0:.0f} s): the teacher with hard-draw mining "
           f"(`teacher(..., mine={mine})`: {mine}x the draws screened, the top 1/32 solved too, "
           f"stratified weights) against without, {iterations} descent steps each (no clock), "
           f"held-out error on {200 if quick else n} draws (seed 0).", "",
           "| case | role | " + " | ".join(f"plain @{k} | mined @{k} | ratio @{k}" for k in nfes)
           + " | teacher s (plain / mined) |",
           "| --- | --- |" + " ---: | ---: | ---: |" * len(nfes) + " --- |"]
    for label, role, errs, cost in rows:
        cells = " | ".join(f"{_fmt(errs[(1, k)])} | {_fmt(errs[(mine, k)])} | "
                           f"{_ratio(errs[(mine, k)], errs[(1, k)])}" for k in nfes)
        out.append(f"| {label} | {role} | {cells} | {cost[1]:.1f} / {cost[mine]:.1f} |")
    out.append("")
    for role in ("tune", "unseen"):
        for k in nfes:
            r = [e[(mine, k)] / e[(1, k)] for _, ro, e, _ in rows if ro == role
                 and all(math.isfinite(e[(m, k)]) and e[(m, k)] > 0 for m in (1, mine))]
            if r:
                g = math.exp(sum(map(math.log, r)) / len(r))
                out.append(f"- {role}, {k} NFE: geometric mean ratio {g:.2f} (range "
                           f"{min(r):.2f}-{max(r):.2f}, {len(r)} cases)")
    out.append("")
    return out
DIGITS_MARKER = "## Calibrated: a trained digits model"


def _fd_scorer(run_dir, n: int):
    """``samples -> FD-classifier`` against ``n`` training images of the run's data (``sde-gen
    eval``'s cached classifier and features)."""
    from sde_gen.app.factory import build_data
    from sde_gen.app.runs import load_run
    from sde_gen.app.sample_quality import _features, load_or_train_classifier
    from sde_gen.metrics import frechet_distance
    from sde_gen.scaling import uint8_to_model

    train = build_data(load_run(run_dir).cfg.data, "train")
    net = load_or_train_classifier(train)
    real = train.x[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]]
    feats = _features(net, uint8_to_model(real), "cpu")
    return lambda x: frechet_distance(_features(net, x, "cpu"), feats)


def run_named_peer(what: str, case, kd, df, nfe: int) -> torch.Tensor:
    """The samples of the peer configuration ``what`` (``best_peers``' "name (spacing)") from
    ``case.x_T``."""
    name, spacing = what.rsplit(" (", 1)
    spacing = spacing.rstrip(")")
    record = recording()
    if name in fs.PEERS_KD:
        which = dict(zip(fs.PEERS_KD, ("2m", "lms", "heun")))[name]
        err, _ = fs.run_kdiff(kd, case, which, nfe, spacing)
    elif name == "diffusers iPNDM":
        err, _ = fs.run_diffusers_ipndm(df, case, nfe)
    else:
        err, _ = fs.run_diffusers(df, case, name.removeprefix("diffusers "), nfe, spacing)
    return record[err][1]


def digits(run_dir, kd, df, *, nfes: tuple[int, ...] = (10, 20), n: int = 64, n_fd: int = 1000,
           budget_s: float = 60.0, log=print) -> list[str]:
    """The calibrated default on a trained digits run against the best peers, as a section:
    the distance to the model's own PF-ODE endpoint (tol 1e-7, ``n`` draws of seed 0; the best
    peer configuration is chosen by it) and the FD-classifier of ``n_fd`` samples (seed 1) of
    each."""
    t0 = time.perf_counter()
    case = fs.digits_case(run_dir, n)
    log(f"[{time.perf_counter() - t0:6.0f}s] digits reference done")
    fd = _fd_scorer(run_dir, n_fd)
    x_fd = case.sde.prior_sampling((n_fd, *case.x_T.shape[1:]),
                                   generator=torch.Generator().manual_seed(1))
    fd_case = fs.Case(case.name, case.role, case.sde_name, case.sde, case.model, x_fd,
                      torch.zeros_like(x_fd))  # only the samples are read
    shape = (n, *case.x_T.shape[1:])
    tch = teacher(case.model, case.sde, shape, n_val=n // 2,
                  generator=torch.Generator().manual_seed(100))
    log(f"[{time.perf_counter() - t0:6.0f}s] digits teacher done ({tch.seconds:.0f} s)")
    out = [DIGITS_MARKER, "",
           f"`python -m benchmarks.fast_samplers --calibrated-digits {run_dir}` "
           f"(the run's 1000-step checkpoint). Distance: {n} draws of seed 0 against the "
           "model's own PF-ODE at tol 1e-7, denoised; each peer at its best configuration by "
           f"this distance. FD-classifier (`sde-gen eval`'s classifier features): {n_fd} "
           f"samples from draws of seed 1 against {n_fd} training images. Calibration: {n} "
           f"tuning + {n // 2} validation draws of seed 100, teacher {tch.seconds:.0f} s, then "
           f"{budget_s:g} s of descent per NFE.", "",
           "| NFE | solver | ours calibrated | ours default grid | steps | cost (s) | best "
           "diffusers | best k-diffusion | ratio |",
           "| ---: | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |"]
    fd_rows = []
    for nfe in nfes:
        cal = calibrate(case.model, case.sde, shape, nfe=nfe, budget_s=budget_s,
                        given_teacher=tch)
        with torch.no_grad():
            run = {"ours calibrated": lambda x_T: sample(
                       case.model, case.sde, None, cal.solver, x_T=x_T, ts=cal.ts,
                       **cal.options).x,
                   "ours default grid": lambda x_T: sample(
                       case.model, case.sde, None, cal.solver, x_T=x_T, steps=cal.steps,
                       **CALIBRATABLE[cal.solver]).x}
            x, d = run["ours calibrated"](case.x_T), run["ours default grid"](case.x_T)
            row = {"ours": case.err(x), "default": case.err(d),
                   **best_peers(SimpleNamespace(name=case.name, role=case.role, path="vp",
                                                sde=case.sde, model=case.model, x_T=case.x_T,
                                                ref=case.ref), nfe, kd, df)}
            fds = {k: fd(f(x_fd)) for k, f in run.items()}
            for lib in ("diffusers", "k-diffusion"):
                if math.isfinite(row[lib][0]):
                    fds[f"{row[lib][1]}"] = fd(run_named_peer(f"{row[lib][1]}", fd_case, kd,
                                                              df, nfe))
        fd_rows.append((nfe, fds))
        peers = [f"{_fmt(row[k][0])} {row[k][1]}" for k in ("diffusers", "k-diffusion")]
        label = cal.solver + (" + scales" if "step_scales" in cal.options else "")
        out.append(f"| {nfe} | {label} | {_fmt(row['ours'])} | {_fmt(row['default'])} | "
                   f"{cal.iterations} | {cal.seconds + tch.seconds / len(nfes):.0f} | "
                   f"{peers[0]} | {peers[1]} | {_ratio(row['ours'], _best(row))} |")
        log(out[-1])
        log(f"  FD-classifier: {fds}")
    with torch.no_grad():  # the model's own sample quality: the adaptive ODE (the field's tol)
        ode = sample(case.model, case.sde, None, "ode", x_T=x_fd, rtol=1e-5, atol=1e-5)
    out += ["", f"FD-classifier (lower is better; the model's own PF-ODE, dopri5 at tol 1e-5, "
            f"{ode.nfe} NFE: {fd(ode.x):.3f}):", "", "| NFE | method | FD-classifier |",
            "| ---: | --- | ---: |"]
    for nfe, fds in fd_rows:
        out += [f"| {nfe} | {k} | {v:.3f} |" for k, v in fds.items()]
    out += ["", f"Total: {time.perf_counter() - t0:.0f} s.", ""]
    return out


def splice(text: str, section: list[str], before: str = "## How the peers are wired",
           marker: str = MARKER) -> str:
    """``text`` with the section that starts with ``marker`` replaced by ``section`` (inserted
    before ``before`` when it has none); the rest unchanged."""
    new = "\n".join(section).rstrip("\n") + "\n\n"
    if marker in text:
        head, _, tail = text.partition(marker)
        nxt = tail.find("\n## ")
        return head + new + (tail[nxt + 1:] if nxt >= 0 else "")
    if before in text:
        head, _, tail = text.partition(before)
        return head + new + before + tail
    return text.rstrip("\n") + "\n\n" + new
