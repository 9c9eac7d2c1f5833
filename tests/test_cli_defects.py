"""Regression tests of the command-line defects of issues 23 (item 9) and 30 (items 7, 11, 12,
13, 14, 19, 20, 21): each test failed on the code before the fix."""

from __future__ import annotations

import errno
import gc
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sde_gen.app.outputs as outputs
from cli_runs import image_run, nan_weights, pictures, toy_run
from helpers import one_error_line
from sde_gen.app.cli import app, main
from sde_gen.app.outputs import deferred_signals
from sde_gen.app.sampling_commands import check_class_memory
from sde_gen.errors import UserInputError

ROOT = Path(__file__).resolve().parents[1]
CPU = ["--device", "cpu"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_run(tmp_path_factory.mktemp("toy") / "run")


@pytest.fixture(scope="module")
def cond(tmp_path_factory):
    return toy_run(tmp_path_factory.mktemp("cond") / "run", "model.class_cond=true")


@pytest.fixture(scope="module")
def img(tmp_path_factory):
    return image_run(tmp_path_factory.mktemp("img") / "run")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def console(monkeypatch, capsys, *args) -> tuple[int, list[str]]:
    """The console script ``sde-gen ARGS`` in this process: exit code and stderr lines."""
    monkeypatch.setattr(sys, "argv", ["sde-gen", *map(str, args)])
    with pytest.raises(SystemExit) as done:
        main()
    return done.value.code, capsys.readouterr().err.strip().splitlines()


# ------------------------------------------------------- (a) figures on short chains, no leftovers
def _diffusers_folder(folder: Path, steps: int) -> Path:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=steps)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("steps", [10, 100])
def test_figures_of_a_diffusers_folder_with_a_short_chain(tmp_path, steps):
    # Regression: "100 intervals do not fit on the 100-step discrete chain" (10 steps: 10 do not).
    folder = _diffusers_folder(tmp_path / "pipe", steps)
    res = invoke("figures", "--ckpt", folder, "--out", tmp_path / "f", "--n", "2", *CPU)
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "f").glob("*.png"))) == 5


def test_figures_of_a_2d_run_on_a_25_step_chain(toy, tmp_path):
    res = invoke("figures", "--ckpt", toy, "--out", tmp_path / "f", "--n", "16", *CPU)
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "f").glob("*.png"))) == 5


