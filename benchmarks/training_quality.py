"""Which training recipe reaches the exact answer: an ablation measured by the true KL.

Every row trains the 2-D ``8gaussians`` VP model through ``sde_gen.app.train`` with one component
changed from the default config (``configs/toy2d.yaml``), at a fixed budget of single-thread CPU
seconds (the step count calibrated per recipe by ``quality_common.rate_probe``, so the cosine LR
schedule ends with the budget; on an idle core this is the wall-clock budget, and unlike wall
time it barely depends on what else the shared machine runs) and at a fixed number of steps,
and scores it against the closed-form mixture density
(``quality_common.py``): the KL gap ``E_q[log q - log p_theta]`` ± its standard error from the
exact-trace ODE likelihood, how many of 2000 probability-flow samples land beyond 3x the data
radius, and the NFE of both adaptive solves (``ODE NFE``: sampling at the default tolerances
to eps 1e-3; ``LL NFE``: the likelihood solve to 1e-5). ``old default`` is the recipe before this
benchmark (eps, sin(1000 t), simple weighting, uniform t, fixed EMA 0.999, constant LR 2e-3,
batch 512, width 256, additive embedding, no Fourier features; the new MLP's zero-initialized
output layers are kept). ``train_s`` is CPU seconds. The ablation scores 1000 points per row
(its standard errors are larger than the 2000-point rows below).

Parts (each writes ``results/training_quality_<part>.json``; the markdown is rebuilt from all):

- ``ablation``: the component table (seed 0, the seed the defaults were picked on);
- ``defaults``: the default config on every mixture dataset x SDE (``configs/toy2d_*.yaml``) and
  on training seeds 1-3, none of which the defaults were tuned on;
- ``peer``: diffusers' DDPMScheduler with its example's training loop on the same data, a
  network of the same size and the same wall clock, against ours, by what both can be given:
  ``E_p[log q]`` of 2000 samples and the energy distance to fresh data (``benchmarks/peers.py``).

    python benchmarks/training_quality.py --part ablation --shard 0/2   # run shards in parallel
    python benchmarks/training_quality.py --part defaults
    python benchmarks/training_quality.py --part peer
    python benchmarks/training_quality.py --report                      # markdown only
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, header, table, write_result
from benchmarks.peers import import_diffusers, sample_toy_peer, train_toy_peer
from benchmarks.quality_common import score_2d, score_samples, train_2d
from sde_gen.app.config import load_config, to_dict
from sde_gen.app.runs import load_run
from sde_gen.data.toy2d import Toy2D
from sde_gen.sampling import sample

OLD_DEFAULT = ["model.prediction=eps", "model.noise_cond=t", "model.film=false",
               "model.fourier_features=0", "model.width=256", "model.emb_dim=128",
               "train.weighting=simple", "train.time_sampling=uniform", "train.batch_size=512",
               "train.ema_mode=fixed", "train.ema_decay=0.999", "train.lr_schedule=constant",
               "train.lr=0.002"]
ABLATION: dict[str, list[str]] = {
    "default": [],
    "old default": OLD_DEFAULT,
    # time sampling (with the default EDM weighting unless said)
    "time: uniform": ["train.time_sampling=uniform"],
    "time: importance + likelihood weighting": ["train.time_sampling=importance",
                                                "train.weighting=likelihood"],
    # weighting
    "weighting: simple, uniform t (DDPM)": ["train.weighting=simple",
                                            "train.time_sampling=uniform"],
    "weighting: likelihood, uniform t": ["train.weighting=likelihood",
                                         "train.time_sampling=uniform"],
    "weighting: min-SNR-5": ["train.weighting=min_snr", "train.min_snr_gamma=5"],
    # prediction target
    "prediction: eps": ["model.prediction=eps"],
    "prediction: x0": ["model.prediction=x0"],
    "prediction: v": ["model.prediction=v"],
    # EMA
    "EMA: fixed 0.999": ["train.ema_mode=fixed"],
    "EMA: power, sigma_rel 0.1": ["train.ema_mode=power", "train.ema_sigma_rel=0.1"],
    # LR schedule and batch
    "LR: constant": ["train.lr_schedule=constant"],
    "batch 512": ["train.batch_size=512"],
    # network
    "net: no FiLM (additive)": ["model.film=false"],
    "net: no input Fourier features": ["model.fourier_features=0"],
    "net: time input t (sin 1000 t)": ["model.noise_cond=t"],
    "net: width 256, emb 128": ["model.width=256", "model.emb_dim=128"],
}
DATASETS = ("8gaussians", "25gaussians")
SDE_CONFIGS = {"vp": "configs/toy2d_vp.yaml", "subvp": "configs/toy2d_subvp.yaml",
               "ve": "configs/toy2d_ve.yaml"}
ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["recipe", "budget", "steps", "train_s", "KL (nats)", "± se", "far / 2000", "max |x|",
           "ODE NFE", "LL NFE", "energy"]


def _row(name: str, budget: str, tr: dict, sc: dict) -> dict:
    return {"recipe": name, "budget": budget, "steps": tr["steps"], "train_s": tr["train_s"],
            "KL (nats)": sc["kl"], "± se": sc["kl_se"], "far / 2000": sc["far"],
            "max |x|": sc["max_norm"], "ODE NFE": sc["ode_nfe"], "LL NFE": sc["ll_nfe"],
            "energy": sc["energy"], "energy_floor": sc["energy_floor"]}


def run_one(overrides: list[str], *, steps: int | None = None, seconds: float | None = None,
            n: int = 2000) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as d:
        tr = train_2d(overrides, Path(d), steps=steps, seconds=seconds)
        return tr, score_2d(Path(d), n=n)


# Rows whose cost per step differs from the default's: only they get a fixed-budget run as well
# (for the others a fixed budget is the same step count as the default's, up to timing noise).
COST_CHANGING = ("default", "old default", "batch 512", "net: no FiLM (additive)",
                 "net: no input Fourier features", "net: width 256, emb 128")


def _done(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def part_ablation(args, shard: tuple[int, int], out: Path) -> list[dict]:
    rows = _done(out)
    names = [k for i, k in enumerate(ABLATION) if i % shard[1] == shard[0]]
    for name in names:
        budgets = [f"{args.steps} steps"]
        if name in COST_CHANGING:
            budgets.append(f"{args.seconds:g} s")
        for budget in budgets:
            if any(r["recipe"] == name and r["budget"] == budget for r in rows):
                continue  # resumed: already measured
            kw = {"seconds": args.seconds} if budget.endswith(" s") else {"steps": args.steps}
            tr, sc = run_one(ABLATION[name], n=args.n_ablation, **kw)
            rows.append(_row(name, budget, tr, sc))
            print(json.dumps(rows[-1]), flush=True)
            out.write_text(json.dumps(rows, indent=1))
    return rows


def part_defaults(args, shard: tuple[int, int], out: Path) -> list[dict]:
    jobs = [(data, sde, 0) for data in DATASETS for sde in SDE_CONFIGS]
    jobs += [("8gaussians", "vp", seed) for seed in (1, 2, 3)]
    rows = _done(out)
    for i, (data, sde, seed) in enumerate(jobs):
        name = f"{data} / {sde} / seed {seed}"
        if i % shard[1] != shard[0] or any(r["recipe"] == name for r in rows):
            continue
        base = to_dict(load_config(ROOT / SDE_CONFIGS[sde]))
        ov = [f"{s}.{k}={json.dumps(v)}" for s in ("sde", "train") for k, v in base[s].items()
              if k in ("name", "sigma_max", "sigma_min", "steps")]
        ov += [f"data.name={data}", f"train.seed={seed}"]
        tr, sc = run_one(ov, n=args.n)
        rows.append(_row(name, "default steps", tr, sc))
        print(json.dumps(rows[-1]), flush=True)
        out.write_text(json.dumps(rows, indent=1))
    return rows


def _peer_rate(data, *, lr: float | None, batch: int, steps: int = 150) -> float:
    """The peer's training steps per CPU second (two short runs, start-up excluded)."""
    def cpu(n: int) -> float:
        t0 = time.process_time()
        train_toy_peer(lambda m, g: data.sample(m, generator=g), width=PEER_WIDTH, depth=3,
                       emb_dim=128, steps=n, lr=lr, batch_size=batch, seed=0)
        return time.process_time() - t0

    return (steps - 15) / max(cpu(steps) - cpu(15), 1e-6)


