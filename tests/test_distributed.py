"""Two gloo processes under torchrun train exactly like one process with the same global batch;
a failure of rank 0 alone stops every rank with its error."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from helpers import TINY_MLP, cli_sets
from sde_gen.app.checkpoint import list_checkpoints, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SETS = [*TINY_MLP, "train.log_every=5", "train.warmup=5", "train.steps=15",
        "train.ckpt_every=15", "train.grad_clip=0"]


def _run(workdir: Path, nproc: int) -> subprocess.CompletedProcess:
    sets = cli_sets(SETS)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(ROOT / "cli.py"), "train", "--no-progress",
           "--workdir", str(workdir), *sets]
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


#: Runs the CLI as one rank of a process group; on rank 0 every ``torch.save`` fails as on a full
#: disk (``FULL_DISK=1``).
LAUNCHER = """
import errno, os, sys
sys.path.insert(0, {root!r})
import torch
if os.environ["RANK"] == "0" and os.environ.get("FULL_DISK") == "1":
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    torch.save = full
from sde_gen.app.cli import main
sys.argv[0] = "sde-gen"
main()
"""


def _ranks(tmp_path: Path, workdir: Path, **env) -> list[subprocess.CompletedProcess]:
    """Two ranks started by hand, without torchrun's agent (which would kill the survivor of a
    failed rank, as it cannot on other nodes), on a free port."""
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(LAUNCHER.format(root=str(ROOT))))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sets = cli_sets(SETS)
    procs = []
    for rank in (0, 1):
        env_r = dict(os.environ, OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank),
                     WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **env)
        procs.append(subprocess.Popen(
            [sys.executable, str(script), "train", "--no-progress", "--workdir", str(workdir),
             *sets], env=env_r, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a rank is still waiting after 120 s") from None
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def _error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, res.stderr[-2000:]
    return lines[0]


def test_a_checkpoint_rank_0_cannot_write_stops_every_rank(tmp_path):
    # Regression (issue 23.9): rank 0 failed alone and the others waited at the barrier (NCCL:
    # for ever; gloo: a "Connection closed by peer" traceback).
    workdir = tmp_path / "run"
    for res in _ranks(tmp_path, workdir, FULL_DISK="1"):
        line = _error_line(res)
        assert f"cannot write checkpoint {workdir / 'checkpoints'}" in line
        assert "No space left on device" in line
    assert not list((workdir / "checkpoints").iterdir())  # no checkpoint, no temp file


def test_a_run_lock_held_elsewhere_stops_every_rank(tmp_path):
    from sde_gen.app.run_lock import run_lock

    workdir = tmp_path / "run"
    with run_lock(workdir):  # another training process holds the run
        results = _ranks(tmp_path, workdir)
    for res in results:
        assert "is in use by another training process" in _error_line(res)