@pytest.mark.parametrize("failure", [RuntimeError("the figure failed"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_figures_leaves_no_out_directory(toy, tmp_path, monkeypatch,
                                                                 failure):
    import sde_gen.app.figures_toy as figs

    def broken(*args, **kwargs):
        raise failure

    monkeypatch.setattr(figs, "trajectories", broken)
    out = tmp_path / "new" / "figs"
    res = invoke("figures", "--ckpt", toy, "--out", out, "--n", "8", *CPU)
    assert res.exit_code == (130 if isinstance(failure, KeyboardInterrupt) else 1)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ (b) figures --prefix
@pytest.mark.parametrize("prefix", ["../../x_", "a/b_", "..", "sub\\x_"])
def test_a_figure_prefix_cannot_leave_out(toy, tmp_path, prefix):
    res = invoke("figures", "--ckpt", toy, "--out", tmp_path / "f", "--prefix", prefix, *CPU)
    assert "must be a plain file-name prefix" in one_error_line(res)
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------- (c) eval of non-finite samples
def test_eval_refuses_nonfinite_samples(img, tmp_path, monkeypatch):
    # Regression: scipy's "LinAlgError: sqrtm" traceback.
    nan_weights(monkeypatch)
    out = tmp_path / "e.json"
    res = invoke("eval", "--ckpt", img, "--n", "2", "--steps", "1", "--n-bpd", "0",
                 "--no-progress", "--out", out, *CPU)
    assert "2 of 2 samples are NaN or infinite" in one_error_line(res)
    assert not out.exists()


# ----------------------------------------------------------------------------- (d) --seed range
COMMANDS = ["train", "sample", "likelihood", "eval", "figures", "optimize-grid", "inpaint",
            "colorize"]


@pytest.mark.parametrize("seed", [str(2**64 - 1), str(2**63), "-1"])
def test_every_command_refuses_a_seed_outside_its_range_the_same_way(monkeypatch, capsys, seed):
    # Regression: OverflowError tracebacks in sample, likelihood, figures, optimize-grid.
    lines = set()
    for command in COMMANDS:
        code, err = console(monkeypatch, capsys, command, "--seed", seed)
        assert code == 2 and len(err) == 1, (command, err)
        lines.add(err[0])
    assert lines == {f"error: Invalid value for '--seed': must be in [0, {2**63 - 1}], got "
                     f"{seed}"}


def test_the_largest_seed_works(toy, tmp_path):
    top = str(2**63 - 1)
    res = invoke("sample", "--ckpt", toy, "--solver", "ddim", "--steps", "2", "--n", "4",
                 "--batch-size", "2", "--seed", top, "--no-progress", "--out",
                 tmp_path / "s.png", *CPU)
    assert res.exit_code == 0, res.output
    res = invoke("likelihood", "--ckpt", toy, "--n", "2", "--rtol", "1e-2", "--atol", "1e-2",
                 "--seed", top, "--no-progress", "--out", tmp_path / "l.json", *CPU)
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------- (e) --class all: memory per class
def test_class_all_memory_hint_is_per_class(cond, tmp_path, monkeypatch):
    # Regression: the hint counted all samples; following it built the labels before the check.
    import sde_gen.app.generate as gen

    available = 10**6
    monkeypatch.setattr(gen, "available_memory", lambda: available)
    per_sample = gen.BYTES_PER_VALUE * 2 + 8
    fits = available // per_sample // 8  # 8gaussians: 8 classes
    made = []
    repeat = torch.Tensor.repeat_interleave
    monkeypatch.setattr(torch.Tensor, "repeat_interleave",
                        lambda *a, **k: made.append(a) or repeat(*a, **k))
    res = invoke("sample", "--ckpt", cond, "--class", "all", "--n", str(available),
                 "--no-progress", "--out", tmp_path / "s.png", *CPU)
    line = one_error_line(res)
    assert f"({available} of each of 8 classes)" in line and f"at most --n {fits} per class" in line
    assert made == []  # no labels were made
    with pytest.raises(UserInputError):
        check_class_memory(fits + 1, 8, (2,), available=available)
    check_class_memory(fits, 8, (2,), available=available)  # the hint fits


# ---------------------------------------------------------------------- (f) SIGTERM like SIGINT
SIGTERM_DURING = {
    "sample": ("sde_gen.app.generate", "sample"),
    "likelihood": ("sde_gen.app.likelihood_report", "log_likelihood"),
}


@pytest.mark.parametrize("command", ["sample", "likelihood"])
def test_sigterm_is_an_interrupt_with_no_output(toy, tmp_path, command):
    # Regression: exit 143 without a word (SIGINT printed "interrupted").
    module, name = SIGTERM_DURING[command]
    out = tmp_path / "new" / ("s.png" if command == "sample" else "l.json")
    code = (f"import os, signal, sys\nimport {module} as m\norig = m.{name}\n"
            f"def kill(*a, **k):\n    os.kill(os.getpid(), signal.SIGTERM)\n"
            f"    return orig(*a, **k)\nm.{name} = kill\n"
            f"from sde_gen.app.cli import main\nsys.argv = ['sde-gen', *sys.argv[1:]]\nmain()\n")
    res = subprocess.run([sys.executable, "-c", code, command, "--ckpt", str(toy), "--n", "4",
                          "--no-progress", "--out", str(out), *CPU],
                         capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 143, res.stderr
    assert res.stderr.strip().splitlines() == ["interrupted (SIGTERM)"]
    assert not (tmp_path / "new").exists()


class _Stop(Exception):
    pass


def _stop(signum, frame):
    raise _Stop()


def test_signals_during_the_renames_wait_for_them():
    done = []
    old = signal.signal(signal.SIGTERM, _stop)
    try:
        with pytest.raises(_Stop):
            with deferred_signals():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("after the signal")
    finally:
        signal.signal(signal.SIGTERM, old)
    assert done == ["after the signal"]


# -------------------------------------------------------------------- (g) misleading messages
@pytest.mark.parametrize("args, message", [
    (["sample", "--class", "1", "--guidance", "nan"], "'--guidance': nan is not a number"),
    (["sample", "--solver", "ddim", "--clip-sample", "nan"],
     "'--clip-sample': nan is not a number"),
    (["sample", "--solver", "ddim", "--eta", "inf"], "'--eta': inf is not a finite number"),
    (["likelihood", "--rtol", "nan"], "'--rtol': nan is not a number"),
])
def test_nan_options_say_not_a_number(monkeypatch, capsys, args, message):
    # Regression: "should be >= 0".
    code, err = console(monkeypatch, capsys, *args)
    assert code == 2 and len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("command", ["inpaint-image", "inpaint-mask", "colorize", "grid",
                                     "config", "show-config"])
def test_a_directory_given_as_a_file_says_so(img, tmp_path, command):
    # Regression: "not found" / "does not exist".
    d = tmp_path / "adir"
    d.mkdir()
    pics = pictures(tmp_path)
    out = tmp_path / "o.png"
    args = {
        "inpaint-image": ["inpaint", "--ckpt", img, "--image", d, "--mask", pics["mask"],
                          "--out", out, *CPU],
        "inpaint-mask": ["inpaint", "--ckpt", img, "--image", pics["image"], "--mask", d,
                         "--out", out, *CPU],
        "colorize": ["colorize", "--ckpt", img, "--image", d, "--out", out, *CPU],
        "grid": ["sample", "--ckpt", img, "--grid", d, "--out", out, *CPU],
        "config": ["train", "--config", d, "--workdir", tmp_path / "w"],
        "show-config": ["show-config", "--config", d],
    }[command]
    flag = {"inpaint-mask": "--mask", "grid": "--grid", "config": "--config",
            "show-config": "--config"}.get(command, "--image")
    assert f"{flag} {d} is a directory, not a file" in one_error_line(invoke(*args))
    assert not out.exists() and not (tmp_path / "w").exists()


# ------------------------------------------------------- (h) options ignored, results dropped
def test_smc_refuses_an_explicit_solver(img, tmp_path):
    pics = pictures(tmp_path)
    res = invoke("inpaint", "--ckpt", img, "--image", pics["image"], "--mask", pics["mask"],
                 "--out", tmp_path / "o.png", "--method", "smc", "--particles", "2",
                 "--solver", "pc", *CPU)
    assert "--solver does not apply to --method smc" in one_error_line(res)


@pytest.mark.parametrize("args, message", [
    (["--variance", "beta_tilde"], "--variance applies to --method vlb or both, not --method ode"),
    (["--n-t", "3"], "--n-t applies to --method vlb or both"),
    (["--method", "vlb", "--rtol", "1e-3"], "--rtol applies to --method ode or both"),
    (["--method", "vlb", "--trace", "exact", "--eps", "1e-3"],
     "--trace, --t-min apply to --method ode or both, not --method vlb"),
])
def test_likelihood_refuses_options_of_the_other_method(toy, tmp_path, args, message):
    out = tmp_path / "l.json"
    res = invoke("likelihood", "--ckpt", toy, "--n", "2", "--out", out, *args, *CPU)
    assert message in one_error_line(res)
    assert not out.exists()


def test_a_vlb_report_holds_n_and_split(toy, tmp_path):
    out = tmp_path / "l.json"
    res = invoke("likelihood", "--ckpt", toy, "--method", "vlb", "--n", "4", "--n-t", "2",
                 "--split", "train", "--no-progress", "--out", out, *CPU)
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["n"] == 4 and rep["split"] == "train" and np.isfinite(rep["vlb_nats"])


def test_more_examples_than_the_split_has_is_noted(img, tmp_path):
    out = tmp_path / "l.json"
    res = invoke("likelihood", "--ckpt", img, "--method", "vlb", "--n", "100000", "--n-t", "2",
                 "--no-progress", "--out", out, *CPU)
    assert res.exit_code == 0, res.output
    assert "note: the test split has 5 examples: all 5 were used, not --n 100000" in res.output
    rep = json.loads(out.read_text())
    assert rep["n"] == 5 and rep["n_requested"] == 100000


def test_eval_of_unlabelled_data_says_why_there_is_no_fd_classifier(img, tmp_path, monkeypatch):
    monkeypatch.setattr("sde_gen.app.sample_quality.CACHE", tmp_path / "cache")
    out = tmp_path / "e.json"
    res = invoke("eval", "--ckpt", img, "--n", "2", "--steps", "1", "--n-bpd", "100",
                 "--batch-size", "2", "--no-progress", "--out", out, *CPU)
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert "no labels" in rep["fd_classifier_note"] and "fd_classifier" not in rep
    assert f"note: {rep['fd_classifier_note']}" in res.output
    assert "FD-classifier (not FID)" in res.output
    assert rep["bpd_n"] == 5 and rep["bpd_n_requested"] == 100
    assert "not --n-bpd 100" in res.output


# ------------------------------------------------------------------ (i) full disk names the file
def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


class _FullFile:
    """A file opened for writing whose every write fails as on a full disk."""

    def __init__(self, path, mode="r", *args, **kwargs):
        self._f = open(path, mode, *args, **kwargs)

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_a_full_disk_during_sample_names_the_file_and_nothing_else(toy, tmp_path, monkeypatch):
    # Regression: "[Errno 28] No space left on device", then an "Exception ignored ... seek of
    # closed file" traceback from numpy's unclosed zip file.
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    monkeypatch.setattr(outputs, "open", _FullFile, raising=False)
    out = tmp_path / "new" / "s.png"
    res = invoke("sample", "--ckpt", toy, "--solver", "ddim", "--steps", "2", "--n", "4",
                 "--no-progress", "--out", out, *CPU)
    line = one_error_line(res)
    gc.collect()
    assert f"cannot write {out.with_suffix('.npz')}: No space left on device" in line
    assert unraisable == []
    assert list(tmp_path.iterdir()) == []  # no files, no temp files, no directory


@pytest.mark.parametrize("command", ["likelihood", "figures", "inpaint"])
def test_a_full_disk_names_the_file(toy, img, tmp_path, monkeypatch, command):
    # Regression: a bare "[Errno 28] No space left on device".
    pics = pictures(tmp_path)
    out = tmp_path / "new"
    if command == "likelihood":
        monkeypatch.setattr(Path, "write_text", _full_disk)
        args = ["likelihood", "--ckpt", toy, "--n", "2", "--rtol", "1e-2", "--atol", "1e-2",
                "--no-progress", "--out", out / "l.json"]
        names = [out / "l.json"]
    elif command == "figures":
        monkeypatch.setattr("sde_gen.app.figures.save_figure", _full_disk)
        args = ["figures", "--ckpt", toy, "--n", "8", "--out", out]
        names = [out / f"{name}.png" for name in ("forward", "progressive", "trajectories",
                                                  "ddim_consistency", "interpolation")]
    else:
        from PIL import Image

        monkeypatch.setattr(Image.Image, "save", _full_disk)
        args = ["inpaint", "--ckpt", img, "--image", pics["image"], "--mask", pics["mask"],
                "--steps", "2", "--out", out / "i.png"]
        names = [out / "i.png"]
    line = one_error_line(invoke(*args, *CPU))
    assert any(f"cannot write {p}: No space left on device" in line for p in names), line
    assert not out.exists()
