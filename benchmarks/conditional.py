"""Conditional generation against the exact answer: imputation on Gaussian mixtures, and what
classifier-free guidance does to a class's spread.

For a Gaussian mixture the law of the unknown coordinates given the known ones is a mixture in
closed form (``GaussianMixture.conditional``). Every method here is driven by the exact
*unconditional* eps (``GaussianMixture.eps_model``) and conditions on one observed value per case
(the known coordinates of one draw from the mixture). Its N samples of the unknown coordinates
are compared with N exact conditional samples by the sliced Wasserstein-2 distance
(``sde_gen.metrics.sliced_wasserstein``, 256 directions), averaged over ``REFS`` independent
exact reference sets; the **noise floor** is the same distance between two independent exact sets
of size N (averaged over ``REFS`` pairs), what a perfect sampler scores. ``ratio`` = SW / floor,
averaged over two runs with different seeds (one run for SMC rows above 10^4 evaluations per
sample); ``ratio per seed`` lists them. SW2 squares distances, so one sample in a far mode that
holds 1e-4 of the exact mass moves a ratio by ~1: the two seeds show how much that happens.

Methods. Replacement ([Song21] App. I.2) with the ``pc``, ``sde`` and ``ancestral`` solvers at
about 100 and 1000 model calls; RePaint ([Lugmayr22], ancestral, jump 1) with 2 and 5 passes at
the same 1000 calls; and the twisted particle filter ``impute(..., method="smc", particles=K)``
(:mod:`sde_gen.sampling.smc`, [Cardoso23], [Wu23]) at its default 100 steps (101 calls with the
final denoising step) for K = 1 ... 256 (K = 64 at most in the 8-D case), and in the 2-D case
K = 64 at 400 steps.
Cost: ``nfe`` counts batched model calls; every method but SMC evaluates one state per sample
per call, SMC evaluates K (``evals/sample = nfe * K``), which is the fair compute axis (wall
time is on one CPU thread).

Cases. ``tune`` cases picked the SMC defaults (grid spacing, kernel variance, twist scale,
steps; see the module's docstring): a 2-D 4-component mixture with one coordinate known and an
8-D 4-component one with half known, plus two single Gaussians. ``unseen`` cases were run only
after the defaults were fixed: a 3-D mixture of 5 unequal anisotropic components with one
coordinate known and a 12-D mixture of 3 with half known (``random_mixture`` of
``benchmarks/fast_samplers.py``, seeds 2102 and 2103).

Usage::

    python -m benchmarks.conditional            # full run (about 13 CPU minutes, one thread)
    python -m benchmarks.conditional --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.common import RESULTS, header, table, write_result
from benchmarks.fast_samplers import random_mixture
from sde_gen.analytic import GaussianMixture
from sde_gen.metrics import sliced_wasserstein
from sde_gen.sampling import sample
from sde_gen.sampling.impute import impute
from sde_gen.sampling.smc import DEFAULT_SPACING, DEFAULT_STEPS, DEFAULT_TWIST_SCALE, impute_smc
from sde_gen.sde import VPSDE

DTYPE = torch.float32
REFS = 3
N_PROJ = 256
CALLS = {"pc": 2, "sde": 1, "ancestral": 1}  # model calls per interval (pc: one corrector step)
SEEDS = 2  # runs per method (different seeds), averaged; each seed's ratio is listed
ONE_SEED_ABOVE = 10_000  # SMC runs costing more evaluations per sample than this: one seed

#: name -> (role, mixture, number of known leading coordinates)
CASES = {
    "2d-4comp": ("tune", lambda: random_mixture(2, 4, 3101), 1),
    "8d-4comp": ("tune", lambda: random_mixture(8, 4, 3102), 4),
    "3d-5comp": ("unseen", lambda: random_mixture(3, 5, 2102), 1),
    "12d-3comp": ("unseen", lambda: random_mixture(12, 3, 2103), 6),
}


def chunked(model, size: int = 65536):
    """``model`` evaluated in chunks of ``size`` rows (memory only: still one call per batch)."""

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= size:
            return model(x, t)
        return torch.cat([model(x[i:i + size], t[i:i + size]) for i in range(0, x.shape[0], size)])

    return call


class Case:
    """One mixture, one observed value, its exact conditional samples and noise floor."""

    def __init__(self, name: str, role: str, gm: GaussianMixture, n_known: int, n: int) -> None:
        self.name, self.role, self.gm, self.n = name, role, gm, n
        self.sde = VPSDE()
        self.model = chunked(gm.eps_model(self.sde))
        g = torch.Generator().manual_seed(7)
        x = gm.sample(1, generator=g, dtype=torch.float64)[0]
        self.known = torch.zeros(gm.dim, dtype=torch.bool)
        self.known[:n_known] = True
        self.cond = gm.conditional(self.known, x)
        self.x_known = x.to(DTYPE).expand(n, gm.dim).clone()
        self.refs = [self.cond.sample(n, generator=g, dtype=torch.float64)
                     for _ in range(2 * REFS)]
        self.floor = sum(self.sw(self.refs[REFS + i], i) for i in range(REFS)) / REFS

    def sw(self, x: torch.Tensor, i: int) -> float:
        """SW2 of ``x`` (unknown coordinates, ``(n, D_u)``) to reference set ``i``."""
        return float(sliced_wasserstein(x.to(torch.float64), self.refs[i], n_projections=N_PROJ,
                                        generator=torch.Generator().manual_seed(100 + i)))

    def score(self, x: torch.Tensor) -> float:
        assert bool((x[:, self.known] == self.x_known[:, self.known]).all())
        u = x[:, ~self.known]
        return sum(self.sw(u, i) for i in range(REFS)) / REFS

    @property
    def label(self) -> str:
        d, a = self.gm.dim, int(self.known.sum())
        return f"{self.name} ({a} of {d} known)"


def run_method(case: Case, method: str, seed: int, **kw) -> dict:
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    if method == "smc":
        r = impute_smc(case.model, case.sde, case.x_known, case.known, generator=g, **kw)
        k = kw["particles"]
        extra = {"min_ess_frac": float(r.ess.mean(1).min()) / k,
                 "resampled_frac": r.n_resampled / (case.n * len(r.ess))}
    else:
        r = impute(case.model, case.sde, case.x_known, case.known, generator=g, **kw)
        k, extra = 1, {}
    wall = time.perf_counter() - t0
    sw = case.score(r.x)
    return {"case": case.name, "role": case.role, "nfe": r.nfe, "evals/sample": r.nfe * k,
            "wall_s": wall, "sw": sw, "floor": case.floor, "ratio": sw / case.floor, **extra}


def repeated(case: Case, label: str, method: str, seed: int, **kw) -> dict:
    """:func:`run_method` over :data:`SEEDS` seeds (one where a run costs more than
    :data:`ONE_SEED_ABOVE` evaluations per sample): the mean row, with each seed's ratio."""
    cost = (kw.get("steps") or DEFAULT_STEPS) * kw.get("particles", 1) if method == "smc" else 0
    seeds = [seed] if cost > ONE_SEED_ABOVE else [seed + 1000 * i for i in range(SEEDS)]
    runs = [run_method(case, method, s, **kw) for s in seeds]
    row = {"method": label, **runs[0]}
    for key in ("wall_s", "sw", "ratio", "min_ess_frac", "resampled_frac"):
        if key in row:
            row[key] = sum(r[key] for r in runs) / len(runs)
    row["ratio per seed"] = " / ".join(f"{r['ratio']:.2f}" for r in runs)
    print(row, flush=True)
    return row