PEER_WIDTH = 128  # with emb_dim 128: 183k parameters; sde-gen's default MLP has 166k


def part_peer(args, shard: tuple[int, int], out: Path) -> list[dict]:
    """Both sides get the same CPU-second budget (steps calibrated per side), batch and data."""
    data, rows = Toy2D("8gaussians"), []
    batch = load_config(None, []).train.batch_size
    for seconds in args.peer_seconds:
        with tempfile.TemporaryDirectory() as d:
            tr = train_2d([], Path(d), seconds=seconds)
            run = load_run(d)
            sc = score_samples(lambda m, g: sample(run.model, run.sde, (m, 2), "ode", generator=g),
                               data, n=args.n)
            rows.append({"method": "sde-gen default (PF-ODE, dopri5)", "budget_s": seconds,
                         "steps": tr["steps"], "train_s": tr["train_s"], **sc})
            print(json.dumps(rows[-1]), flush=True)
        if import_diffusers() is None:
            rows.append({"method": "diffusers peer: skipped (diffusers not installed)",
                         "budget_s": seconds})
            continue
        for lr, label in ((None, "example lr 1e-4"), (1e-3, "lr 1e-3")):
            steps = int(_peer_rate(data, lr=lr, batch=batch) * seconds)
            t0 = time.process_time()
            peer = train_toy_peer(lambda m, g: data.sample(m, generator=g), width=PEER_WIDTH,
                                  depth=3, emb_dim=128, steps=steps, lr=lr, batch_size=batch,
                                  seed=0)
            train_s = time.process_time() - t0
            x = sample_toy_peer(peer, args.n, seed=0)
            sc = score_samples(lambda m, g: x, data, n=args.n)
            rows.append({"method": f"diffusers DDPMScheduler, example loop, {label} "
                                   "(ancestral, 1000 steps)",
                         "budget_s": seconds, "steps": peer["steps"], "train_s": train_s, **sc})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def report() -> None:
    parts = {}
    for p in ("ablation", "defaults", "peer"):
        rows = []
        for f in sorted(RESULTS.glob(f"training_quality_{p}*.json")):
            rows += json.loads(f.read_text())
        if p == "defaults":  # one row per case (parts may have been run by several processes)
            rows = list({r["recipe"]: r for r in rows}.values())
        parts[p] = rows
    text = header("Training quality: recipes measured by the true KL (2-D mixtures)")
    text += __doc__.split("Parts")[0].split("\n", 1)[1] + "\n"
    if parts["ablation"]:
        order = list(ABLATION)
        rows = sorted(parts["ablation"], key=lambda r: (r["budget"], order.index(r["recipe"])))
        text += "## Ablation (8gaussians, VP, seed 0: the tuning case)\n\n"
        text += table(rows, COLUMNS) + "\n\n"
        floor = rows[0]["energy_floor"]
        text += (f"Energy-distance noise floor (data vs data, same n as the rows): {floor:.2g}. "
                 "Rows of the list above that are missing here were not run yet (CPU time).\n\n")
    if parts["defaults"]:
        text += "## Default config on every mixture, SDE and other seeds (not tuned on)\n\n"
        text += table(parts["defaults"], COLUMNS) + "\n\n"
    if parts["peer"]:
        text += "## Peer at the same CPU budget (8gaussians)\n\n"
        text += table(parts["peer"], ["method", "budget_s", "steps", "train_s", "logq", "logq_se",
                                      "logq_data", "energy", "energy_floor", "far", "max_norm"])
        text += ("\n\nBudget: CPU seconds of one thread, steps calibrated per side; batch 1024 "
                 "for both; the peer's network is a residual MLP of about the same size "
                 "(183k vs 166k parameters) with diffusers' timestep embedding. "
                 "`logq`: E_p[log q] of 2000 samples (the data's own E_q[log q] is "
                 "`logq_data`); `energy`: energy distance to 2000 fresh data points, against "
                 "`energy_floor` (two fresh data samples).\n")
    write_result("training_quality", text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("ablation", "defaults", "peer"))
    p.add_argument("--shard", default="0/1", help="K/N: run every N-th row starting at K")
    p.add_argument("--seconds", type=float, default=45.0, help="ablation budget, CPU seconds")
    p.add_argument("--steps", type=int, default=1500, help="ablation fixed step count")
    p.add_argument("--peer-seconds", type=float, nargs="+", default=[90.0])
    p.add_argument("--n", type=int, default=2000, help="evaluation points / samples")
    p.add_argument("--n-ablation", type=int, default=1000, help="evaluation points in the ablation")
    p.add_argument("--report", action="store_true", help="only rebuild the markdown")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.part and not args.report:
        k, n = map(int, args.shard.split("/"))
        suffix = f"_{k}of{n}" if n > 1 else ""
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"training_quality_{args.part}{suffix}.json"  # rows so far; resumable
        rows = {"ablation": part_ablation, "defaults": part_defaults, "peer": part_peer}[
            args.part](args, (k, n), out)
        out.write_text(json.dumps(rows, indent=1))
    report()


if __name__ == "__main__":
    main()
