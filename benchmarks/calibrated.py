"""The calibrated default solver (``sde_gen.sampling.calibrate``, LD3) at 4-20 NFE against the
best diffusers and k-diffusion solver of each case at the same NFE, on exact mixtures under every
path: the "Calibrated" section of ``benchmarks/results/fast_samplers.md``.

Run through ``python -m benchmarks.fast_samplers --calibrated`` (about 15 CPU minutes), which
replaces that section of the results file and keeps the rest.

Every method starts from the same 500 prior draws ``x_T`` (seed 0) and is scored by the mean L2
distance of its denoised samples to the exact probability-flow endpoint from those draws (dopri5
at tol 1e-10 with the exact mixture score, denoised exactly at ``t_min``; the diffusers flow
schedulers, which step to sigma = 0, against the exact endpoint at 1e-6). The calibration never
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
    e = (x.to(F64) - ref).reshape(x.shape[0], -1).norm(dim=1).mean()
    return float(e) if torch.isfinite(e) else math.inf


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
        rows.append({"case": case.label, "role": case.role, "nfe": nfe, "solver": label,
                     "ours": _err(res.x, case.ref), "default": _err(default.x, case.ref),
                     "start": cal.start, "iterations": cal.iterations,
                     "seconds": cal.seconds + tch.seconds / len(nfes),
                     **{k: v for k, v in best_peers(case, nfe, kd, df).items()}})
    return rows


def run(kd, df, *, quick: bool = False, n: int = 500, budget_s: float = BUDGET_S,
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
           command: str = "python -m benchmarks.fast_samplers --calibrated") -> list[str]:
    """The Markdown section: the goal summary, then every case."""
    nfes = sorted({r["nfe"] for r in rows})
    out = [MARKER, "",
           f"`{command}` ({seconds:.0f} s). "
           "`sde_gen.sampling.calibrate` with its defaults (the default solver per NFE: deis up "
           "to 5, ipndm above; LD3's hard loss; GITS or the solver's default grid as the "
           f"start), {budget_s:g} s of descent per NFE; cost = descent + the NFE's share of "
           "one teacher solve (256 + 128 draws, dopri5 tol 1e-7). Error on 500 other draws "
           "(seed 0) against the exact endpoint. `ratio` = ours / the best peer (the better of "
           "diffusers' and k-diffusion's best for the case). Tuning and unseen cases apart.", ""]
    for role in ("tune", "unseen"):
        sel = [r for r in rows if r["role"] == role]
        out += [f"**Goal, {role} cases**: ours <= 0.5x the best peer", "",
                "| NFE | cases with a peer | met (<= 0.5x) | ratio range | median cost (s) |",
                "| ---: | ---: | ---: | --- | ---: |"]
        if not sel:
            continue
        for nfe in nfes:
            ratios = [r["ours"] / _best(r) for r in sel if r["nfe"] == nfe
                      and math.isfinite(_best(r)) and _best(r) > 0]
            cost = sorted(r["seconds"] for r in sel if r["nfe"] == nfe)
            met = sum(x <= 0.5 for x in ratios)
            rng = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "n/a"
            out.append(f"| {nfe} | {len(ratios)} | {met} | {rng} | "
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
                   f"{_ratio(r['ours'], _best(r))} |")
    out.append("")
    return out


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
DIGITS_MARKER = "## Calibrated: a trained digits model"


def digits(run_dir, kd, df, *, nfes: tuple[int, ...] = (10, 20), n: int = 64,
           budget_s: float = 60.0, log=print) -> list[str]:
    """The calibrated default on a trained digits run (its own PF-ODE at tol 1e-7 as the
    reference, on ``n`` draws of seed 0) against the best peers, as a section."""
    t0 = time.perf_counter()
    case = fs.digits_case(run_dir, n)
    log(f"[{time.perf_counter() - t0:6.0f}s] digits reference done")
    shape = (n, *case.x_T.shape[1:])
    tch = teacher(case.model, case.sde, shape, n_val=n // 2,
                  generator=torch.Generator().manual_seed(100))
    log(f"[{time.perf_counter() - t0:6.0f}s] digits teacher done ({tch.seconds:.0f} s)")
    out = [DIGITS_MARKER, "",
           f"`python -m benchmarks.fast_samplers --calibrated-digits {run_dir}` "
           f"(the run's 1000-step checkpoint; {n} draws of seed 0, reference: the model's own "
           f"PF-ODE at tol 1e-7, denoised). Calibration: {n} tuning + {n // 2} validation draws "
           f"of seed 100, teacher {tch.seconds:.0f} s, then {budget_s:g} s of descent per NFE. "
           "FD-classifier not measured (the endpoint distance only).", "",
           "| NFE | solver | ours calibrated | ours default grid | steps | cost (s) | best "
           "diffusers | best k-diffusion | ratio |",
           "| ---: | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |"]
    for nfe in nfes:
        cal = calibrate(case.model, case.sde, shape, nfe=nfe, budget_s=budget_s,
                        given_teacher=tch)
        with torch.no_grad():
            x = sample(case.model, case.sde, None, cal.solver, x_T=case.x_T, ts=cal.ts,
                       **cal.options).x
            d = sample(case.model, case.sde, None, cal.solver, x_T=case.x_T, steps=cal.steps,
                       **CALIBRATABLE[cal.solver]).x
        row = {"ours": case.err(x), "default": case.err(d),
               **best_peers(SimpleNamespace(name=case.name, role=case.role, path="vp",
                                            sde=case.sde, model=case.model, x_T=case.x_T,
                                            ref=case.ref), nfe, kd, df)}
        peers = [f"{_fmt(row[k][0])} {row[k][1]}" for k in ("diffusers", "k-diffusion")]
        label = cal.solver + (" + scales" if "step_scales" in cal.options else "")
        out.append(f"| {nfe} | {label} | {_fmt(row['ours'])} | {_fmt(row['default'])} | "
                   f"{cal.iterations} | {cal.seconds + tch.seconds / len(nfes):.0f} | "
                   f"{peers[0]} | {peers[1]} | {_ratio(row['ours'], _best(row))} |")
        log(out[-1])
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