def conditional_rows(case: Case, quick: bool) -> list[dict]:
    rows = []
    nfes = (100,) if quick else (100, 1000)
    for solver in ("pc", "sde", "ancestral"):
        for nfe in nfes:
            steps = (nfe - 1) // CALLS[solver]
            rows.append(repeated(case, f"replacement {solver}", "replacement", 1, solver=solver,
                                 steps=steps))
    for resample in (2, 5):
        steps = (nfes[-1] - 1) // resample
        rows.append(repeated(case, f"RePaint r={resample} (ancestral)", "replacement", 2,
                             solver="ancestral", steps=steps, resample=resample))
    ks = (1, 4, 16) if quick else (1, 4, 16, 64) + ((256,) if case.name != "8d-4comp" else ())
    for k in ks:
        rows.append(repeated(case, f"SMC K={k}", "smc", 3, particles=k))
    if not quick and case.name == "2d-4comp":  # what more steps buy at fixed K
        rows.append(repeated(case, "SMC K=64, 400 steps", "smc", 4, particles=64, steps=400))
    return rows


# -- guidance -------------------------------------------------------------------------------------
def guidance_mixture() -> GaussianMixture:
    """Three overlapping 2-D classes (class 0 on the left, anisotropic), so guidance has
    neighbours to push away from."""
    means = torch.tensor([[-0.8, 0.0], [0.8, 0.0], [0.0, 1.2]], dtype=torch.float64)
    covs = torch.tensor([[[0.30, 0.10], [0.10, 0.20]], [[0.25, 0.0], [0.0, 0.25]],
                         [[0.20, 0.0], [0.0, 0.30]]], dtype=torch.float64)
    return GaussianMixture(means, covs, torch.tensor([0.4, 0.3, 0.3]))


