"""``sde-gen sample --ckpt SD_FOLDER --prompt ...`` and ``sample --x-T FILE.npy`` (issue 27): the
files equal the Python API's samples from the same noise, and bad input is one line, exit 2,
nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import one_error_line
from sd_pipeline import PROMPT, tiny_pipeline
from sde_gen.app.cli import app
from sde_gen.interop import load_diffusers
from sde_gen.interop.stable_diffusion import load_stable_diffusion
from sde_gen.sampling import sample

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

BASE = ["sample", "--no-progress", "--device", "cpu", "--solver", "ddim", "--steps", "4"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddpm")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=100, beta_end=0.2, clip_sample=False)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def invoke(*args):
    return CliRunner().invoke(app, [*BASE, *map(str, args)])


def test_prompt_with_noise_file_equals_the_api(folder, tmp_path):
    noise = np.random.default_rng(0).standard_normal((3, 4, 6, 8)).astype(np.float32)
    np.save(tmp_path / "x_T.npy", noise)
    out = tmp_path / "cat.png"
    res = invoke("--ckpt", folder, "--prompt", PROMPT, "--negative-prompt", "dog",
                 "--guidance", 2.5, "--height", 12, "--width", 16, "--x-T", tmp_path / "x_T.npy",
                 "--batch-size", 2, "--out", out)
    assert res.exit_code == 0, res.output
    assert "3 samples with ddim, prompt 'a cat', guidance 2.5: 5 NFE" in res.output  # + denoise
    got = np.load(out.with_suffix(".npz"))["samples"]
    assert got.shape == (3, 3, 12, 16) and out.is_file()
    sd = load_stable_diffusion(folder)
    model = sd.guided(PROMPT, negative_prompt="dog", guidance=2.5)
    z = sample(model, sd.sde, None, "ddim", x_T=torch.from_numpy(noise), steps=4).x
    want = sd.codec(12, 16).decode(z).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # batches of 2 and 1: the same


def test_noise_file_on_a_ddpm_folder_equals_the_api(ddpm_folder, tmp_path):
    noise = np.random.default_rng(1).standard_normal((2, 1, 8, 8))  # float64 is accepted
    np.save(tmp_path / "x_T.npy", noise)
    out = tmp_path / "ddpm.png"
    res = invoke("--ckpt", ddpm_folder, "--x-T", tmp_path / "x_T.npy", "--out", out)
    assert res.exit_code == 0, res.output
    model, sde = load_diffusers(ddpm_folder)
    want = sample(model, sde, None, "ddim", x_T=torch.from_numpy(noise).float(), steps=4).x
    np.testing.assert_allclose(np.load(out.with_suffix(".npz"))["samples"], want.numpy(),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("args,message", [
    (["--prompt", PROMPT, "--height", "18"], "height 18 must be a positive multiple of 4"),
    (["--prompt", PROMPT, "--width", "0"], "--width"),
    (["--prompt", PROMPT, "--guidance", "nan"], "nan is not a number"),
    (["--guidance", "2"], "--class all, or --prompt TEXT"),
    ([], "is a Stable Diffusion folder: give --prompt TEXT"),
    (["--prompt", PROMPT, "--class", "1"], "--prompt does not combine with --class"),
    (["--height", "16"], "--height need --prompt"),
    (["--prompt", PROMPT, "--x-T", "WRONG"], "holds noise of shape (4, 4, 4) per sample; "
                                             "this model samples (4, 8, 8)"),
    (["--prompt", PROMPT, "--x-T", "INTS"], "must hold a float array"),
    (["--prompt", PROMPT, "--x-T", "WRONG", "--n", "3"], "--n 3 but --x-T holds 2"),
])
def test_bad_input_is_one_line_and_writes_nothing(folder, tmp_path, args, message):
    np.save(tmp_path / "wrong.npy", np.zeros((2, 4, 4, 4), np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((2, 4, 8, 8), np.int64))
    files = {"WRONG": str(tmp_path / "wrong.npy"), "INTS": str(tmp_path / "ints.npy")}
    out = tmp_path / "o.png"
    res = invoke("--ckpt", folder, *[files.get(a, a) for a in args], "--out", out)
    if "nan" in args or "0" in args:  # typer's own usage error: exit 2, its box
        assert res.exit_code == 2 and message in res.output, res.output
    else:
        assert message in one_error_line(res)
    assert not out.exists() and not out.with_suffix(".npz").exists()


def test_prompt_on_an_unconditional_model_and_other_commands(folder, ddpm_folder, tmp_path):
    res = invoke("--ckpt", ddpm_folder, "--prompt", PROMPT, "--out", tmp_path / "o.png")
    assert "--prompt needs a text-conditional model" in one_error_line(res)
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "vae")
    res = invoke("--ckpt", broken, "--prompt", PROMPT, "--out", tmp_path / "o.png")
    assert "missing the vae/ component" in one_error_line(res)
    res = CliRunner().invoke(app, ["optimize-grid", "--ckpt", str(folder), "--device", "cpu",
                                   "--out", str(tmp_path / "g.json")])
    assert "is a Stable Diffusion folder: give --prompt TEXT" in one_error_line(res)
    res = CliRunner().invoke(app, ["eval", "--ckpt", str(folder), "--device", "cpu"])
    assert "this command does not" in one_error_line(res)
    assert not list(tmp_path.glob("o.*")) and not (tmp_path / "g.json").exists()
