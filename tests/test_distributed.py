"""Two gloo processes under torchrun train exactly like one process with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from sde_gen.app.checkpoint import list_checkpoints, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SETS = ["model.width=32", "model.depth=1", "model.emb_dim=16", "train.batch_size=64",
        "train.plot_samples=0", "train.log_every=5", "train.warmup=5", "train.device=cpu",
        "train.steps=15", "train.ckpt_every=15", "train.grad_clip=0"]


def _run(workdir: Path, nproc: int) -> subprocess.CompletedProcess:
    sets = [a for s in SETS for a in ("--set", s)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "cli.py"), "train", "--no-progress", "--workdir", str(workdir), *sets]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_match_one(tmp_path):
    one, two = _run(tmp_path / "one", 1), _run(tmp_path / "two", 2)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("checkpoint:") == 1  # rank 0 alone reports and writes
    a = load_checkpoint(list_checkpoints(tmp_path / "one")[-1])
    b = load_checkpoint(list_checkpoints(tmp_path / "two")[-1])
    assert a["step"] == b["step"] == 15
    for k in a["model"]:
        # Same data, times and noise; only the gradient all-reduce order differs (float32).
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-5, rtol=1e-4)
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # written once, by rank 0


def test_sampling_split_across_ranks_matches_one_process(tmp_path):
    """Sample i depends on (seed, i) alone: two ranks with batches of 16 give exactly the samples
    of one process with batches of 7, also for a solver that draws noise at every step (up to
    the float32 rounding of the network's batched matrix products)."""
    assert _run(tmp_path / "run", 1).returncode == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    outs = []
    for nproc, batch in ((1, 7), (2, 16)):
        out = tmp_path / f"s{nproc}.png"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", str(ROOT / "cli.py"), "sample", "--ckpt",
               str(tmp_path / "run"), "--solver", "ancestral", "--steps", "4", "--num-samples",
               "50", "--batch-size", str(batch), "--out", str(out), "--no-progress", "--device",
               "cpu"]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stdout.count("plot:") == 1
        outs.append(np.load(out.with_suffix(".npz"))["samples"])
    assert outs[0].shape == (50, 2)
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-5)