def guidance_rows(quick: bool) -> tuple[list[dict], dict]:
    """Class ``c`` of a 2-D mixture sampled with classifier-free guidance at w = 0, 1, 3."""
    from sde_gen.guidance import classifier_free

    gm = guidance_mixture()
    sde = VPSDE()
    model = gm.class_conditional_model(sde)
    c, n = 0, 500 if quick else 4000
    part = gm.component(c)
    exact = float(part.covariance().trace())
    rows, samples = [], {}
    for w in (0.0, 1.0, 3.0):
        g = torch.Generator().manual_seed(11)
        t0 = time.perf_counter()
        r = sample(classifier_free(model, c, w), sde, (n, 2), "ancestral", generator=g,
                   dtype=torch.float64)
        x = r.x
        samples[w] = x
        spread = float(torch.cov(x.T).trace())
        mean_shift = float((x.mean(0) - part.mean()).norm())
        rows.append({"w": w, "trace cov": spread, "exact class trace": exact,
                     "ratio": spread / exact, "mean shift": mean_shift,
                     "mean log p_class": float(part.log_prob(x).mean()),
                     "nfe": r.nfe, "wall_s": time.perf_counter() - t0})
        print(rows[-1], flush=True)
    return rows, {"gm": gm, "class": c, "samples": samples}


