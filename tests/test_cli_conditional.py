"""The conditional command line (issue 15): ``sample --class K|all --guidance W`` on a
class-conditional run, ``inpaint`` and ``colorize`` of a PNG, and a one-line error with no
output for every bad input."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from helpers import TINY_MLP, TINY_UNET, cli_sets, one_error_line
from sde_gen.app.cli import app
from sde_gen.app.editing import read_grey_for_run, read_mask
from sde_gen.errors import UserInputError

torch.set_num_threads(1)
TINY = [*cli_sets(["train.plot_samples=0", "train.warmup=1"]), "--no-progress"]
MLP = cli_sets(TINY_MLP)
UNET = cli_sets([*TINY_UNET, "train.batch_size=8", "train.steps=2"])
SIZE = 8  # pixels of the image run


def _train(workdir, *sets):
    res = CliRunner().invoke(app, ["train", "--workdir", str(workdir), *TINY, *sets])
    assert res.exit_code == 0, res.output
    return workdir


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    """A class-conditional 2-D run on 8gaussians (8 classes), trained through the CLI."""
    return _train(tmp_path_factory.mktemp("cond") / "run", *MLP, "--set", "train.steps=10",
                  "--set", "model.class_cond=true")


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("plain") / "run", *MLP, "--set", "train.steps=2")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A class-conditional U-Net on 24 RGB 8x8 images of 3 classes (an .npz with labels)."""
    d = tmp_path_factory.mktemp("img")
    g = np.random.default_rng(0)
    np.savez(d / "data.npz", x_train=g.integers(0, 256, (24, SIZE, SIZE, 3), dtype=np.uint8),
             y_train=np.arange(24) % 3)
    return _train(d / "run", *UNET, "--set", "data.name=npz", "--set",
                  f"data.path={d / 'data.npz'}", "--set", "model.class_cond=true")


def _png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def pictures(tmp_path):
    """An RGB picture of the run's size and a half-known mask (white = known)."""
    g = np.random.default_rng(1)
    image = _png(tmp_path / "in.png", g.integers(0, 256, (SIZE, SIZE, 3)))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, : SIZE // 2] = 255
    return image, _png(tmp_path / "mask.png", mask), mask > 0


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _sample(run, out, *extra):
    return _invoke("sample", "--ckpt", run, "--out", out, "--device", "cpu", "--no-progress",
                   "--solver", "ddim", "--steps", "4", "--batch-size", "16", *extra)


# ------------------------------------------------------------------------------ sample
def test_sample_one_class_with_guidance_writes_files(cond_run, tmp_path):
    out = tmp_path / "guided.png"
    res = _sample(cond_run, out, "--class", "1", "--guidance", "2", "--n", "20")
    assert res.exit_code == 0, res.output
    assert "class 1, guidance 2" in res.output
    x = np.load(out.with_suffix(".npz"))["samples"]
    assert x.shape == (20, 2) and np.isfinite(x).all() and out.stat().st_size > 1000
    # One batched call per step: guidance costs no extra NFE (ddim, 4 steps + denoise).
    plain = _sample(cond_run, tmp_path / "plain.png", "--class", "1", "--n", "20")
    assert "5 NFE per batch" in res.output and "5 NFE per batch" in plain.output
    y_plain = np.load(tmp_path / "plain.npz")["samples"]
    assert not np.allclose(x, y_plain)  # guidance changed the samples
    zero = _sample(cond_run, tmp_path / "zero.png", "--class", "1", "--guidance", "0", "--n", "20")
    assert zero.exit_code == 0
    assert np.array_equal(np.load(tmp_path / "zero.npz")["samples"], y_plain)


def test_sample_every_class_orders_the_samples_by_class(cond_run, tmp_path):
    out = tmp_path / "all.png"
    res = _sample(cond_run, out, "--class", "all", "--n", "3", "--guidance", "1")
    assert res.exit_code == 0, res.output
    assert "24 samples" in res.output
    saved = np.load(out.with_suffix(".npz"))
    assert saved["samples"].shape == (24, 2) and out.is_file()
    assert saved["labels"].tolist() == [k for k in range(8) for _ in range(3)]


