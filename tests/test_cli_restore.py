"""``sde-gen restore`` (issue 25): a linear measurement PNG of a tiny image run restored by each
task and method into a strip (measurement, restorations), and a one-line error with no output
for every bad input."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli_runs import SIZE, image_run, pictures, png
from helpers import one_error_line
from sde_gen.app.cli import app, main
from sde_gen.app.restoring import GAP

torch.set_num_threads(1)
FAST = ["--device", "cpu", "--steps", "3", "--n", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return image_run(tmp_path_factory.mktemp("img") / "run")


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pics")
    g = np.random.default_rng(4)
    return {**pictures(folder), "small": png(folder / "small.png", g.integers(0, 256, (2, 2, 3))),
            "four": png(folder / "four.png", g.integers(0, 256, (4, 4, 3)))}


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _tiles(path, n):
    a = np.asarray(Image.open(path))
    assert a.shape == (SIZE, (n + 1) * SIZE + n * GAP, 3)
    return [a[:, i * (SIZE + GAP): i * (SIZE + GAP) + SIZE] for i in range(n + 1)]


def test_inpaint_replacement_keeps_the_known_pixels_in_every_restoration(run, pics, tmp_path):
    out = tmp_path / "out.png"
    res = _invoke("restore", "--ckpt", run, "--task", "inpaint", "--image", pics["image"],
                  "--mask", pics["mask"], "--method", "replacement", "--out", out, *FAST)
    assert res.exit_code == 0, res.output
    shown, *restored = _tiles(out, 2)
    image = np.asarray(Image.open(pics["image"]))
    known = np.asarray(Image.open(pics["mask"])) == 255
    assert np.array_equal(shown[known], image[known]) and (shown[~known] == 128).all()
    for x in restored:
        assert np.array_equal(x[known], image[known])
    assert not np.array_equal(restored[0][~known], restored[1][~known])  # two samples


@pytest.mark.parametrize("task, args", [
    ("superres", ["--image", "small", "--method", "mmps", "--noise-std", "0.05"]),
    ("superres", ["--image", "four", "--factor", "2", "--method", "pgdm"]),
    ("deblur", ["--image", "image", "--blur-sigma", "1", "--method", "dps", "--zeta", "0.5"]),
    ("colorize", ["--image", "grey", "--method", "smc", "--particles", "3"]),
    ("inpaint", ["--image", "image", "--mask", "mask", "--method", "dps", "--noise-std", "0.1",
                 "--dps-step", "likelihood"]),
    ("deblur", ["--image", "image", "--blur-sigma", "1", "--method", "mmps", "--solver", "dpm"]),
    ("superres", ["--image", "small", "--method", "dps", "--dps-step", "likelihood",
                  "--noise-std", "0.1", "--solver", "sde"]),
])
def test_each_task_writes_a_strip(run, pics, tmp_path, task, args):
    args = [pics.get(a, a) for a in args]
    out = tmp_path / "out.png"
    res = _invoke("restore", "--ckpt", run, "--task", task, "--out", out, *args, *FAST)
    assert res.exit_code == 0, res.output
    shown, *restored = _tiles(out, 2)
    if task == "superres":  # the measurement shown at the run's size, each pixel a block
        f = SIZE // np.asarray(Image.open(args[1])).shape[0]
        assert np.array_equal(shown[::f, ::f], np.asarray(Image.open(args[1])))
    if task == "colorize":
        assert (shown[..., 0] == shown[..., 1]).all()
    assert not np.array_equal(restored[0], restored[1])


@pytest.mark.parametrize("args, message", [
    (["--task", "superres", "--image", "image"],
     "is 8x8 pixels; --task superres --factor 4 measures this run's 8x8 images as 2x2"),
    (["--task", "superres", "--image", "small", "--factor", "3"], "H and W divisible by 3"),
    (["--task", "deblur", "--image", "small"], "is 2x2 pixels; this run's images are 8x8"),
    (["--task", "inpaint", "--image", "image"], "--task inpaint needs --mask"),
    (["--task", "deblur", "--image", "image", "--factor", "2"], "--factor applies to --task "
     "superres"),
    (["--task", "colorize", "--image", "image"], "is not greyscale"),
    (["--task", "deblur", "--image", "image", "--blur-sigma", "0"], "sigma must be a positive"),
    (["--task", "deblur", "--image", "image", "--method", "dps", "--dps-step", "likelihood"],
     "it needs --noise-std > 0"),
    (["--task", "deblur", "--image", "image", "--method", "replacement"],
     "needs --task inpaint and --noise-std 0"),
    (["--task", "inpaint", "--image", "image", "--mask", "mask", "--method", "replacement",
      "--noise-std", "0.1"], "needs --task inpaint and --noise-std 0"),
    (["--task", "deblur", "--image", "image", "--method", "smc"], "needs --particles"),
    (["--task", "deblur", "--image", "image", "--zeta", "2"], "--zeta applies to --method dps"),
    (["--task", "deblur", "--image", "image", "--method", "nope"], "unknown --method 'nope'"),
    (["--task", "deblur", "--image", "image", "--method", "smc", "--particles", "2", "--solver",
      "dpm"], "--solver applies to --method dps or pgdm or mmps or replacement"),
    (["--task", "deblur", "--image", "image", "--method", "dps", "--solver", "dpm"],
     "has no score form"),
    (["--task", "deblur", "--image", "image", "--solver", "rk45"], "unknown solver 'rk45'"),
    (["--task", "sharpen", "--image", "image"], "unknown --task 'sharpen'"),
])
def test_bad_input_is_one_line_error_and_writes_nothing(run, pics, tmp_path, args, message):
    args = [pics.get(a, a) for a in args]
    out = tmp_path / "out.png"
    res = _invoke("restore", "--ckpt", run, "--out", out, *args, *FAST)
    assert message in one_error_line(res)
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("value, message", [("-0.1", "must be >= 0, got -0.1"),
                                            ("nan", "nan is not a number")])
def test_a_bad_noise_std_is_one_line_through_the_console_script(run, pics, tmp_path, monkeypatch,
                                                               capsys, value, message):
    out = tmp_path / "out.png"
    monkeypatch.setattr(sys, "argv", ["sde-gen", "restore", "--ckpt", str(run), "--task",
                                      "deblur", "--image", str(pics["image"]), "--out", str(out),
                                      "--noise-std", value])
    with pytest.raises(SystemExit) as done:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 1
    assert err[0] == f"error: Invalid value for '--noise-std': {message}"
    assert not out.exists()


def test_a_2d_run_is_refused(tmp_path, pics):
    from cli_runs import toy_run

    toy = toy_run(tmp_path / "toy")
    out = tmp_path / "out.png"
    res = _invoke("restore", "--ckpt", toy, "--task", "deblur", "--image", pics["image"],
                  "--out", out, *FAST)
    assert "is for image runs" in one_error_line(res)
    assert not out.exists()
