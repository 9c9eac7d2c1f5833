"""A Stable Diffusion folder through ``optimize-grid``, ``calibrate``, ``restore`` and ``inpaint``
with ``--prompt`` (issue 27, item 3): each command's files equal the Python API's on the same
prompts and seeds; the VAE decodes in slices; the UNet is never copied; the commands that take
no prompt refuse the folder in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from helpers import one_error_line
from sd_pipeline import PROMPT, tiny_pipeline
from sde_gen.app.cli import app
from sde_gen.app.editing import latent_mask
from sde_gen.app.prompting import bind_prompt
from sde_gen.app.runs import load_run
from sde_gen.interop.stable_diffusion import load_stable_diffusion
from sde_gen.sampling import impute, sample
from sde_gen.sampling.optimized_grid import optimize_grid
from sde_gen.scaling import model_to_uint8, uint8_to_model

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

CPU = ["--device", "cpu"]
PROMPTS = ["a cat", "a red dog"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


@pytest.fixture(scope="module")
def sd(folder):
    return load_stable_diffusion(folder)


def invoke(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def test_several_prompts_condition_rows_in_turn(sd):
    """Row j of any batch meets prompt j mod P: the two-prompt model's rows are the one-prompt
    models' rows (guided, one batched call)."""
    x = torch.randn(5, *sd.latent_shape(8, 8), generator=torch.Generator().manual_seed(0))
    t = torch.full((5,), 0.4)
    both = sd.guided(PROMPTS, negative_prompt="blurry", guidance=2.0)(x, t)
    for j in range(5):
        one = sd.guided(PROMPTS[j % 2], negative_prompt="blurry", guidance=2.0)(x[j:j + 1],
                                                                               t[j:j + 1])
        torch.testing.assert_close(both[j:j + 1], one, rtol=0, atol=2e-6)
    with pytest.raises(Exception, match="3 negative prompts for 2 prompts"):
        sd.guided(PROMPTS, negative_prompt=["a", "b", "c"])


def test_binding_a_prompt_shares_the_unet(folder):
    """Nothing keeps a second copy of the UNet: the bound run's model calls the loaded UNet, and
    the loaded folder holds each weight tensor once."""
    run = load_run(folder)
    bound = bind_prompt(run, PROMPTS, guidance=1.5, height=8, width=8)
    assert bound.model.model is run.model and run.text.model is run.model
    ptrs = [p.data_ptr() for p in run.text.parameters()]
    unet = {p.data_ptr() for p in run.model.unet.parameters()}
    assert len(ptrs) == len(set(ptrs)) and unet <= set(ptrs)
    n = sum(p.numel() for m in (run.model.unet, run.text.vae, run.text.text_encoder)
            for p in m.parameters())
    assert sum(p.numel() for p in run.text.parameters()) == n


@pytest.fixture
def loose_teacher(monkeypatch):
    """The teacher's PF-ODE solve at tol 1e-3 (not 1e-7): a random UNet's ODE is stiff, and the
    commands' wiring, not the teacher's accuracy, is under test."""
    from sde_gen.sampling import optimized_grid as module

    monkeypatch.setattr(module, "REFERENCE_TOL", 1e-3)


def test_optimize_grid_on_a_few_prompts_equals_the_api_and_samples(folder, sd, tmp_path,
                                                                    loose_teacher):
    grid = tmp_path / "g.json"
    res = invoke("optimize-grid", "--ckpt", folder, *CPU, "--solver", "ddim", "--nfe", 4,
                 "--search", "descent", "--n", 6, "--n-heldout", 4, "--evals", 6,
                 "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--guidance", 2,
                 "--height", 8, "--width", 8, "--out", grid)
    assert res.exit_code == 0, res.output
    want = optimize_grid(sd.guided(PROMPTS, guidance=2.0), sd.sde, sd.latent_shape(8, 8),
                         "ddim", 4, method="descent", n=6, n_heldout=4, evals=6)
    got = json.loads(grid.read_text())
    np.testing.assert_allclose(got["ts"], want.ts.tolist(), rtol=0, atol=1e-12)
    out = tmp_path / "s.png"
    res = invoke("sample", "--ckpt", folder, *CPU, "--no-progress", "--grid", grid, "--prompt",
                 PROMPT, "--height", 8, "--width", 8, "--n", 2, "--out", out)
    assert res.exit_code == 0, res.output
    assert "2 samples with ddim, prompt 'a cat': 4 NFE" in res.output
    assert np.load(out.with_suffix(".npz"))["samples"].shape == (2, 3, 8, 8)


