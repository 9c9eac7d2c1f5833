import numpy as np
import pytest
from typer.testing import CliRunner

from sde_gen.app.cli import app

TRAIN = ["train", "--set", "model.width=32", "--set", "model.depth=1", "--set",
         "train.batch_size=64", "--set", "train.plot_samples=0", "--set", "train.device=cpu",
         "--set", "train.steps=20", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    res = CliRunner().invoke(app, TRAIN + ["--workdir", str(d)])
    assert res.exit_code == 0, res.output
    return d


@pytest.mark.parametrize(
    "solver, extra, nfe",
    [
        ("dpm", ["--steps", "9"], 10),  # 9 intervals + 1 denoise
        ("ddim", ["--steps", "10", "--eta", "0.5"], 11),
        ("heun", ["--steps", "5"], 11),  # 2 per interval + 1 denoise
        ("ode", ["--method", "rk4", "--steps", "4"], 17),  # 4 stages per step + 1
        ("pc", ["--steps", "5", "--snr", "0.1"], 11),  # (1 predictor + 1 corrector) x 5 + 1
        ("ancestral", ["--steps", "5", "--variance", "beta_tilde"], 6),
        ("sde", ["--steps", "5", "--no-denoise"], 5),
    ],
)
def test_sample_writes_png_and_npz(run_dir, tmp_path, solver, extra, nfe):
    out = tmp_path / f"{solver}.png"
    res = CliRunner().invoke(app, ["sample", "--solver", solver, "--ckpt", str(run_dir), "--n", "30",
                                   "--batch-size", "16", "--out", str(out), "--device", "cpu",
                                   "--no-progress", *extra])
    assert res.exit_code == 0, res.output
    assert f"{nfe} NFE per batch" in res.output
    x = np.load(out.with_suffix(".npz"))["samples"]
    assert x.shape == (30, 2) and np.isfinite(x).all()
    assert out.stat().st_size > 1000


def test_sample_is_reproducible(run_dir, tmp_path):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.png"
        args = ["sample", "--solver", "ddim", "--eta", "1", "--steps", "5", "--ckpt", str(run_dir),
                "--n", "20", "--seed", "3", "--out", str(out), "--no-progress", "--device", "cpu"]
        assert CliRunner().invoke(app, args).exit_code == 0
        outs.append(np.load(out.with_suffix(".npz"))["samples"])
    assert np.array_equal(*outs)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--solver", "bogus"], "unknown solver 'bogus'"),
        (["--solver", "ode", "--eta", "0.5"], "--eta does not apply to --solver ode"),
        (["--solver", "sde", "--method", "nope"], "unknown torchsde method 'nope'"),
        (["--solver", "ode", "--method", "nope"], "unknown ODE method 'nope'"),
        (["--solver", "pc", "--predictor", "x"], "unknown predictor 'x'"),
        (["--solver", "ancestral", "--steps", "5000"], "do not fit on the 1000-step discrete chain"),
        (["--solver", "ddim", "--out", "x.jpg"], "--out must be a .png path"),
    ],
)
def test_sample_bad_input_is_one_line_error(run_dir, tmp_path, args, message):
    res = CliRunner().invoke(app, ["sample", "--ckpt", str(run_dir), "--n", "4", "--no-progress",
                                   "--device", "cpu", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


def test_sample_missing_checkpoint(tmp_path):
    res = CliRunner().invoke(app, ["sample", "--ckpt", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no checkpoint in" in res.output
