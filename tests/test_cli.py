import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from helpers import TINY_MLP, cli_sets
from sde_gen.app.cli import app

ROOT = Path(__file__).resolve().parents[1]
FAST = [*cli_sets([*TINY_MLP, "train.plot_samples=200"]), "--no-progress"]


def test_train_writes_checkpoint_and_plot(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--sde", "vp", "--workdir", str(tmp_path), "--set",
                              "train.steps=50", *FAST])
    assert res.exit_code == 0, res.output
    assert "checkpoint:" in res.output and "plot:" in res.output
    assert (tmp_path / "checkpoints" / "ckpt_000000050.pt").is_file()
    assert (tmp_path / "samples.png").stat().st_size > 1000
    assert (tmp_path / "config.yaml").is_file()


def test_bad_set_key_is_one_line_error(tmp_path):
    res = CliRunner().invoke(app, ["train", "--workdir", str(tmp_path), "--set", "train.stepz=5"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.strip().splitlines() if ln]
    assert lines == ["error: unknown key 'train.stepz'; allowed: " + lines[0].split("allowed: ")[1]]
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_sde_and_missing_config(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--sde", "vq", "--workdir", str(tmp_path)])
    assert res.exit_code == 2 and "unknown SDE 'vq'" in res.output
    res = runner.invoke(app, ["train", "--config", str(tmp_path / "x.yaml")])
    assert res.exit_code == 2 and "config file not found" in res.output


def test_help_and_root_cli_entry():
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--sde" in out and "--set" in out and "--workdir" in out
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "train" in out and "show-config" in out
    # The module entry point (the console script sde-gen is sde_gen.app.cli:main).
    out = subprocess.run([sys.executable, "-m", "sde_gen.app.cli", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "train" in out and "sample" in out and "show-config" in out


def test_usage_errors_are_one_line_through_the_console_script(tmp_path):
    for args, msg in [(["sample", "--steps", "0"], "error: Invalid value for '--steps'"),
                      (["bogus"], "error: No such command 'bogus'"),
                      (["train", "--sde"], "error: Option '--sde' requires an argument")]:
        res = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True,
                             text=True, cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        assert res.stderr.strip().splitlines() == [res.stderr.strip()] and msg in res.stderr