def test_calibrate_on_prompts_then_sample_uses_it(folder, tmp_path, loose_teacher):
    own = tmp_path / "pipe"
    shutil.copytree(folder, own)
    res = invoke("calibrate", "--ckpt", own, *CPU, "--nfe", 4, "--budget", 4, "--n", 8,
                 "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--height", 8, "--width", 8)
    assert res.exit_code == 0, res.output
    cal = json.loads((own / "calibration.json").read_text())
    assert len(cal["calibrations"]) == 1 and cal["calibrations"][0]["nfe"] == 4
    from sde_gen.app.calibration import model_fingerprint

    assert cal["model"] == model_fingerprint(load_run(own).model)  # the UNet's: any prompt
    steps = len(cal["calibrations"][0]["ts"]) - 1
    res = invoke("sample", "--ckpt", own, *CPU, "--no-progress", "--steps", steps, "--prompt",
                 "a dog", "--height", 8, "--width", 8, "--n", 2, "--out", tmp_path / "s.png")
    assert res.exit_code == 0, res.output
    assert f"using the calibration for {steps} steps" in res.output


def _pictures(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    mask = np.full((8, 8), 255, np.uint8)
    mask[:, 4:] = 0  # the right half is unknown: two whole 2x2... 4 columns of latent cells
    mask[0, 0] = 0  # an unknown pixel inside a latent cell: that cell is filled in too
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path / "img.png", tmp_path / "mask.png"


def test_inpaint_imputes_the_latents_and_keeps_the_known_pixels(folder, sd, tmp_path):
    image, mask = _pictures(tmp_path)
    out = tmp_path / "o.png"
    res = invoke("inpaint", "--ckpt", folder, *CPU, "--image", image, "--mask", mask, "--out", out,
                 "--prompt", PROMPT, "--guidance", 1.5, "--steps", 6, "--seed", 3)
    assert res.exit_code == 0, res.output
    got = np.asarray(Image.open(out))
    pixels = np.asarray(Image.open(image))
    known = np.asarray(Image.open(mask)) == 255
    np.testing.assert_array_equal(got[known], pixels[known])
    # The API: latents of the image, a cell known where its 2x2 block is, impute, decode, paste.
    codec = sd.codec(8, 8)
    x = uint8_to_model(torch.from_numpy(pixels.transpose(2, 0, 1).copy()))[None]
    cells = latent_mask(torch.from_numpy(known[None].astype(np.float32)), codec.factor)
    assert cells.shape == (1, 4, 4) and cells.sum() == 7  # 8 known cells but the corner one
    with torch.no_grad():
        z = impute(sd.guided(PROMPT, guidance=1.5), sd.sde, codec.encode(x), cells, steps=6,
                   generator=torch.Generator().manual_seed(3)).x
        want = model_to_uint8(codec.decode(z)[0]).numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(got[~known], want[~known])
    # SMC in latent space runs too.
    res = invoke("inpaint", "--ckpt", folder, *CPU, "--image", image, "--mask", mask, "--out",
                 tmp_path / "smc.png", "--prompt", PROMPT, "--method", "smc", "--particles", 2,
                 "--steps", 4)
    assert res.exit_code == 0, res.output


def test_restore_guides_through_the_decoder_at_the_image_size(folder, tmp_path):
    image, mask = _pictures(tmp_path)
    out = tmp_path / "r.png"
    res = invoke("restore", "--ckpt", folder, *CPU, "--task", "inpaint", "--image", image,
                 "--mask", mask, "--method", "dps", "--n", 2, "--steps", 4, "--prompt", PROMPT,
                 "--guidance", 1.0, "--out", out)
    assert res.exit_code == 0, res.output
    assert np.asarray(Image.open(out)).shape == (8, 3 * 8 + 2 * 2, 3)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "low.png")
    res = invoke("restore", "--ckpt", folder, *CPU, "--task", "superres", "--factor", 4,
                 "--image", tmp_path / "low.png", "--method", "dps", "--n", 1, "--steps", 3,
                 "--prompt", PROMPT, "--out", tmp_path / "sr.png")
    assert res.exit_code == 0, res.output  # 16x16 images from a 4x4 measurement
    assert np.asarray(Image.open(tmp_path / "sr.png")).shape == (16, 2 * 16 + 2, 3)


