"""Train a 2-D run through ``sde_gen.app.train`` and score it against the exact data density.

Shared by ``training_quality.py`` and the peer comparison. Scores of a run on a Gaussian-mixture
dataset (``q`` is known in closed form):

- ``kl``: the paired mean of ``log q(x) - log p_theta(x)`` over ``n`` fresh data points, an
  estimate of ``KL(q || p_theta)`` through the exact-trace ODE likelihood (dopri5, 1e-5), with its
  standard error, and the likelihood solve's NFE;
- ``far``: how many of ``n`` probability-flow samples (dopri5, default tolerances, the ``sample``
  default) land farther than ``3 R`` from the origin, ``R`` the largest norm of 10,000 data
  points; ``ode_nfe`` is that solve's NFE;
- ``logq``: ``E_p[log q]`` of those samples against the data's own ``E_q[log q]``;
- ``energy``: energy distance of the samples to fresh data (its noise floor: data vs data).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch

from sde_gen.app.config import load_config
from sde_gen.app.likelihood_report import evaluate_likelihood
from sde_gen.app.runs import load_run
from sde_gen.app.train import train
from sde_gen.data.toy2d import Toy2D
from sde_gen.metrics import energy_distance
from sde_gen.sampling import sample


def data_radius(data: Toy2D, n: int = 10_000) -> float:
    x = data.sample(n, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    return float(x.norm(dim=1).max())


def rate_probe(overrides: list[str], steps: int = 200) -> float:
    """Training steps per CPU second of a config, one thread, start-up cost excluded.

    Two throwaway runs (``steps // 10`` and ``steps`` steps) are timed and the difference gives
    the marginal rate. CPU time of a single-threaded process does not depend on what else runs
    on the machine, so a budget in CPU seconds compares recipes fairly on a shared machine; on an
    idle core it is the wall-clock budget.
    """
    def cpu_seconds(n: int) -> float:
        with tempfile.TemporaryDirectory() as d:
            cfg = load_config(None, overrides + [f"train.steps={n}", "train.plot_samples=0",
                                                 f"train.ckpt_every={n}", "train.device=cpu"])
            t0 = time.process_time()
            train(cfg, d, progress=False)
            return time.process_time() - t0

    short = max(steps // 10, 1)
    return (steps - short) / max(cpu_seconds(steps) - cpu_seconds(short), 1e-6)


def train_2d(overrides: list[str], workdir: Path, *, steps: int | None = None,
             seconds: float | None = None) -> dict:
    """Train through the real path. With ``seconds`` (a budget in single-thread CPU seconds) the
    step count is calibrated by :func:`rate_probe`, so that the LR schedule ends with the budget.
    ``train_s`` is the CPU time the run took."""
    extra = ["train.plot_samples=0", "train.device=cpu"]
    if seconds is not None and steps is None:
        steps = max(50, int(rate_probe(overrides) * seconds))
    if steps is not None:
        extra += [f"train.steps={steps}", f"train.ckpt_every={steps}"]
    cfg = load_config(None, overrides + extra)
    t0 = time.process_time()
    res = train(cfg, workdir, progress=False)
    return {"steps": res.step, "train_s": time.process_time() - t0}


@torch.no_grad()
def score_2d(workdir: Path, *, n: int = 2000, seed: int = 0) -> dict:
    run = load_run(workdir)
    data = Toy2D(run.cfg.data.name)
    rep = evaluate_likelihood(run, n=n, batch_size=n, split="test", seed=seed, progress=False)
    out = {"kl": rep["kl_gap_nats"], "kl_se": rep["kl_gap_stderr"], "ll_nfe": rep["nfe"]}
    out.update(score_samples(lambda m, g: sample(run.model, run.sde, (m, 2), "ode", generator=g),
                             data, n=n, seed=seed))
    return out


def score_samples(draw, data: Toy2D, *, n: int = 2000, seed: int = 0) -> dict:
    """Scores of ``draw(n, generator) -> SampleResult or tensor`` against ``data``."""
    g = torch.Generator().manual_seed(seed + 7)
    res = draw(n, g)
    x = (res.x if hasattr(res, "x") else res).double()
    fresh = data.sample(n, generator=torch.Generator().manual_seed(seed + 11), dtype=torch.float64)
    fresh2 = data.sample(n, generator=torch.Generator().manual_seed(seed + 13), dtype=torch.float64)
    out = {"far": int((x.norm(dim=1) > 3 * data_radius(data)).sum()),
           "max_norm": float(x.norm(dim=1).max()),
           "energy": float(energy_distance(x, fresh)),
           "energy_floor": float(energy_distance(fresh2, fresh))}
    if getattr(res, "nfe", None) is not None:
        out["ode_nfe"] = res.nfe
    if data.has_density:
        logq = data.log_prob(x)
        out["logq"] = float(logq.mean())
        out["logq_se"] = float(logq.std() / math.sqrt(n))
        out["logq_data"] = float(data.log_prob(fresh).mean())
    return out