def test_image_class_grid_has_one_row_per_class(image_run, tmp_path):
    out = tmp_path / "grid.png"
    res = _sample(image_run, out, "--class", "all", "--n", "2")
    assert res.exit_code == 0, res.output
    saved = np.load(out.with_suffix(".npz"))
    assert saved["samples"].shape == (6, 3, SIZE, SIZE)
    assert saved["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    width, height = Image.open(out).size
    assert height > width  # 3 rows (classes) of 2 images


@pytest.mark.parametrize("run, args, message", [
    ("cond", ["--class", "8"], "outside this run's classes 0..7"),
    ("cond", ["--class", "-1"], "must be a class label"),
    ("cond", ["--class", "two"], "must be a class label"),
    ("cond", ["--guidance", "2"], "--guidance needs --class"),
    ("plain", ["--class", "0"], "class-conditional run"),
    ("plain", ["--class", "0", "--guidance", "1.5"], "unconditional"),
])
def test_sample_bad_labels_are_one_line_errors_without_output(cond_run, plain_run, tmp_path,
                                                              run, args, message):
    out = tmp_path / "bad.png"
    res = _sample(cond_run if run == "cond" else plain_run, out, "--n", "4", *args)
    assert message in one_error_line(res)
    assert not out.exists() and not out.with_suffix(".npz").exists()


# ------------------------------------------------------------------------------ inpaint, colorize
def test_inpaint_keeps_the_known_pixels_and_fills_the_rest(image_run, pictures, tmp_path):
    image, mask, known = pictures
    for extra in (["--steps", "3"], ["--steps", "3", "--resample", "2", "--class", "2",
                                     "--guidance", "1"],
                  ["--method", "smc", "--particles", "4", "--steps", "3"]):
        out = tmp_path / "out.png"
        res = _invoke("inpaint", "--ckpt", image_run, "--image", image, "--mask", mask,
                      "--out", out, "--device", "cpu", *extra)
        assert res.exit_code == 0, res.output
        got, want = np.asarray(Image.open(out)), np.asarray(Image.open(image))
        assert got.shape == want.shape
        assert np.array_equal(got[known], want[known])  # the known pixels, exactly
        assert not np.array_equal(got[~known], want[~known])
        out.unlink()


def test_colorize_writes_an_rgb_picture(image_run, tmp_path):
    grey = _png(tmp_path / "grey.png", np.random.default_rng(2).integers(0, 256, (SIZE, SIZE)))
    out = tmp_path / "colour.png"
    res = _invoke("colorize", "--ckpt", image_run, "--image", grey, "--out", out,
                  "--device", "cpu", "--steps", "3")
    assert res.exit_code == 0, res.output
    img = Image.open(out)
    assert img.mode == "RGB" and img.size == (SIZE, SIZE)


def _bad_inputs(tmp, image):
    g = np.random.default_rng(3)
    half = np.zeros((SIZE, SIZE), np.uint8)
    half[:4] = 255
    grey_mask = np.stack([half] * 3, -1)
    grey_mask[0, 0, 1] = 7
    return {
        "big image": (_png(tmp / "big.png", g.integers(0, 256, (16, 16, 3))), None,
                      "is 16x16 pixels; this run's images are 8x8"),
        "grey image": (_png(tmp / "g.png", g.integers(0, 256, (SIZE, SIZE))), None,
                       "this run's images are RGB"),
        "mask size": (image, _png(tmp / "m16.png", np.zeros((16, 16))), "is 16x16 pixels"),
        "mask values": (image, _png(tmp / "m3.png", np.where(half > 0, 128, 0)),
                        "has the values 0, 128"),
        "mask known": (image, _png(tmp / "m1.png", np.full((SIZE, SIZE), 255)),
                       "every pixel as known"),
        "mask unknown": (image, _png(tmp / "m0.png", np.zeros((SIZE, SIZE))),
                         "no pixel as known"),
        "mask colour": (image, _png(tmp / "mc.png", grey_mask), "unequal R, G and B"),
        "missing": (tmp / "nope.png", None, "does not exist"),
    }


@pytest.mark.parametrize("case", ["big image", "grey image", "mask size", "mask values",
                                  "mask known", "mask unknown", "mask colour", "missing"])
def test_inpaint_bad_pictures_are_one_line_errors_without_output(image_run, pictures, tmp_path,
                                                                 case):
    image, mask, _ = pictures
    bad_image, bad_mask, message = _bad_inputs(tmp_path, image)[case]
    out = tmp_path / "out.png"
    res = _invoke("inpaint", "--ckpt", image_run, "--image", bad_image, "--mask",
                  bad_mask or mask, "--out", out, "--device", "cpu", "--steps", "2")
    assert message in one_error_line(res)
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--class", "3"], "outside this run's classes 0..2"),
    (["--guidance", "1"], "--guidance needs --class"),
    (["--particles", "4"], "--particles applies to --method smc"),
    (["--method", "smc"], "--method smc needs --particles"),
    (["--method", "nearest"], "unknown --method"),
    (["--solver", "ode"], "deterministic"),
])
def test_inpaint_bad_options_are_one_line_errors(image_run, pictures, tmp_path, args, message):
    image, mask, _ = pictures
    out = tmp_path / "out.png"
    res = _invoke("inpaint", "--ckpt", image_run, "--image", image, "--mask", mask, "--out", out,
                  "--device", "cpu", "--steps", "2", *args)
    assert message in one_error_line(res)
    assert not out.exists()


