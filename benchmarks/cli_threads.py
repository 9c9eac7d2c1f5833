"""The README's ``sde-gen likelihood`` command on a quickstart-style 2-D run, before and after
the commands took the run's thread policy (issue 23).

Trains the quickstart's run (``sde-gen train --sde vp``, 8gaussians, fewer steps) in a temporary
directory, then times ``sde-gen likelihood --ckpt RUN --n 2048 --trace exact`` in fresh processes:
with ``--threads N`` (the old behaviour: torch's default, N = the cores) and with the default
policy (one thread for 2-D data). Wall time of the whole command, and the solve time it reports.

    python -m benchmarks.cli_threads                  # 2-core CPU: --threads 2 vs the default
    python -m benchmarks.cli_threads --train-steps 4000 --old-threads 8
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import command, table, write_result

CLI = [sys.executable, "-m", "sde_gen.app.cli"]
SOLVE = re.compile(r"NLL (?P<nll>[-\d.]+) \+- [\d.]+ nats/example \((?P<n>\d+) test examples, "
                   r"exact trace, (?P<nfe>\d+) NFE per batch, (?P<s>[\d.]+) s\)")


def run(args: list[str]) -> tuple[str, float]:
    """Run ``sde-gen ARGS`` in a fresh process; its stdout and wall seconds."""
    start = time.perf_counter()
    res = subprocess.run([*CLI, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"sde-gen {' '.join(args)} failed:\n{res.stderr}")
    return res.stdout, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-steps", type=int, default=1000, help="steps of the 2-D run")
    p.add_argument("--n", type=int, default=2048, help="examples (the README's 2048)")
    p.add_argument("--old-threads", type=int, default=os.cpu_count() or 2,
                   help="the old behaviour's threads: torch's default, one per core")
    p.add_argument("--repeats", type=int, default=1, help="timings of each setting")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "8gaussians_vp"
        _, train_s = run(["train", "--sde", "vp", "--workdir", str(workdir), "--no-progress",
                          "--set", f"train.steps={args.train_steps}", "--set",
                          "train.device=cpu"])
        print(f"trained {args.train_steps} steps in {train_s:.0f} s")
        base = ["likelihood", "--ckpt", str(workdir), "--n", str(args.n), "--trace", "exact",
                "--no-progress", "--device", "cpu", "--out", str(Path(tmp) / "ll.json")]
        settings = [(f"--threads {args.old_threads} (before: torch's default)",
                     ["--threads", str(args.old_threads)]),
                    ("default policy (after: 1 thread for 2-D data)", [])]
        for _ in range(args.repeats):
            for name, extra in settings:
                load = os.getloadavg()[0]
                out, wall = run([*base, *extra])
                m = SOLVE.search(out)
                if m is None:
                    raise SystemExit(f"unexpected output:\n{out}")
                rows.append({"setting": name, "wall s": wall, "solve s": float(m["s"]),
                             "NFE per batch": int(m["nfe"]), "NLL": float(m["nll"]),
                             "load before": load})
                print(rows[-1])
    columns = ["setting", "wall s", "solve s", "NFE per batch", "NLL", "load before"]
    cpu = f"CPU ({os.cpu_count()} cores; torch default {torch.get_num_threads()} threads)"
    text = (
        "# CLI thread policy: the README's likelihood command on a 2-D run\n\n"
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        f"- device: {cpu}\n"
        f"- torch {torch.__version__}, Python {sys.version.split()[0]}\n"
        f"- command: `python {command()}`\n\n"
        f"`sde-gen likelihood --ckpt RUN --n {args.n} --trace exact` (dopri5, rtol = atol = "
        f"1e-5, batches of 512) on `sde-gen train --sde vp` with "
        f"`train.steps={args.train_steps}` (8gaussians, the quickstart's config), each in a "
        "fresh process. \"before\" reproduces the old commands, which left torch's default "
        "intra-op threads; \"after\" is the default now (the run's `train.threads`, 0: one "
        "thread for 2-D data). Wall is the whole command (imports included); solve is the "
        "time the command reports for its ODE solves. \"load before\" is the 1-minute load "
        "average when the command started (other processes on the machine).\n\n"
        + table(rows, columns) + "\n"
    )
    write_result("cli_threads", text)


if __name__ == "__main__":
    main()
