"""Training that survives faults: preemption, torn checkpoints, hostile pickles, NaNs, exports."""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import sde_gen.app.train as train_mod
from helpers import TINY_MLP, cli_sets, one_error_line
from sde_gen.app.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from sde_gen.app.cli import app
from sde_gen.app.config import load_config
from sde_gen.app.runs import load_run
from sde_gen.app.train import NonFiniteLossError, train

ROOT = Path(__file__).resolve().parents[1]
# These tests resume with a different train.steps than the interrupted run; a cosine LR schedule
# depends on train.steps, so they use a constant one (test_train.py covers cosine resumes).
FAST = [*TINY_MLP, "train.log_every=5", "train.warmup=5", "train.lr_schedule=constant"]


def test_sigterm_checkpoints_and_resumes_bitwise(tmp_path):
    sets = FAST + ["train.steps=3000", "train.ckpt_every=100000"]
    cmd = [sys.executable, str(ROOT / "cli.py"), "train", "--no-progress", *cli_sets(sets)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd + ["--workdir", str(tmp_path / "cut")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 60
    def logged_twice() -> bool:
        return metrics.exists() and metrics.read_text().count("\n") >= 2

    while time.time() < deadline and not logged_twice():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "interrupted at step" in out and "run the same command to resume" in out
    ckpts = list_checkpoints(tmp_path / "cut")
    assert len(ckpts) == 1
    stopped_at = load_checkpoint(ckpts[0])["step"]
    assert 0 < stopped_at < 3000
    # Resume to the end, and compare with a run that never stopped.
    short = cli_sets([s for s in sets if not s.startswith("train.steps")]
                  + ["train.steps=" + str(stopped_at + 40)])
    for wd in ("cut", "full"):
        res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--no-progress",
                              *short, "--workdir", str(tmp_path / wd)],
                             env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    a = load_checkpoint(list_checkpoints(tmp_path / "cut")[-1])
    b = load_checkpoint(list_checkpoints(tmp_path / "full")[-1])
    assert a["step"] == b["step"] == stopped_at + 40
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_truncated_latest_checkpoint_falls_back(tmp_path, capsys):
    cfg = load_config(None, FAST + ["train.steps=20", "train.ckpt_every=10"])
    train(cfg, tmp_path, progress=False)
    latest = list_checkpoints(tmp_path)[-1]
    latest.write_bytes(latest.read_bytes()[:1000])  # a torn write
    res = train(load_config(None, FAST + ["train.steps=30", "train.ckpt_every=10"]), tmp_path,
                progress=False)
    assert "falling back to the previous checkpoint" in capsys.readouterr().err
    assert res.step == 30
    assert (tmp_path / "checkpoints" / "ckpt_000000020.pt.corrupt").exists()
    # Resumed from step 10: the run re-did steps 11..30 and wrote a fresh step-20 checkpoint.
    assert load_checkpoint(tmp_path / "checkpoints" / "ckpt_000000020.pt")["step"] == 20


def _snapshot(workdir: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime (the run lock's mtime changes with each lock taken)."""
    return {str(p.relative_to(workdir)): (p.read_bytes(),
                                          p.name != ".lock" and p.stat().st_mtime_ns)
            for p in sorted(workdir.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("spoil", ["torn", "set aside"])
def test_no_readable_checkpoint_is_an_error_that_changes_nothing(tmp_path, spoil):
    # Regression (issue 30.3): with every checkpoint unreadable, 'train' printed "falling back"
    # for each, started again from step 0, cut metrics.jsonl to nothing and exited 0.
    sets = cli_sets(FAST + ["train.steps=20", "train.ckpt_every=10", "train.keep=3"])
    res = CliRunner().invoke(app, ["train", "--no-progress", "--workdir", str(tmp_path), *sets])
    assert res.exit_code == 0, res.output
    ckpts = list_checkpoints(tmp_path)
    assert [p.name for p in ckpts] == ["ckpt_000000010.pt", "ckpt_000000020.pt"]
    for p in ckpts:
        p.write_bytes(p.read_bytes()[:1000])  # torn
        if spoil == "set aside":  # as the earlier code left them
            p.rename(p.with_name(p.name + ".corrupt"))
    before = _snapshot(tmp_path)
    res = CliRunner().invoke(app, ["train", "--no-progress", "--workdir", str(tmp_path), *sets])
    line = one_error_line(res)
    assert f"cannot resume {tmp_path}" in line and "nothing was changed" in line
    assert "ckpt_000000010.pt" in line and "ckpt_000000020.pt" in line
    assert "falling back" not in res.output
    assert _snapshot(tmp_path) == before  # metrics.jsonl and the checkpoints untouched


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/sde_gen_pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    bad = tmp_path / "ckpt.pt"
    with open(bad, "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    Path("/tmp/sde_gen_pwned").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(bad)
    assert not Path("/tmp/sde_gen_pwned").exists()
    res = CliRunner().invoke(app, ["sample", "--ckpt", str(bad)])
    assert res.exit_code == 2 and "cannot read checkpoint" in res.output


@pytest.mark.parametrize("content, message", [
    (b'{"step": 5, "loss": 0.1}\n', "it is not a checkpoint (not a file written by torch.save)"),
    (pickle.dumps({"model": {"w": object()}}), "it holds pickled Python objects other than"),
    (b"", "the file is empty"),
], ids=["text", "pickle", "empty"])
def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path, content, message):
    # Regression (issue 30.19): '--ckpt metrics.jsonl' printed torch's advice to load it with
    # weights_only=False.
    bad = tmp_path / "metrics.jsonl"
    bad.write_bytes(content)
    line = one_error_line(CliRunner().invoke(app, ["sample", "--ckpt", str(bad)]))
    assert f"cannot read checkpoint {bad}: {message}" in line
    assert "weights_only" not in line


def test_nonfinite_steps_are_skipped_then_stop(tmp_path, monkeypatch):
    real = train_mod.dsm_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] in (3, 4) else loss

    monkeypatch.setattr(train_mod, "dsm_loss", flaky)
    res = train(load_config(None, FAST + ["train.steps=10"]), tmp_path / "a", progress=False)
    assert res.step == 10 and res.skipped_steps == 2
    params = load_checkpoint(res.checkpoint)["model"]
    assert all(torch.isfinite(v).all() for v in params.values())  # NaNs never reached the weights

    monkeypatch.setattr(train_mod, "dsm_loss", lambda *a, **k: real(*a, **k) * float("inf"))
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        train(load_config(None, FAST + ["train.steps=10", "train.max_nonfinite=3"]), tmp_path / "b",
              progress=False)


def test_export_safetensors_and_load(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["train", "--workdir", str(tmp_path), "--no-progress",
                               *cli_sets(FAST + ["train.steps=5"])]).exit_code == 0
    out = tmp_path / "model.safetensors"
    res = runner.invoke(app, ["export", "--ckpt", str(tmp_path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    run_pt, run_st = load_run(tmp_path), load_run(out)
    x, t = torch.randn(4, 2), torch.rand(4)
    assert torch.equal(run_pt.model(x, t), run_st.model(x, t))  # the EMA weights, exactly
    assert run_st.cfg == run_pt.cfg
    bad = runner.invoke(app, ["export", "--ckpt", str(tmp_path), "--out", str(tmp_path / "m.pt")])
    assert bad.exit_code == 2 and "safetensors" in bad.output


def test_unwritable_output_is_one_line_error(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["train", "--workdir", str(tmp_path / "r"), "--no-progress",
                               *cli_sets(FAST + ["train.steps=2"])]).exit_code == 0
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = runner.invoke(app, ["sample", "--ckpt", str(tmp_path / "r"), "--n", "4", "--steps", "2",
                              "--solver", "ddim", "--out", str(blocker / "x.png"), "--no-progress"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    res = runner.invoke(app, ["train", "--workdir", str(blocker), "--no-progress"])
    assert res.exit_code == 2 and "error:" in res.output


def test_checkpoint_that_does_not_match_the_config(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["train", "--workdir", str(tmp_path), "--no-progress",
                               *cli_sets(FAST + ["train.steps=2"])]).exit_code == 0
    res = runner.invoke(app, ["train", "--workdir", str(tmp_path), "--no-progress",
                              *cli_sets(FAST + ["train.steps=4", "model.width=48"])])
    # resume identity (issue 13) names the key and both values before any shape is compared
    assert res.exit_code == 2 and "cannot resume" in res.output
    assert "model.width is 48" in res.output and "Traceback" not in res.output
    # A checkpoint whose weights disagree with its own stored config.
    ckpt = list_checkpoints(tmp_path)[-1]
    state = torch.load(ckpt, weights_only=True)
    state["config"]["model"]["width"] = 48
    torch.save(state, ckpt)
    res = runner.invoke(app, ["sample", "--ckpt", str(tmp_path), "--n", "4"])
    assert res.exit_code == 2 and "does not match its config's model" in res.output


def test_time_budget_checkpoints_and_stops(tmp_path):
    res = train(load_config(None, FAST + ["train.steps=100000", "train.max_seconds=1.0"]), tmp_path,
                progress=False)
    assert res.interrupted and 0 < res.step < 100000
    assert load_checkpoint(res.checkpoint)["step"] == res.step
