"""The flow paths (``flow``: alpha = 1 - t, sigma = t; ``trig``: cos/sin of pi t / 2) against
exact mixtures: which grid each fast solver should use there, how the solvers then compare with
diffusers' flow-matching schedulers at equal NFE, the ODE likelihood without a prior-mismatch
term, and one exact model moved between paths.

Every solve starts from the same prior draws ``x_T`` at ``T`` (alpha_T = 0: pure noise). Our
solvers end at ``t_min`` (1e-3) with the final denoise, and are scored against the exact
``E[x0 | x(t_min)]`` of the exact probability-flow solution (dopri5, tol 1e-10); diffusers'
schedulers end at sigma = 0 (their last step returns the x0 estimate) and are scored against the
exact ODE solution at 1e-6, denoised (the ODE endpoint at 0 to ~1e-12). Error: the mean L2
distance over the samples.

Cases. **Tuning** (``role = tune``): the three mixtures of ``benchmarks/samplers.py`` (2-D
asymmetric, 8-D anisotropic, 8 Gaussians), on ``flow`` and ``trig``. Each solver's default
spacing on the flow paths (``FlowSDE.few_step_spacing`` and each solver's ``SPEC.spacing``) was
chosen from the spacing table of these cases only. **Unseen** (``role = unseen``): the four
random mixtures of ``benchmarks/fast_samplers.py`` (2-D/4, 3-D/5, 12-D/3, 16-D/6), reported at
the defaults so chosen, beside the same solver on VP with its own default.

Peers (optional extra ``bench``): diffusers ``FlowMatchEulerDiscreteScheduler`` (Euler),
``UniPCMultistepScheduler`` (bh2, order 2 and 3) and ``DPMSolverMultistepScheduler``
(DPM-Solver++ 2M) with ``prediction_type="flow_prediction"``, ``use_flow_sigmas=True``,
``flow_shift=1``, ``final_sigmas_type="zero"``, on their own sigma grid and on Karras sigmas
(each peer at its better one for the case), fed the exact velocity at the sigma they step from.

Usage::

    python -m benchmarks.flow_paths            # full run (about 10 CPU minutes)
    python -m benchmarks.flow_paths --quick    # smoke run
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from benchmarks.common import header, mean_l2, table, write_result
from benchmarks.fast_samplers import UNSEEN, gmean
from benchmarks.peers import import_diffusers
from benchmarks.samplers import PROBLEMS as TUNING
from sde_gen.analytic import GaussianMixture
from sde_gen.flow_paths import FlowSDE, TrigFlowSDE
from sde_gen.likelihood import log_likelihood
from sde_gen.path_transfer import on_path
from sde_gen.sampling import SOLVERS, make_grid, sample
from sde_gen.sde import SDE, VESDE, VPSDE

F64 = torch.float64
NFES = (5, 10, 20)
PATHS: dict[str, Callable[[], SDE]] = {"flow": FlowSDE, "trig": TrigFlowSDE}
#: Candidate spacings on a flow path: the built-in ones, and SD3's time shift 3 (a grid only).
SPACINGS = ("uniform", "quadratic", "logsnr", "karras", "shift3")
#: Our fast deterministic solvers, one row per option set.
METHODS: list[tuple[str, str, dict]] = [
    ("ddim", "ddim", {}), ("heun", "heun", {}), ("dpm 2M", "dpm", {"order": 2}),
    ("dpm 3M", "dpm", {"order": 3}), ("unipc bh2-2", "unipc", {"order": 2}),
    ("unipc bh2-3", "unipc", {"order": 3}), ("ipndm 3", "ipndm", {"order": 3}),
    ("deis tAB3", "deis", {"order": 3}),
]


class Case:
    """One mixture on one path: ``x_T`` and the exact targets of both endpoint conventions."""

    def __init__(self, name: str, role: str, gm: GaussianMixture, path: str, n: int,
                 seed: int) -> None:
        self.name, self.role, self.gm, self.path = name, role, gm, path
        self.sde = (PATHS[path] if path in PATHS else {"vp": VPSDE, "ve": VESDE}[path])()
        self.t_min = self.sde.default_t_min
        self.x_T = self.sde.prior_sampling((n, gm.dim),
                                           generator=torch.Generator().manual_seed(seed), dtype=F64)
        self.model = gm.eps_model(self.sde)
        self.ref = self._target(self.t_min)
        self._ref0: torch.Tensor | None = None

    def _target(self, t_end: float) -> torch.Tensor:
        x = self.gm.ode_endpoint(self.sde, self.x_T, t_end, tol=1e-10)
        return self.gm.denoise(x, torch.full((x.shape[0],), t_end, dtype=F64), self.sde)

    @property
    def ref0(self) -> torch.Tensor:
        """The exact ODE endpoint at 0 (peers step to sigma = 0)."""
        if self._ref0 is None:
            self._ref0 = self._target(1e-6)
        return self._ref0

    @property
    def label(self) -> str:
        return f"{self.name} / {self.path}"

    @staticmethod
    def err(x: torch.Tensor, ref: torch.Tensor) -> float:
        return mean_l2(x, ref)


def run_ours(case: Case, solver: str, opts: dict, nfe: int, spacing: str | None) -> float:
    spec = SOLVERS[solver]
    per_step = spec.calls_per_step(spec.resolve(solver, dict(opts)))
    steps = max(1, (nfe - 1) // per_step)
    if spacing == "shift3":
        ts = make_grid(FlowSDE(shift=3.0) if case.path == "flow" else TrigFlowSDE(shift=3.0),
                       steps, t_min=case.t_min, spacing="shifted")
        res = sample(case.model, case.sde, None, solver, x_T=case.x_T, ts=ts, **opts)
    else:
        res = sample(case.model, case.sde, None, solver, x_T=case.x_T, steps=steps,
                     t_min=case.t_min, spacing=spacing, **opts)
    assert res.nfe <= nfe, (solver, opts, res.nfe, nfe)
    return Case.err(res.x, case.ref)


# -- peers ----------------------------------------------------------------------------------------
PEERS = {  # label -> (scheduler class, config)
    "diffusers FlowMatchEuler": ("FlowMatchEulerDiscreteScheduler", {}),
    "diffusers UniPC bh2-2": ("UniPCMultistepScheduler", {"solver_type": "bh2",
                                                          "solver_order": 2}),
    "diffusers UniPC bh2-3": ("UniPCMultistepScheduler", {"solver_type": "bh2",
                                                          "solver_order": 3}),
    "diffusers DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++",
                                                           "solver_order": 2}),
}


def run_peer(df, case: Case, label: str, nfe: int, karras: bool) -> float:
    """One diffusers flow scheduler, ``nfe`` model calls, fed the exact velocity
    ``v = eps - x0`` at the sigma (= t on the flow path) it steps from."""
    cls_name, cfg = PEERS[label]
    cls = getattr(df, cls_name)
    if cls_name == "FlowMatchEulerDiscreteScheduler":
        sched = cls(num_train_timesteps=1000, shift=1.0, use_karras_sigmas=karras)
    else:
        sched = cls(num_train_timesteps=1000, prediction_type="flow_prediction",
                    use_flow_sigmas=True, flow_shift=1.0, final_sigmas_type="zero",
                    lower_order_final=True, use_karras_sigmas=karras, **cfg)
    sched.set_timesteps(nfe)
    x = case.x_T.clone()
    with torch.no_grad():
        for k, ts in enumerate(sched.timesteps):
            t = float(sched.sigmas[k])
            eps, x0 = case.model.predict(x, torch.full((x.shape[0],), t, dtype=F64))
            x = sched.step(eps - x0, ts, x).prev_sample
    assert len(sched.timesteps) == nfe
    return Case.err(x, case.ref0)


# -- likelihood and path transfer -----------------------------------------------------------------
def likelihood_rows(problems: dict, n: int) -> list[dict]:
    rows = []
    for name, make in problems.items():
        gm = make()
        x = gm.sample(n, generator=torch.Generator().manual_seed(0), dtype=F64)
        for path in ("vp", "flow", "trig"):
            sde = (PATHS[path] if path in PATHS else VPSDE)()
            t0 = time.perf_counter()
            res = log_likelihood(gm.eps_model(sde), sde, x, trace="exact", t_min=1e-5,
                                 rtol=1e-8, atol=1e-8)
            exact = gm.log_prob_t(x, torch.full((n,), 1e-5, dtype=F64), sde)
            gap = (res.logp - exact).abs()
            rows.append({"mixture": name, "path": path, "max abs gap": float(gap.max()),
                         "mean abs gap": float(gap.mean()), "NFE": res.nfe,
                         "s": time.perf_counter() - t0})
    return rows


def transfer_rows(gm: GaussianMixture, n: int) -> list[dict]:
    """The exact model of one path moved to another: its ODE endpoint against the trained
    path's exact endpoint, mapped back (dopri5 at 1e-9), and unipc at 10 NFE on the target
    path, moved model vs the target's own exact model."""
    rows = []
    for trained, target in (("vp", "flow"), ("flow", "vp"), ("ve", "flow"), ("trig", "flow")):
        mk = {"vp": VPSDE, "ve": VESDE, **PATHS}
        tr, tg = mk[trained](), mk[target]()
        moved = on_path(gm.eps_model(tr), tr, tg)
        x_T = tg.prior_sampling((n, gm.dim), generator=torch.Generator().manual_seed(4), dtype=F64)
        ts = make_grid(tg, 9, t_min=moved.t_min, spacing="logsnr", T=moved.t_max)
        a = sample(moved, tg, None, "unipc", x_T=x_T * moved.start_scale, ts=ts).x
        b = sample(gm.eps_model(tg), tg, None, "unipc", x_T=x_T * moved.start_scale, ts=ts).x
        rows.append({"trained on": trained, "sampled on": target,
                     "times covered": f"[{moved.t_min:.2g}, {moved.t_max:.3g}]",
                     "unipc 10 NFE: max abs(moved - native)": float((a - b).abs().max())})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: two cases, 128 samples")
    ap.add_argument("--n", type=int, default=512, help="samples per case")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    n = 128 if args.quick else args.n
    tune = dict(list(TUNING.items())[:1]) if args.quick else TUNING
    unseen = dict(list(UNSEEN.items())[:1]) if args.quick else UNSEEN
    df = import_diffusers()
    methods = [m for m in METHODS if m[1] in SOLVERS]

    # 1. spacing on the tuning cases
    tune_cases = [Case(k, "tune", make(), p, n, 11) for k, make in tune.items() for p in PATHS]
    spacing_err: dict = {}
    for case in tune_cases:
        print(f"[{time.perf_counter() - t0:6.1f}s] tuning: {case.label}", flush=True)
        for label, solver, opts in methods:
            for sp in SPACINGS:
                for nfe in NFES:
                    spacing_err[(case.label, label, sp, nfe)] = run_ours(case, solver, opts,
                                                                         nfe, sp)
    spacing_rows, best = [], {}
    for label, solver, opts in methods:
        for path in PATHS:
            keys = [c.label for c in tune_cases if c.path == path]
            row = {"method": label, "path": path}
            for sp in SPACINGS:
                row[sp] = gmean([spacing_err[(k, label, sp, nfe)] for k in keys for nfe in NFES])
            best[(label, path)] = min(SPACINGS, key=lambda s: row[s])
            row["best"] = best[(label, path)]
            default = SOLVERS[solver].spacing_for(PATHS[path]())
            row["default"] = default
            row["default / best"] = row[default] / row[best[(label, path)]]
            spacing_rows.append(row)

    # 2. unseen cases at the defaults, beside VP and the peers
    unseen_rows = []
    for k, make in unseen.items():
        gm = make()
        vp = Case(k, "unseen", gm, "vp", n, 13)
        for path in PATHS:
            case = Case(k, "unseen", gm, path, n, 13)
            print(f"[{time.perf_counter() - t0:6.1f}s] unseen: {case.label}", flush=True)
            for nfe in NFES:
                row = {"case": case.label, "NFE": nfe}
                for label, solver, opts in methods:
                    row[label] = run_ours(case, solver, opts, nfe, None)
                    if path == "flow" and label in ("unipc bh2-2", "dpm 3M", "ddim"):
                        row[f"{label} on VP"] = run_ours(vp, solver, opts, nfe, None)
                if df is not None and path == "flow":
                    for peer in PEERS:
                        row[peer] = min(run_peer(df, case, peer, nfe, kar) for kar in (False, True))
                unseen_rows.append(row)

    # 3. likelihood, 4. path transfer
    print(f"[{time.perf_counter() - t0:6.1f}s] likelihood", flush=True)
    like_problems = {"2d-asym (tune)": TUNING["2d-asym"],
                     "12d-3comp (unseen)": UNSEEN["12d-3comp"]}
    if args.quick:
        like_problems = dict(list(like_problems.items())[:1])
    like = likelihood_rows(like_problems, 64 if args.quick else 256)
    print(f"[{time.perf_counter() - t0:6.1f}s] path transfer", flush=True)
    transfer = transfer_rows(UNSEEN["12d-3comp"](), n)
    write_report(args, n, methods, spacing_rows, unseen_rows, like, transfer, df, t0)