def test_inpaint_and_colorize_refuse_a_2d_run(cond_run, pictures, tmp_path):
    image, mask, _ = pictures
    out = tmp_path / "out.png"
    res = _invoke("inpaint", "--ckpt", cond_run, "--image", image, "--mask", mask, "--out", out)
    assert "is for image runs" in one_error_line(res)
    res = _invoke("colorize", "--ckpt", cond_run, "--image", image, "--out", out)
    assert "is for image runs" in one_error_line(res)
    assert not out.exists()


def test_colorize_refuses_a_colour_input(image_run, pictures, tmp_path):
    image, _, _ = pictures
    out = tmp_path / "out.png"
    res = _invoke("colorize", "--ckpt", image_run, "--image", image, "--out", out,
                  "--device", "cpu")
    assert "is not greyscale" in one_error_line(res)
    assert not out.exists()


def test_picture_readers(tmp_path):
    grey = _png(tmp_path / "g.png", np.full((SIZE, SIZE), 100))
    with pytest.raises(UserInputError, match="needs a run on colour"):
        read_grey_for_run(grey, (1, SIZE, SIZE))
    x = read_grey_for_run(grey, (3, SIZE, SIZE))
    assert x.shape == (1, 1, SIZE, SIZE) and torch.allclose(x, torch.full_like(x, 100 / 127.5 - 1))
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[2:5, 1] = 1  # 0/1 values (not 0/255) are a mask too
    known = read_mask(_png(tmp_path / "m.png", m), (3, SIZE, SIZE))
    assert known.shape == (1, 1, SIZE, SIZE) and int(known.sum()) == 3


def test_an_exported_conditional_run_samples_a_class(cond_run, tmp_path):
    exported = tmp_path / "model.safetensors"
    assert _invoke("export", "--ckpt", cond_run, "--out", exported).exit_code == 0
    out = tmp_path / "e.png"
    res = _sample(exported, out, "--class", "3", "--n", "5")
    assert res.exit_code == 0, res.output
    assert np.load(out.with_suffix(".npz"))["samples"].shape == (5, 2)