def guidance_figure(info: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gm, c, samples = info["gm"], info["class"], info["samples"]
    part = gm.component(c)
    m, s = part.mean(), part.covariance().diagonal().sqrt()
    lo, hi = m - 5 * s.max(), m + 5 * s.max()
    g0, g1 = torch.meshgrid(torch.linspace(float(lo[0]), float(hi[0]), 200, dtype=torch.float64),
                            torch.linspace(float(lo[1]), float(hi[1]), 200, dtype=torch.float64),
                            indexing="ij")
    grid = torch.stack([g0.reshape(-1), g1.reshape(-1)], 1)
    dens = part.log_prob(grid).exp().reshape(200, 200)
    fig, axes = plt.subplots(1, len(samples), figsize=(4.2 * len(samples), 4.2), sharex=True,
                             sharey=True)
    for ax, (w, x) in zip(axes, samples.items()):
        ax.contour(g0.numpy(), g1.numpy(), dens.numpy(), levels=6, colors="k", linewidths=0.8)
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=2, alpha=0.3, color="tab:blue")
        spread = float(torch.cov(x.T).trace()) / float(part.covariance().trace())
        ax.set_title(f"w = {w:g}: spread {spread:.2f}x the class's")
        ax.set_xlim(float(lo[0]), float(hi[0]))
        ax.set_ylim(float(lo[1]), float(hi[1]))
        ax.set_xlabel("x1")
    axes[0].set_ylabel("x2")
    fig.suptitle(f"classifier-free guidance, class {c} of a 2-D 3-class mixture "
                 "(contours: exact class density)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def smc_figure(rows: list[dict], cases: dict[str, Case], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(cases), figsize=(4.3 * len(cases), 4.2))
    for ax, (name, case) in zip(axes, cases.items()):
        mine = [r for r in rows if r["case"] == name]
        smc = [r for r in mine if r["method"].startswith("SMC") and "steps" not in r["method"]]
        ax.plot([r["evals/sample"] for r in smc], [r["ratio"] for r in smc], "o-",
                color="tab:red", label="SMC, K = 1..256")
        for r in smc:
            ax.annotate(r["method"][4:], (r["evals/sample"], r["ratio"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
        for r in mine:
            if r["method"].startswith("replacement"):
                ax.plot(r["evals/sample"], r["ratio"], "s", color="tab:blue", ms=5,
                        label="replacement (pc, sde, ancestral)")
            elif "steps" in r["method"]:
                ax.plot(r["evals/sample"], r["ratio"], "D", color="tab:purple", ms=5,
                        label="SMC K = 64, 400 steps")
            elif r["method"].startswith("RePaint"):
                ax.plot(r["evals/sample"], r["ratio"], "^", color="tab:green", ms=6,
                        label="RePaint r = 2, 5")
        ax.axhline(1.0, color="k", lw=0.8, ls="--", label="noise floor")
        ax.axhline(1.5, color="gray", lw=0.8, ls=":", label="1.5 x floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{case.label}, {case.role}", fontsize=10)
        ax.set_xlabel("model evaluations per sample")
    axes[0].set_ylabel("SW2 to exact conditional / noise floor")
    uniq: dict = {}
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        uniq.update(zip(labels, handles))
    fig.legend(uniq.values(), uniq.keys(), fontsize=8, loc="lower center", ncol=len(uniq))
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(rows: list[dict], cases: dict[str, Case]) -> str:
    """Per case: the best approximate method, and the smallest K from which every SMC row (at
    the default steps) is within 1.5x the floor on average."""
    lines = []
    for name, case in cases.items():
        mine = [r for r in rows if r["case"] == name]
        approx = min((r for r in mine if not r["method"].startswith("SMC")),
                     key=lambda r: r["ratio"])
        smc = [r for r in mine if r["method"].startswith("SMC") and "steps" not in r["method"]]
        within = [r for i, r in enumerate(smc) if all(q["ratio"] <= 1.5 for q in smc[i:])]
        line = (f"- {case.label}, {case.role}: best approximate method {approx['method']} at "
                f"{approx['evals/sample']} evaluations per sample, {approx['ratio']:.2f}x the "
                f"floor; ")
        if within:
            r = within[0]
            line += (f"SMC within 1.5x from {r['method']} on ({r['evals/sample']} evaluations "
                     f"per sample: {r['ratio']:.2f}x, per seed {r['ratio per seed']}; largest K "
                     f"{smc[-1]['ratio']:.2f}x)")
        else:
            line += f"SMC not within 1.5x at every larger K (largest K {smc[-1]['ratio']:.2f}x)"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (small N, few methods)")
    parser.add_argument("--n", type=int, default=1000,
                        help="samples per method (and per exact set)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = 200 if args.quick else args.n
    t_start = time.perf_counter()
    cases = {name: Case(name, role, make(), n_known, n)
             for name, (role, make, n_known) in CASES.items()}
    rows: list[dict] = []
    for case in cases.values():
        print(f"== {case.label}: floor {case.floor:.4f}", flush=True)
        rows += conditional_rows(case, args.quick)
    g_rows, g_info = guidance_rows(args.quick)
    suffix = "_quick" if args.quick else ""
    smc_png = RESULTS / f"conditional_smc{suffix}.png"
    guide_png = RESULTS / f"conditional_guidance{suffix}.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    smc_figure(rows, cases, smc_png)
    guidance_figure(g_info, guide_png)
    total = time.perf_counter() - t_start

    cols = ["method", "nfe", "evals/sample", "wall_s", "sw", "ratio", "ratio per seed",
            "min_ess_frac"]
    text = header("Conditional generation against the exact conditional (Gaussian mixtures)")
    text += (f"- N = {n} samples per method; SW2 with {N_PROJ} directions, averaged over {REFS} "
             f"exact reference sets; floor = SW2 between two exact sets of N, averaged over "
             f"{REFS} pairs; ratio = SW2 / floor (1 = indistinguishable from exact)\n"
             f"- model: exact unconditional eps of the mixture, VP SDE (linear, beta 0.1-20), "
             f"end time eps = 1e-3, float32 states\n"
             f"- SMC defaults: {DEFAULT_STEPS} steps ({DEFAULT_SPACING} grid), kernel variance "
             f"geometric, twist scale {DEFAULT_TWIST_SCALE:g}, systematic resampling at "
             f"ESS < K/2; nfe = steps + 1 (denoise); evals/sample = nfe * K\n"
             f"- total wall time {total:.0f} s\n\n")
    text += "## Summary\n\n" + summary(rows, cases) + "\n"
    text += __doc__.split("Usage::")[0].split("\n", 2)[2] + "\n"
    for case in cases.values():
        mine = [r for r in rows if r["case"] == case.name]
        observed = [round(v, 4) for v in case.x_known[0, case.known].tolist()]
        text += (f"\n## {case.label}: {case.role}\n\nobserved {observed}; exact conditional: "
                 f"{case.cond.num_components} component(s) with weights "
                 f"{[round(w, 3) for w in case.cond.weights.tolist()]}; noise floor "
                 f"{case.floor:.4f}\n\n" + table(mine, cols) + "\n")
    text += ("\n## Classifier-free guidance and the class's spread\n\n"
             "Class 0 of a 2-D mixture of three overlapping classes (`guidance_mixture`) with the "
             "exact class-conditional model "
             "(`class_conditional_model`), `classifier_free(model, 0, w)`, ancestral sampler "
             f"(999 steps), {len(g_info['samples'][0.0])} samples; `trace cov` is the trace of "
             "the samples' covariance, `ratio` its ratio to the exact class's, `mean shift` the "
             "distance from the samples' mean to the class's mean.\n\n"
             + table(g_rows, ["w", "trace cov", "exact class trace", "ratio",
                              "mean shift", "mean log p_class", "nfe"]) + "\n\n"
             f"![SMC convergence]({smc_png.name})\n\n![guidance]({guide_png.name})\n")
    write_result(f"conditional{suffix}", text)
    (RESULTS / f"conditional{suffix}.json").write_text(json.dumps(
        {"n": n, "refs": REFS, "n_projections": N_PROJ, "rows": rows, "guidance": g_rows,
         "total_s": total}, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
