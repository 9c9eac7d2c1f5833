"""A run directory belongs to one run (issue 13): resuming checks the new config against the one
the checkpoint was trained with, and only one process trains in a directory at a time."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import TINY_MLP, cli_sets
from sde_gen.app.checkpoint import list_checkpoints, load_checkpoint
from sde_gen.app.cli import app
from sde_gen.app.config import RESUMABLE_KEYS, load_config
from sde_gen.app.run_lock import LOCK_NAME, run_lock
from sde_gen.app.train import train
from sde_gen.errors import ConfigError, UserInputError

ROOT = Path(__file__).resolve().parents[1]
FAST = [*TINY_MLP, "train.log_every=2", "train.warmup=1"]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """A finished 4-step VP run on 8gaussians (the default data)."""
    d = tmp_path_factory.mktemp("ref")
    train(load_config(None, FAST + ["train.steps=4"]), d, progress=False)
    return d


@pytest.fixture
def run(ref, tmp_path):
    """A copy of the reference run (``cp -r REF R``)."""
    return Path(shutil.copytree(ref, tmp_path / "R"))


# ------------------------------------------------------------------------------ resume identity
@pytest.mark.parametrize("change, key, new, old", [
    ("sde.name=ve", "sde.name", "'ve'", "'vp'"),
    ("data.name=moons", "data.name", "'moons'", "'8gaussians'"),
    ("train.lr=1e-3", "train.lr", "0.001", "0.005"),
])
def test_resume_with_a_different_run_config_is_refused(run, change, key, new, old):
    before = {p.name: p.read_bytes() for p in (run / "config.yaml", run / "metrics.jsonl")}
    ckpts = list_checkpoints(run)
    with pytest.raises(ConfigError) as info:
        train(load_config(None, FAST + ["train.steps=8", change]), run, progress=False)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"cannot resume {run}: {key} is {new} but the run was trained with {old}" in msg
    assert "train.steps" in msg and "use a new --workdir" in msg
    # Nothing was written: config.yaml, metrics and checkpoints are those of the reference run.
    assert {p.name: p.read_bytes() for p in (run / "config.yaml", run / "metrics.jsonl")} == before
    assert list_checkpoints(run) == ckpts


def test_cli_resume_with_another_sde_is_one_line_error(run):
    config = (run / "config.yaml").read_text()
    res = CliRunner().invoke(app, ["train", "--workdir", str(run), "--sde", "ve", "--no-progress",
                                   *cli_sets(FAST + ["train.steps=8"])])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error: cannot resume"), res.output
    assert "sde.name is 've' but the run was trained with 'vp'" in lines[0]
    assert (run / "config.yaml").read_text() == config


def test_allowed_changes_resume(run):
    assert {"train.steps", "train.log_every", "train.ckpt_every", "train.device"} <= set(
        RESUMABLE_KEYS)
    cfg = load_config(None, FAST + ["train.steps=6", "train.log_every=3", "train.ckpt_every=3",
                                    "train.keep=5", "train.max_nonfinite=3"])
    res = train(cfg, run, progress=False)
    assert res.step == 6 and not res.already_done
    assert load_checkpoint(res.checkpoint)["step"] == 6
    assert load_config(run / "config.yaml") == cfg


# --------------------------------------------------------------------------- one writer per run
def _cli(workdir, *sets):
    return subprocess.run(
        [sys.executable, "-m", "sde_gen.app.cli", "train", "--workdir", str(workdir),
         "--no-progress", *cli_sets(FAST + list(sets))],
        cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_second_writer_fails_at_once_naming_the_holder(tmp_path):
    with run_lock(tmp_path) as lock:
        assert lock == tmp_path / LOCK_NAME
        assert lock.read_text().strip() == str(os.getpid())
        with pytest.raises(UserInputError, match=f"PID {os.getpid()}"):
            with run_lock(tmp_path):
                pass
        res = _cli(tmp_path, "train.steps=2")
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
        assert f"in use by another training process (PID {os.getpid()}" in lines[0]
        assert not list_checkpoints(tmp_path) and not (tmp_path / "config.yaml").exists()
    # Released on exit: the same directory trains now.
    res = train(load_config(None, FAST + ["train.steps=2"]), tmp_path, progress=False)
    assert res.step == 2


def test_released_when_training_fails(run):
    with pytest.raises(ConfigError):
        train(load_config(None, FAST + ["train.steps=8", "sde.name=ve"]), run, progress=False)
    with run_lock(run):  # not left held by the failed run
        pass


def test_lock_file_of_a_dead_process_does_not_block(tmp_path):
    # The holder exits without releasing anything (os._exit skips the context manager's exit).
    code = ("import os, sys; from sde_gen.app.run_lock import run_lock\n"
            "with run_lock(sys.argv[1]):\n"
            "    os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, check=True,
                   timeout=120)
    assert (tmp_path / LOCK_NAME).read_text().strip()  # the dead process's PID is still there
    res = train(load_config(None, FAST + ["train.steps=2"]), tmp_path, progress=False)
    assert res.step == 2