def test_decoding_in_slices_equals_decoding_at_once(folder, tmp_path):
    noise = np.random.default_rng(0).standard_normal((3, 4, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x_T.npy", noise)
    got = []
    for k in (1, 3):
        out = tmp_path / f"s{k}.png"
        res = invoke("sample", "--ckpt", folder, *CPU, "--no-progress", "--solver", "ddim",
                     "--steps", 3, "--prompt", PROMPT, "--height", 8, "--width", 8,
                     "--x-T", tmp_path / "x_T.npy",
                     "--decode-batch", k, "--out", out)
        assert res.exit_code == 0, res.output
        got.append(np.load(out.with_suffix(".npz"))["samples"])
    np.testing.assert_allclose(got[0], got[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("args,message", [
    (["inpaint", "--image", "IMG", "--mask", "MASK"], "give --prompt TEXT"),
    (["inpaint", "--image", "IMG", "--mask", "FULL", "--prompt", PROMPT],
     "has no wholly known 2x2 block"),
    (["inpaint", "--image", "IMG", "--mask", "MASK", "--prompt", PROMPT, "--class", "1"],
     "--class does not combine with --prompt"),
    (["colorize", "--image", "IMG"], "this command does not"),
    (["likelihood"], "this command does not"),
    (["restore", "--task", "inpaint", "--image", "IMG", "--mask", "MASK", "--prompt", PROMPT,
      "--method", "mmps"], "only --method dps"),
    (["restore", "--task", "inpaint", "--image", "IMG", "--mask", "MASK", "--guidance", "2",
      "--method", "dps"], "--guidance needs --prompt"),
    (["optimize-grid", "--height", "8"], "--height need --prompt"),
    (["optimize-grid", "--prompt", PROMPT, "--height", "6"], "height 6 must be a positive "
                                                             "multiple of 4"),
    (["calibrate", "--nfe", "4", "--guidance", "1"], "--guidance needs --prompt"),
])
def test_bad_input_is_one_line(folder, tmp_path, args, message):
    image, mask = _pictures(tmp_path)
    full = np.zeros((8, 8), np.uint8)
    full[::2, ::2] = 255  # known pixels, but no whole 2x2 block
    Image.fromarray(full).save(tmp_path / "full.png")
    files = {"IMG": image, "MASK": mask, "FULL": tmp_path / "full.png"}
    out = tmp_path / "o.png"
    cmd, *rest = args
    extra = [] if cmd in ("likelihood", "optimize-grid", "calibrate") else ["--out", out]
    if cmd == "optimize-grid":
        extra = ["--out", tmp_path / "g.json"]
    res = invoke(cmd, "--ckpt", folder, *CPU, *[files.get(a, a) for a in rest], *extra)
    assert message in one_error_line(res)
    assert not out.exists() and not (tmp_path / "g.json").exists()


def test_a_prompt_on_a_pixel_run_is_refused(tmp_path):
    """--prompt or --dtype on a model that takes none: one line (a DDPM folder)."""
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(
        num_train_timesteps=100)).save_pretrained(tmp_path / "ddpm")
    res = invoke("optimize-grid", "--ckpt", tmp_path / "ddpm", *CPU, "--prompt", PROMPT,
                 "--out", tmp_path / "g.json")
    assert "--prompt needs a text-conditional model" in one_error_line(res)
    res = invoke("sample", "--ckpt", tmp_path / "ddpm", *CPU, "--dtype", "float16", "--out",
                 tmp_path / "s.png")
    assert "--dtype applies to Stable Diffusion folders" in one_error_line(res)


def test_float16_weights_sample_within_half_precision_of_float32(folder, sd):
    """Weights loaded in float16 (diffusers' ``torch_dtype``): the solver stays in float32, each
    call casts to the weights' dtype and back; the latents agree with float32's to half-precision
    round-off accumulated over the steps (measured 6e-4 of the largest latent)."""
    half = load_stable_diffusion(folder, dtype=torch.float16)
    assert next(half.model.unet.parameters()).dtype == torch.float16
    assert next(half.vae.parameters()).dtype == torch.float16
    x_T = torch.randn(2, *sd.latent_shape(), generator=torch.Generator().manual_seed(0))
    got, want = (sample(m.guided(PROMPT, guidance=2.0), m.sde, None, "dpm", x_T=x_T, steps=6).x
                 for m in (half, sd))
    assert got.dtype == torch.float32
    scale = want.abs().max()
    assert scale > 10 and (got - want).abs().max() < 3e-3 * scale
    images = half.codec().decode(got)
    assert images.dtype == torch.float16 and torch.isfinite(images).all()


def test_sample_dtype_float16_equals_the_api(folder, tmp_path):
    """``sample --dtype float16`` loads the folder's weights in float16 and samples exactly what
    the Python API samples with ``load_stable_diffusion(dtype=torch.float16)``."""
    noise = np.random.default_rng(2).standard_normal((2, 4, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x_T.npy", noise)
    out = tmp_path / "h.png"
    res = invoke("sample", "--ckpt", folder, *CPU, "--no-progress", "--solver", "dpm", "--steps",
                 4, "--prompt", PROMPT, "--height", 8, "--width", 8, "--x-T",
                 tmp_path / "x_T.npy", "--dtype", "float16", "--out", out)
    assert res.exit_code == 0, res.output
    half = load_stable_diffusion(folder, dtype=torch.float16)
    z = sample(half.guided(PROMPT), half.sde, None, "dpm", x_T=torch.from_numpy(noise),
               steps=4).x
    want = half.codec(8, 8).decode(z).float().numpy()
    np.testing.assert_allclose(np.load(out.with_suffix(".npz"))["samples"], want, rtol=0,
                               atol=1e-6)
    res = invoke("sample", "--ckpt", folder, *CPU, "--prompt", PROMPT, "--dtype", "float64",
                 "--out", tmp_path / "x.png")
    assert "unknown --dtype 'float64'; choose one of float32, float16, bfloat16" in \
        one_error_line(res)
