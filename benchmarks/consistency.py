"""Consistency distillation at 1, 2 and 4 NFE against the teacher's deterministic solvers, on
their default grids and calibrated (:func:`~sde_gen.sampling.calibrate`, LD3), at the same NFE
and at 10 NFE: exact mixtures (KL, energy distance) and the trained digits model
(FD-classifier), with the distillation's and the calibration's CPU cost.

**Mixtures** (VP): the 2-D and 8-D mixtures of ``benchmarks/samplers.py`` and the unseen 12-D one
of ``benchmarks/fast_samplers.py``. The teacher is the mixture's exact eps
(``GaussianMixture.eps_model``), so the teacher's rows carry discretization error only. The
student is the package's default 2-D network shape (residual MLP, width 128, 3 blocks, EDM
prediction, log-SNR conditioning) trained from scratch by
:func:`~sde_gen.consistency.consistency_distillation_loss` (Adam, lr 1e-3, batch 512, EMA 0.999
warm-up), on data drawn from the mixture. Metrics on ``n`` samples from fresh prior draws:

- KL(p || q) = E_p[log p] - E_p[log q]: the cross term exactly (the mixture's closed-form
  log-density at t = 0), the entropy of the samples by the Kozachenko-Leonenko 1-NN estimator
  ([Kozachenko87]); its bias is shown by the row ``exact samples`` (the estimator on n draws of
  q itself, whose true KL is 0). A sampler that collapses (every deterministic one at 1 NFE)
  has a very negative entropy estimate, i.e. a large KL;
- the energy distance to n fresh data samples ([Szekely13]; floor: two data sets).

Teacher solvers at NFE K (the final denoise counted): ``ddim`` with K intervals and no denoise,
and ``ddim``, ``dpm`` (3M), ``unipc`` (bh2-2), ``ipndm`` (3) with K - 1 intervals and the denoise
(K >= 2); the best by KL is reported, and the best at 10 NFE.

Calibrated teacher at NFE K: each solver of :data:`~sde_gen.sampling.calibrate.CALIBRATABLE`
(iPNDM 3, DEIS 3, DPM 3M) calibrated at K (one shared teacher solve of 256 tuning and 128
validation draws, seed 100, then :data:`MIX_BUDGET_S` seconds of descent per solver), the best by
KL reported. A calibrated grid ends in the denoise, so it needs K = 1 + k (k >= 1): K = 1 cannot
be calibrated (the table says so in its row), and at K = 2 the grid has one interval and no
interior time to learn (the calibration keeps the default grid). ``calib. CPU s`` is the
process time of the teacher solve plus the reported solver's descent: what calibrating that one
solver at that NFE costs on its own.

**Digits**: the trained run ``runs/digits_restore`` (VP, 8x8 U-Net, 1500 steps; read only) is
distilled by :func:`sde_gen.app.distill.distill` (the ``sde-gen distill`` path) into a temporary
run; FD-classifier of 1000 samples (``sde-gen eval``'s, cached classifier) for the student at
K = 1, 2, 4 and the teacher's DDIM / iPNDM at the same NFE and iPNDM at 10 NFE, and the
teacher calibrated as above at K = 2, 4 and 10 (256 + 128 draws, seed 0 as in ``sde-gen
calibrate``, :data:`DIGITS_BUDGET_S` seconds of descent per solver; the best by FD-classifier
reported). The run is read only: the grids are kept in memory, not written to its
``calibration.json``.

Usage::

    python -m benchmarks.consistency                 # about 15 CPU minutes, one thread
    python -m benchmarks.consistency --quick         # smoke run
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import header, table, write_result
from benchmarks.fast_samplers import UNSEEN
from benchmarks.samplers import anisotropic_8d, asymmetric_2d
from sde_gen.analytic import GaussianMixture
from sde_gen.consistency import ConsistencyModel, consistency_distillation_loss, distillation_grid
from sde_gen.ema import EMA
from sde_gen.errors import UserInputError
from sde_gen.metrics import energy_distance
from sde_gen.nets.mlp import MLP
from sde_gen.parameterization import ScoreModel
from sde_gen.sampling import calibrate, sample
from sde_gen.sampling.calibrate import CALIBRATABLE, teacher
from sde_gen.sde import VPSDE

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "runs" / "digits_restore"
NFES = (1, 2, 4)
TEACHER = {"ddim": {}, "dpm": {"order": 3}, "unipc": {"order": 2, "variant": "bh2"},
           "ipndm": {"order": 3}}
#: NFEs at which the calibrated teacher is tried (1 is reported as unreachable).
CAL_NFES = (1, 2, 4, 10)
#: Seconds of descent per calibration (the shared teacher solve comes on top).
MIX_BUDGET_S = 5.0
DIGITS_BUDGET_S = 40.0


def kl_estimate(x: torch.Tensor, gm: GaussianMixture) -> float:
    """KL(p || q) from samples ``x`` of p: E_p[log p] by Kozachenko-Leonenko (1-NN),
    ``H = psi(n) - psi(1) + log V_d + d mean(log r_i)``; E_p[log q] exactly."""
    x = x.double()
    n, d = x.shape
    r = torch.cdist(x, x).fill_diagonal_(math.inf).min(1).values.clamp(min=1e-300)
    log_vd = d / 2 * math.log(math.pi) - math.lgamma(d / 2 + 1)
    entropy = (torch.digamma(torch.tensor(float(n))) - torch.digamma(torch.tensor(1.0))
               + log_vd + d * torch.log(r).mean())
    return float(-entropy - gm.log_prob(x).mean())


def scores(x: torch.Tensor, gm: GaussianMixture, data: torch.Tensor) -> dict:
    if not torch.isfinite(x).all():
        return {"KL": math.inf, "energy": math.inf}
    return {"KL": kl_estimate(x, gm), "energy": float(energy_distance(x.double(), data))}


def teacher_runs(gm, sde, x_T, nfe: int):
    """(label, samples) of each teacher solver at ``nfe`` calls (the denoise counted)."""
    model = gm.eps_model(sde)
    out = []
    if nfe <= 4:
        res = sample(model, sde, None, "ddim", x_T=x_T, steps=nfe, denoise=False)
        out.append((f"ddim {nfe} steps, no denoise", res.x, res.nfe))
    if nfe >= 2:
        for solver, opts in TEACHER.items():
            res = sample(model, sde, None, solver, x_T=x_T, steps=nfe - 1, **opts)
            out.append((f"{solver} {nfe - 1} steps + denoise", res.x, res.nfe))
    return out


class SharedTeacher:
    """One teacher solve of a model (256 tuning + 128 validation draws, seed ``seed``) and the
    calibrations made from it, with their CPU seconds."""

    def __init__(self, model, sde, dim: tuple[int, ...], *, budget_s: float, seed: int = 100,
                 dtype: torch.dtype = torch.float32) -> None:
        self.model, self.sde, self.budget_s, self.dtype = model, sde, budget_s, dtype
        self.shape = (256, *dim)
        t0 = time.process_time()
        self.teacher = teacher(model, sde, self.shape, n_val=128,
                               generator=torch.Generator().manual_seed(seed), dtype=dtype)
        self.cpu = time.process_time() - t0

    def calibrations(self, nfe: int) -> tuple[list[tuple], str | None]:
        """``([(calibration, CPU s of its descent + the teacher solve)], None)``, or ``([], why)``
        where no calibrated grid makes ``nfe`` calls."""
        out = []
        for solver in CALIBRATABLE:
            t0 = time.process_time()
            try:
                cal = calibrate(self.model, self.sde, self.shape, nfe=nfe, solver=solver,
                                budget_s=self.budget_s, given_teacher=self.teacher,
                                dtype=self.dtype)
            except UserInputError as e:
                return [], str(e)
            out.append((cal, time.process_time() - t0 + self.cpu))
        return out, None


def calibrated_label(cal) -> str:
    what = (", 1 interval: nothing to learn" if cal.steps == 1 else
            f", {cal.iterations} it., start {cal.start}")
    return f"teacher calibrated {cal.solver} {cal.steps} steps + denoise{what}"


def calibrated_row(shared: SharedTeacher, nfe: int, score, key: str) -> dict:
    """The best calibrated teacher at ``nfe`` by ``score(cal)[key]`` (lower is better), or a
    row saying why no calibrated grid makes ``nfe`` calls."""
    cals, why = shared.calibrations(nfe)
    if not cals:  # calibrate's one-line refusal, shortened to its reason
        return {"method": f"teacher calibrated: impossible ({why.split(': ')[-1]})", "NFE": nfe}
    return min(({"method": calibrated_label(cal), "NFE": cal.nfe, **score(cal),
                 "calib. CPU s": f"{cpu:.0f}"} for cal, cpu in cals), key=lambda r: r[key])


def distill_mixture(gm: GaussianMixture, sde, *, steps: int, batch: int = 512,
                    intervals: int = 18, seed: int = 0) -> tuple[ConsistencyModel, float]:
    """A student trained from scratch against the exact teacher; its CPU seconds."""
    torch.manual_seed(seed)
    net = MLP(dim=gm.dim, width=128, depth=3, emb_dim=64, time_scale=1.0, fourier_features=0)
    student = ScoreModel(net, sde, prediction="edm", noise_cond="logsnr")
    ema = EMA(student, 0.999, mode="warmup")
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    ts = distillation_grid(sde, intervals, t_min=sde.default_t_min)
    teacher = gm.eps_model(sde)
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.process_time()
    for _ in range(steps):
        x0 = gm.sample(batch, generator=g).float()
        loss = consistency_distillation_loss(student, teacher, sde, x0, ts, generator=g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        ema.update(student)
    return ConsistencyModel(ema.module, sde, sde.default_t_min), time.process_time() - t0


def mixture_section(n: int, steps: dict[str, int], budget_s: float = MIX_BUDGET_S
                    ) -> tuple[list[str], list[dict]]:
    cases = {"2d-asym (tuning set)": asymmetric_2d(), "8d-aniso (tuning set)": anisotropic_8d(),
             "12d-3comp (unseen)": UNSEEN["12d-3comp"]()}
    sde = VPSDE()
    columns = ["case", "method", "NFE", "KL", "energy", "distill CPU s", "calib. CPU s"]
    lines, all_rows = [], []
    for name, gm in cases.items():
        data = gm.sample(n, generator=torch.Generator().manual_seed(7))
        floor = scores(gm.sample(n, generator=torch.Generator().manual_seed(8)), gm, data)
        x_T = sde.prior_sampling((n, gm.dim), generator=torch.Generator().manual_seed(9))
        cm, cpu = distill_mixture(gm, sde, steps=steps[name.split()[0]])
        shared = SharedTeacher(gm.eps_model(sde), sde, (gm.dim,), budget_s=budget_s,
                               dtype=torch.float64)

        def score(cal):
            res = sample(shared.model, sde, None, cal.solver, x_T=x_T.double(), ts=cal.ts,
                         **cal.options)
            assert res.nfe == cal.nfe, (cal.solver, res.nfe, cal.nfe)
            return scores(res.x, gm, data)

        rows = [{"method": "exact samples (estimator floor)", "NFE": "-", **floor}]
        for k in sorted(set(NFES) | set(CAL_NFES)):
            if k in NFES:
                res = sample(cm, sde, None, "consistency", x_T=x_T, steps=k,
                             generator=torch.Generator().manual_seed(10))
                rows.append({"method": f"consistency, {k} step(s)", "NFE": res.nfe,
                             **scores(res.x, gm, data),
                             "distill CPU s": f"{cpu:.0f} ({steps[name.split()[0]]} steps)"})
            rows.append(min(({"method": f"teacher {label}", "NFE": nfe, **scores(x, gm, data)}
                             for label, x, nfe in teacher_runs(gm, sde, x_T.double(), k)),
                            key=lambda r: r["KL"]))
            if k in CAL_NFES:
                rows.append(calibrated_row(shared, k, score, "KL"))
        rows = [{"case": name, **r} for r in rows]
        print(table(rows, columns), flush=True)
        all_rows += rows
    lines.append(table(all_rows, columns))
    return lines, all_rows


def digits_section(run_dir: Path, steps: int, n: int, budget_s: float = DIGITS_BUDGET_S
                   ) -> tuple[list[str], list[dict]]:
    from sde_gen.app.distill import distill
    from sde_gen.app.runs import load_run
    from sde_gen.app.sample_quality import evaluate_run

    run = load_run(run_dir)
    shared = SharedTeacher(run.model, run.sde, run.shape, budget_s=budget_s, seed=0)

    def score(cal):
        rep = evaluate_run(run, n=n, solver=cal.solver, steps=None, n_bpd=0, progress=False,
                           options={"ts": cal.ts, **cal.options})
        assert rep["nfe"] == cal.nfe, (cal.solver, rep["nfe"], cal.nfe)
        return {"FD-classifier": rep["fd_classifier"]}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        res = distill(run_dir, Path(tmp) / "digits_cm", steps=NFES, progress=False,
                      overrides=[f"train.steps={steps}", "train.batch_size=64",
                                 "train.ckpt_every=100000"])
        student = load_run(res.train.checkpoint)
        for k in sorted(set(NFES) | set(CAL_NFES)):
            if k in NFES:
                rep = evaluate_run(student, n=n, solver="consistency", steps=k, n_bpd=0,
                                   progress=False)
                rows.append({"method": f"consistency, {k} step(s)", "NFE": rep["nfe"],
                             "FD-classifier": rep["fd_classifier"],
                             "distill CPU s": f"{res.seconds:.0f} ({steps} steps, batch 64)"})
            runs = [("ddim", k, {"denoise": False})] if k <= 4 else []
            if k >= 2:
                runs.append(("ipndm", k - 1, {}))
            best = None
            for solver, s, opts in runs:
                rep = evaluate_run(run, n=n, solver=solver, steps=s, n_bpd=0,
                                   progress=False, options=opts)
                row = {"method": f"teacher {solver} {s} steps" + (", no denoise" if opts
                                                                  else " + denoise"),
                       "NFE": rep["nfe"], "FD-classifier": rep["fd_classifier"]}
                best = row if best is None or row["FD-classifier"] < best["FD-classifier"] else best
            rows.append(best)
            if k in CAL_NFES:
                rows.append(calibrated_row(shared, k, score, "FD-classifier"))
            print(table(rows[-3:], ["method", "NFE", "FD-classifier"]), flush=True)
        rep = evaluate_run(run, n=n, solver="ode", steps=None, n_bpd=0, progress=False)
        rows.append({"method": "teacher ode (dopri5, tol 1e-5)", "NFE": rep["nfe"],
                     "FD-classifier": rep["fd_classifier"]})
    return [table(rows, ["method", "NFE", "FD-classifier", "distill CPU s", "calib. CPU s"])], rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run (few steps and samples)")
    p.add_argument("--no-digits", action="store_true", help="skip the digits section")
    p.add_argument("--digits", type=Path, default=DIGITS,
                   help="the trained digits run (read only; default runs/digits_restore)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.process_time()
    steps = ({"2d-asym": 50, "8d-aniso": 50, "12d-3comp": 50} if args.quick else
             {"2d-asym": 2500, "8d-aniso": 2500, "12d-3comp": 2500})
    mix_lines, _ = mixture_section(500 if args.quick else 2000, steps,
                                   1.0 if args.quick else MIX_BUDGET_S)
    text = [header("Consistency distillation: 1, 2, 4 NFE against the teacher's solvers, "
                   "default grids and calibrated"), ""]
    text += ["See the module docstring of `benchmarks/consistency.py` for the setup. KL in nats "
             "(closed-form cross term, 1-NN entropy; its floor is the `exact samples` row); "
             "energy distance to fresh data. Teacher = the exact mixture score; the best of its "
             "deterministic solvers at each NFE (by KL) on their default grids, then the best "
             "calibrated one (LD3 grid; `calib. CPU s` = teacher solve + that solver's descent). "
             "A calibrated grid ends in the denoise, so 1 NFE cannot be calibrated, and at 2 NFE "
             "its single interval has nothing to learn.", "", "## Exact mixtures (VP)", "",
             *mix_lines, ""]
    if not args.no_digits and args.digits.is_dir():
        dig_lines, _ = digits_section(args.digits, 20 if args.quick else 300,
                                      200 if args.quick else 1000,
                                      2.0 if args.quick else DIGITS_BUDGET_S)
        text += [f"## Digits ({args.digits.name}, FD-classifier of 1000 samples)", "",
                 *dig_lines, ""]
    text += [f"Total CPU time of this benchmark: {time.process_time() - t0:.0f} s.", ""]
    write_result("consistency", "\n".join(text))


if __name__ == "__main__":
    main()
