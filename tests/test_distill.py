"""``sde-gen distill``: a distillation is a run (checkpointed, resumed bitwise, stopped cleanly by
SIGTERM), sampled by ``--solver consistency``; misuse is one line, exit code 2, nothing written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli_runs import toy_run
from helpers import cli_sets, one_error_line
from sde_gen.app.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from sde_gen.app.cli import app, main
from sde_gen.app.distill import distill
from sde_gen.app.runs import load_run
from sde_gen.consistency import ConsistencyModel
from sde_gen.sampling.grid_file import OptimizedGrid, sde_signature

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
FAST = ["train.log_every=5", "train.ckpt_every=20", "train.keep=10"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return toy_run(tmp_path_factory.mktemp("teacher") / "run", "train.steps=30")


@pytest.fixture(scope="module")
def distilled(teacher, tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("distilled") / "run"
    res = runner.invoke(app, ["distill", "--ckpt", str(teacher), "--steps", "1", "2", "4", "-w",
                              str(wd), "--no-progress", *cli_sets([*FAST, "train.steps=20"])])
    assert res.exit_code == 0, res.output
    assert "1 step(s): energy distance" in res.output and "4 step(s)" in res.output
    assert f"sample --ckpt {wd} --solver consistency" in res.output
    return wd


def files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_a_distilled_run_is_a_run_of_the_teacher_s_family(teacher, distilled):
    run = load_run(distilled)
    assert isinstance(run.model, ConsistencyModel)
    assert run.cfg.model == load_run(teacher).cfg.model and run.cfg.sde == load_run(teacher).cfg.sde
    state = load_checkpoint(list_checkpoints(distilled)[-1])
    assert state["consistency"]["method"] == "consistency"
    assert state["consistency"]["steps"] == [1, 2, 4] and state["consistency"]["intervals"] == 18
    report = json.loads((distilled / "distill.json").read_text())
    assert [r["steps"] for r in report["rows"]] == [1, 2, 4]
    assert [r["nfe"] for r in report["rows"]] == [1, 2, 4]
    assert report["distill_cpu_seconds"] > 0


@pytest.mark.parametrize("k", [1, 3])
def test_sample_with_the_consistency_solver(distilled, tmp_path, k):
    out = tmp_path / "s.png"
    res = runner.invoke(app, ["sample", "--ckpt", str(distilled), "--solver", "consistency",
                              "--steps", str(k), "--n", "64", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert f"{k} NFE per batch" in res.output
    x = torch.from_numpy(np.load(out.with_suffix(".npz"))["samples"])
    assert x.shape == (64, 2) and torch.isfinite(x).all()


def test_sample_picks_the_consistency_solver_for_a_distilled_run(distilled, tmp_path):
    out = tmp_path / "s.png"
    res = runner.invoke(app, ["sample", "--ckpt", str(distilled), "--steps", "2", "--n", "16",
                              "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "sampling with --solver consistency" in res.output and "2 NFE per batch" in res.output
    x = torch.from_numpy(np.load(out.with_suffix(".npz"))["samples"])
    explicit = tmp_path / "e.png"
    res = runner.invoke(app, ["sample", "--ckpt", str(distilled), "--solver", "consistency",
                              "--steps", "2", "--n", "16", "--out", str(explicit),
                              "--no-progress"])
    assert res.exit_code == 0 and "sampling with --solver consistency" not in res.output
    assert torch.equal(x, torch.from_numpy(np.load(explicit.with_suffix(".npz"))["samples"]))


def test_distill_resumes_bitwise(teacher, tmp_path):
    sets = [*FAST, "train.steps=40"]
    full = distill(teacher, tmp_path / "full", steps=[1], overrides=sets, progress=False)
    distill(teacher, tmp_path / "cut", steps=[1], overrides=sets, progress=False)
    checkpoint_path(tmp_path / "cut", 40).unlink()  # died after its step-20 checkpoint
    cut = distill(teacher, tmp_path / "cut", steps=[1], overrides=sets, progress=False)
    assert cut.train.step == full.train.step == 40
    a, b = load_checkpoint(full.train.checkpoint), load_checkpoint(cut.train.checkpoint)
    for entry in ("model", "ema"):
        assert all(torch.equal(a[entry][k], b[entry][k]) for k in a[entry]), entry
    assert torch.equal(a["noise_rng"], b["noise_rng"])
    steps = [json.loads(ln)["step"] for ln in
             (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


def test_sigterm_checkpoints_and_the_distillation_resumes_bitwise(teacher, tmp_path):
    sets = ["train.log_every=5", "train.ckpt_every=100000"]
    cmd = [sys.executable, str(ROOT / "cli.py"), "distill", "--ckpt", str(teacher), "--steps",
           "1", "-w", str(tmp_path / "cut"), "--no-progress",
           *cli_sets([*sets, "train.steps=100000"])]
    proc = subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists()
                                          and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "interrupted at step" in out and "run the same command to resume" in out
    assert not (tmp_path / "cut" / "distill.json").exists()
    (ckpt,) = list_checkpoints(tmp_path / "cut")
    stopped_at = load_checkpoint(ckpt)["step"]
    assert 0 < stopped_at < 100000
    # Resumed to the end (train.steps may change on resume; the LR is constant), and compared
    # with a distillation that never stopped.
    done = [*sets, f"train.steps={stopped_at + 20}"]
    a, b = (load_checkpoint(distill(teacher, tmp_path / wd, steps=[1], overrides=done,
                                    progress=False).train.checkpoint) for wd in ("cut", "full"))
    assert a["step"] == b["step"] == stopped_at + 20
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_misuse_is_one_line_and_writes_nothing(teacher, distilled, tmp_path, monkeypatch,
                                               capsys):
    sde = load_run(distilled).sde
    grid = OptimizedGrid(ts=torch.tensor([sde.T, 0.3, 1e-3], dtype=torch.float64), solver="dpm",
                         options={"order": 2}, nfe=3, error_before=1.0, error_after=0.5,
                         heldout_before=1.1, heldout_after=0.6, seconds=0.1, method="gits",
                         sde=sde_signature(sde)).save(tmp_path / "grid.json")
    before = files(teacher) | files(distilled)
    cases = {
        "not distilled": (["sample", "--ckpt", str(teacher), "--solver", "consistency",
                           "--no-progress"],
                          "samples a distilled consistency model"),
        "eps solver": (["sample", "--ckpt", str(distilled), "--solver", "ddim", "--no-progress"],
                       "--solver ddim cannot sample it; use --solver consistency"),
        "grid file": (["sample", "--ckpt", str(distilled), "--grid", str(grid), "--no-progress"],
                      "--grid cannot sample it"),
        "path": (["sample", "--ckpt", str(distilled), "--path", "flow", "--no-progress"],
                 "--path cannot sample it"),
        "calibration file": (["sample", "--ckpt", str(distilled), "--steps", "3", "--calibration",
                              str(grid), "--no-progress"], "--calibration cannot sample it"),
        "calibrate": (["calibrate", "--ckpt", str(distilled), "--nfe", "4", "--budget", "1"],
                      "no solver grid to calibrate"),
        "end time": (["sample", "--ckpt", str(distilled), "--solver", "consistency",
                      "--t-min", "0.01", "--no-progress"], "distilled to t_min=0.001"),
        "repeated": (["distill", "--ckpt", str(teacher), "--steps", "1", "1"], "repeats"),
        "method": (["distill", "--ckpt", str(teacher), "--method", "ect"], "unknown --method"),
        "model key": (["distill", "--ckpt", str(teacher), "--set", "model.width=8",
                       "-w", str(tmp_path / "x")], "only train.* may be set"),
        "teacher dir": (["distill", "--ckpt", str(teacher), "-w", str(teacher)],
                        "is the teacher's run"),
        "student as teacher": (["distill", "--ckpt", str(distilled), "-w", str(tmp_path / "y")],
                               "already a distilled consistency model"),
        "other grid": (["distill", "--ckpt", str(teacher), "-w", str(distilled), "--intervals",
                        "10", *cli_sets([*FAST, "train.steps=20"])], "intervals=18, not 10"),
        "train over it": (["train", "--config", str(distilled / "config.yaml"), "-w",
                           str(distilled), "--no-progress"], "resume it with sde-gen distill"),
        "distill over a run": (["distill", "--ckpt", str(distilled), "-w", str(teacher)],
                               "already a distilled"),
    }
    for name, (args, words) in cases.items():
        line = one_error_line(runner.invoke(app, args))
        assert words in line, (name, line)
    for args in (["sample", "--ckpt", distilled, "--solver", "consistency", "--steps", "0"],
                 ["distill", "--ckpt", teacher, "--steps", "0"],
                 ["distill", "--ckpt", teacher, "--steps", "1", "x"]):
        monkeypatch.setattr(sys, "argv", ["sde-gen", *map(str, args)])
        with pytest.raises(SystemExit) as done:
            main()
        err = capsys.readouterr().err.strip().splitlines()
        assert done.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert files(teacher) | files(distilled) == before
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_an_export_of_a_distilled_run_stays_a_consistency_model(distilled, tmp_path):
    out = tmp_path / "cm.safetensors"
    res = runner.invoke(app, ["export", "--ckpt", str(distilled), "--out", str(out)])
    assert res.exit_code == 0, res.output
    exported, run = load_run(out), load_run(distilled)
    assert isinstance(exported.model, ConsistencyModel)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    t = torch.full((8,), 0.5)
    assert torch.equal(exported.model.consistency(x, t), run.model.consistency(x, t))
    line = one_error_line(runner.invoke(app, ["likelihood", "--ckpt", str(distilled), "--n", "8",
                                              "--out", str(tmp_path / "l.json"),
                                              "--no-progress"]))
    assert "not an eps-model" in line and not (tmp_path / "l.json").exists()