def write_report(args, n, methods, spacing_rows, unseen_rows, like, transfer, df, t0) -> None:
    labels = [m[0] for m in methods]
    out = [header("Flow paths: grids, fast solvers vs diffusers, likelihood, path transfer"),
           f"- samples per case: {n}; NFE {', '.join(map(str, NFES))}; "
           f"wall {time.perf_counter() - t0:.0f} s", "",
           "## 1. Spacing on the flow paths (tuning cases)", "",
           "Geometric mean of the endpoint error over the tuning mixtures "
           f"({', '.join(TUNING) if not args.quick else 'quick'}) and NFE "
           f"{', '.join(map(str, NFES))}, per spacing (`shift3`: SD3's time shift 3 on the "
           "uniform grid). `default`: what the package uses on that path (chosen from this "
           "table).", "",
           table(spacing_rows, ["method", "path", *SPACINGS, "best", "default",
                                "default / best"]), ""]
    cols = ["case", "NFE", *labels]
    out += ["## 2. Unseen mixtures at the defaults", "",
            "Mean L2 error to the exact endpoint, every solver at its default spacing on the "
            "path.", "", table(unseen_rows, cols), ""]
    flow_rows = [r for r in unseen_rows if r["case"].endswith("/ flow")]
    vp_cols = ["case", "NFE"] + [c for lab in ("ddim", "dpm 3M", "unipc bh2-2")
                                 for c in (lab, f"{lab} on VP")]
    out += ["### The same mixture on the flow path and on VP", "",
            "The same solver at its default on each path (exact model of each): how much the "
            "path itself changes the discretization error.", "", table(flow_rows, vp_cols), ""]
    if df is not None:
        peer_cols = ["case", "NFE", *PEERS, "unipc bh2-2", "dpm 2M", "ddim"]
        ratio_rows = []
        for r in flow_rows:
            best_peer = min(r[p] for p in PEERS)
            best_ours = min(r[lab] for lab in labels)
            ratio_rows.append({"case": r["case"], "NFE": r["NFE"], "best peer": best_peer,
                               "best ours": best_ours, "ours / peer": best_ours / best_peer,
                               "unipc bh2-2 / diffusers UniPC bh2-2":
                                   r["unipc bh2-2"] / r["diffusers UniPC bh2-2"],
                               "ddim / FlowMatchEuler":
                                   r["ddim"] / r["diffusers FlowMatchEuler"]})
        out += ["### Against diffusers' flow schedulers (flow path, unseen)", "",
                "Each peer at the better of its own flow sigmas and Karras sigmas; each method "
                "scored against the exact endpoint of its own convention (module docstring).", "",
                table(flow_rows, peer_cols), "",
                table(ratio_rows, ["case", "NFE", "best peer", "best ours", "ours / peer",
                                   "unipc bh2-2 / diffusers UniPC bh2-2",
                                   "ddim / FlowMatchEuler"]), "",
                f"Geometric mean of ours / peer (best of each): "
                f"{gmean([r['ours / peer'] for r in ratio_rows]):.2f} over "
                f"{len(ratio_rows)} case-NFE pairs.", ""]
    else:
        out += ["diffusers is not installed: no peer columns (`pip install -e .[bench]`).", ""]
    out += ["## 3. ODE log-likelihood of the exact model (exact trace, tol 1e-8, t_min 1e-5)", "",
            "VP's prior N(0, I) is not exactly q_T, and its gap carries that mismatch; the flow "
            "paths' prior is q_T exactly.", "",
            table(like, ["mixture", "path", "max abs gap", "mean abs gap", "NFE", "s"]), "",
            "## 4. One exact model moved between paths (12-D unseen mixture)", "",
            table(transfer, ["trained on", "sampled on", "times covered",
                             "unipc 10 NFE: max abs(moved - native)"]), ""]
    text = "\n".join(out)
    print(text)
    if not args.quick:
        write_result("flow_paths", text)


if __name__ == "__main__":
    main()
