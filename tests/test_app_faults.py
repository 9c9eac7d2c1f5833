"""Faults of the application layer, each a regression test of a defect seen on the earlier code
(issue 12): torn metrics, full disks, incomplete checkpoints, unknown devices, finished runs; and
the CLI's rule that user errors print one line while bugs keep their traceback."""

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import sde_gen.app.train as train_mod
from helpers import TINY_MLP, cli_sets, one_error_line
from sde_gen.app.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from sde_gen.app.cli import app
from sde_gen.app.config import load_config
from sde_gen.app.distributed import resolve_device
from sde_gen.app.runs import load_run
from sde_gen.app.train import train
from sde_gen.errors import UserInputError

ROOT = Path(__file__).resolve().parents[1]
FAST = [*TINY_MLP, "train.log_every=5", "train.warmup=2", "train.ckpt_every=5", "train.keep=10"]


def _cli_train(workdir, *extra):
    return CliRunner().invoke(app, ["train", "--workdir", str(workdir), "--no-progress",
                                    *cli_sets(FAST + list(extra))])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 10-step run with checkpoints at steps 5 and 10."""
    d = tmp_path_factory.mktemp("run")
    train(load_config(None, FAST + ["train.steps=10"]), d, progress=False)
    return d


# ------------------------------------------------------------------------------ metrics.jsonl
def test_resume_drops_a_torn_last_metrics_line(tmp_path, capsys):
    # Regression: a SIGKILL mid-write left '{"step": 15, "loss": 0.3', and the next run stopped
    # with "error: Expecting ',' delimiter".
    train(load_config(None, FAST + ["train.steps=10"]), tmp_path, progress=False)
    metrics = tmp_path / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"step": 15, "loss": 0.3')
    res = _cli_train(tmp_path, "train.steps=20")
    assert res.exit_code == 0, res.output
    assert "dropped the torn last line" in res.output
    steps = [json.loads(ln)["step"] for ln in metrics.read_text().splitlines()]
    assert steps == [5, 10, 15, 20]


def test_a_corrupt_earlier_metrics_line_is_one_line_error(tmp_path):
    train(load_config(None, FAST + ["train.steps=10"]), tmp_path, progress=False)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("garbage\n" + metrics.read_text())
    line = one_error_line(_cli_train(tmp_path, "train.steps=15"))
    assert f"{metrics} line 1 is not a metrics record" in line


# ------------------------------------------------------------------------------- full disk
@pytest.mark.parametrize("failure, reason", [
    (RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4416 vs 4300"),
     "[enforce fail at inline_container.cc:603] . unexpected pos 4416 vs 4300 (disk full?)"),
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device (errno 28)"),
])
def test_full_disk_during_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, failure,
                                                            reason):
    # Regression: torch.save's "unexpected pos" RuntimeError was a traceback.
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if obj["step"] == 10:  # the step-5 checkpoint is written, the step-10 one fails
            f.write(b"partial")
            raise failure
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    line = one_error_line(_cli_train(tmp_path, "train.steps=10"))
    target = tmp_path / "checkpoints" / "ckpt_000000010.pt"
    assert line == f"error: cannot write checkpoint {target}: {reason}; earlier checkpoints are " \
                   "unchanged"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_000000005.pt"]
    assert not list((tmp_path / "checkpoints").glob(".tmp_*"))  # the temp file is removed
    assert load_checkpoint(list_checkpoints(tmp_path)[-1])["step"] == 5
    monkeypatch.setattr(torch, "save", real_save)  # disk freed: the same command resumes
    res = _cli_train(tmp_path, "train.steps=10")
    assert res.exit_code == 0 and "step 10: loss" in res.output, res.output


def test_full_disk_during_export_is_one_line_and_leaves_no_file(run_dir, tmp_path, monkeypatch):
    # Regression (issue 30.12): 'export' on a full disk ended in a SafetensorError traceback.
    from safetensors import SafetensorError

    import sde_gen.app.export as export_mod

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    monkeypatch.setattr(export_mod, "save_file", full)
    out = tmp_path / "out" / "model.safetensors"
    line = one_error_line(CliRunner().invoke(app, ["export", "--ckpt", str(run_dir), "--out",
                                                   str(out)]))
    assert line == f"error: cannot write {out}: No space left on device (errno 28); nothing " \
                   "was written"
    assert list(out.parent.iterdir()) == []  # no partial file, no temp file


@pytest.fixture
def umask_002():
    import os

    old = os.umask(0o002)
    yield 0o664
    os.umask(old)


def test_written_files_follow_the_umask(run_dir, tmp_path, monkeypatch, umask_002):
    # Regression (issue 30.16): checkpoints, exports, inpaint/colorize PNGs and the classifier
    # cache were written 0600 (tempfile.mkstemp's mode), sample PNGs 0644.
    import sde_gen.app.sample_quality as sq
    from sde_gen.app.editing import write_png
    from sde_gen.app.export import export_safetensors
    from sde_gen.data.images import ImageData

    def mode(path: Path) -> int:
        return path.stat().st_mode & 0o777

    train(load_config(None, FAST + ["train.steps=5"]), tmp_path / "run", progress=False)
    assert {mode(p) for p in list_checkpoints(tmp_path / "run")} == {umask_002}
    for name in (".lock", "config.yaml", "metrics.jsonl"):
        assert mode(tmp_path / "run" / name) == umask_002, name
    assert mode(export_safetensors(tmp_path / "run", tmp_path / "m.safetensors")) == umask_002
    assert mode(write_png(torch.zeros(3, 4, 4, dtype=torch.uint8), tmp_path / "x.png")) == \
        umask_002
    monkeypatch.setattr(sq, "CACHE", tmp_path / "cache")
    data = ImageData(torch.zeros(8, 1, 8, 8, dtype=torch.uint8), torch.arange(8) % 2, 2, "toy")
    sq.load_or_train_classifier(data, steps=1)
    assert mode(sq.classifier_cache_path(data, 1)) == umask_002


@pytest.mark.parametrize("files", [
    ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"],
    ["unet/config.json"],
    ["config.json", "diffusion_pytorch_model.safetensors"],
], ids=["pipeline", "unet subfolder", "unet folder"])
def test_train_refuses_a_diffusers_folder_as_workdir(tmp_path, files):
    # Regression (issue 30.17): 'train --workdir PIPELINE' wrote a 2-D run into the pipeline's
    # folder (exit 0), and 'export' of the folder then exported that stray run.
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    line = one_error_line(_cli_train(tmp_path, "train.steps=2"))
    assert f"--workdir {tmp_path} holds a diffusers model ({files[0]})" in line
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no .lock


# ---------------------------------------------------------------------- incomplete checkpoints
@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("ema"), "it has no 'ema' entry"),
    (lambda s: s.pop("step"), "it has no 'step' entry"),
    (lambda s: s.update(ema=3), "'ema' must be a dict, got int"),
    (lambda s: s.update(step="10"), "'step' must be a non-negative integer"),
    (lambda s: s.update(noise_rng=[1, 2]), "'noise_rng' must be a generator state"),
])
def test_incomplete_checkpoint_is_one_line_error(run_dir, tmp_path, change, message):
    # Regression: KeyError 'ema' / 'step' and "TypeError: Expected state_dict to be dict-like".
    state = torch.load(list_checkpoints(run_dir)[-1], weights_only=True)
    change(state)
    ckpt = tmp_path / "checkpoints" / "ckpt_000000010.pt"
    ckpt.parent.mkdir()
    torch.save(state, ckpt)
    expected = f"{ckpt} is not a complete sde-gen checkpoint: {message}"
    resume = one_error_line(_cli_train(tmp_path, "train.steps=12"))
    assert expected in resume
    if "noise_rng" not in message:  # only resuming reads the RNG states
        with pytest.raises(CheckpointError, match="is not a complete sde-gen checkpoint"):
            load_run(ckpt)
        res = CliRunner().invoke(app, ["sample", "--ckpt", str(ckpt), "--n", "4", "--steps", "2",
                                       "--device", "cpu", "--no-progress"])
        assert expected in one_error_line(res)
        res = CliRunner().invoke(app, ["export", "--ckpt", str(ckpt), "--out",
                                       str(tmp_path / "m.safetensors")])
        assert expected in one_error_line(res)


# ------------------------------------------------------------------------------------ devices
@pytest.mark.parametrize("name", ["foo", "meta", "cuda:x", "cpu:0", ""])
def test_unknown_devices_are_rejected(name):
    with pytest.raises(UserInputError, match="choose one of auto, cpu, cuda, cuda:N, mps"):
        resolve_device(name)


def test_device_errors_are_one_line_in_train_and_sample(run_dir, tmp_path):
    # Regression: torch tracebacks ("META device type not an accelerator", "Expected one of
    # cpu, cuda, ...").
    for device in ("foo", "meta"):
        line = one_error_line(_cli_train(tmp_path / device, f"train.device={device}"))
        assert f"unknown device '{device}'" in line and "cuda:N" in line
        assert not (tmp_path / device).exists()  # checked before the workdir is made
        res = CliRunner().invoke(app, ["sample", "--ckpt", str(run_dir), "--n", "4",
                                       "--device", device, "--out", str(tmp_path / "s.png")])
        assert f"unknown device '{device}'" in one_error_line(res)
    if not torch.cuda.is_available():
        line = one_error_line(_cli_train(tmp_path / "c", "train.device=cuda"))
        assert "CUDA is not available" in line


# ------------------------------------------------------------------------------ finished runs
def test_resuming_past_train_steps_is_one_line_error(run_dir):
    # Regression: it printed "step 10: loss nan" and overwrote config.yaml with the lower steps.
    config = (run_dir / "config.yaml").read_text()
    line = one_error_line(_cli_train(run_dir, "train.steps=8"))
    assert f"the run in {run_dir} is already at step 10, past train.steps=8" in line
    assert (run_dir / "config.yaml").read_text() == config


def test_resuming_a_finished_run_says_so(run_dir):
    res = _cli_train(run_dir, "train.steps=10")
    assert res.exit_code == 0, res.output
    assert "already trained" in res.output and "nothing to do" in res.output
    assert "nan" not in res.output
    assert f"checkpoint: {list_checkpoints(run_dir)[-1]}" in res.output
    assert load_checkpoint(list_checkpoints(run_dir)[-1])["step"] == 10


# --------------------------------------------------------------- user errors versus bugs
def test_bug_keeps_its_traceback_while_user_error_is_one_line(tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise ValueError("a bare ValueError from a bug")

    monkeypatch.setattr(train_mod, "train", bug)
    res = CliRunner().invoke(app, ["train", "--workdir", str(tmp_path), "--no-progress"])
    assert res.exit_code == 1 and isinstance(res.exception, ValueError)
    assert "error:" not in res.output  # not turned into a one-line message

    def user_error(*args, **kwargs):
        raise UserInputError("a mistake the user can fix\nsecond line")

    monkeypatch.setattr(train_mod, "train", user_error)
    line = one_error_line(CliRunner().invoke(app, ["train", "--workdir", str(tmp_path)]))
    assert line == "error: a mistake the user can fix"


def test_bug_traceback_reaches_the_console(tmp_path):
    code = ("import sys\n"
            "import sde_gen.app.train as t\n"
            "def bug(*args, **kwargs):\n"
            "    raise RuntimeError('an unexpected failure')\n"
            "t.train = bug\n"
            "from sde_gen.app.cli import main\n"
            "sys.argv = ['sde-gen', 'train', '--workdir', sys.argv[1], '--no-progress']\n"
            "main()\n")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w")], capture_output=True,
                         text=True, cwd=ROOT)
    assert res.returncode == 1
    assert "Traceback (most recent call last)" in res.stderr
    assert "RuntimeError: an unexpected failure" in res.stderr and "error:" not in res.stderr


def test_eval_of_a_2d_run_is_one_line_error(run_dir, tmp_path):
    res = CliRunner().invoke(app, ["eval", "--ckpt", str(run_dir), "--device", "cpu"])
    assert "sde-gen eval is for image runs" in one_error_line(res)
    res = CliRunner().invoke(app, ["eval", "--ckpt", str(run_dir), "--out", str(tmp_path / "x")])
    assert "--out must be a .json path" in one_error_line(res)
