"""Latent diffusion end to end: score models trained on the latents of a frozen autoencoder (an
sde-gen first-stage run or a diffusers ``AutoencoderKL`` folder), their scaling, resume identity
(the autoencoder's hash), sampling, likelihood and figures decoded to images, and the one-line
errors of a config that names a missing or mismatched autoencoder."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import TINY_UNET, cli_sets, one_error_line
from sde_gen.app.autoencoders import open_autoencoder
from sde_gen.app.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from sde_gen.app.cli import app
from sde_gen.app.config import load_config
from sde_gen.app.runs import load_run
from sde_gen.app.train import train
from sde_gen.data.images import load_images
from sde_gen.latent import latent_scaling
from sde_gen.scaling import uint8_to_model

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

AE = ["model.name=autoencoder", "model.factor=2", "model.latent_channels=2", "model.ch=8",
      "model.ch_mult=[1, 2]", "model.num_res_blocks=1", "data.name=digits", "train.batch_size=16",
      "train.device=cpu", "train.sample_n=4", "train.warmup=1", "train.lr=0.002",
      "train.steps=4"]
#: A score model on 2x4x4 latents of the 8x8 digits; class-conditional, for guidance.
LDM = [*TINY_UNET, "data.name=digits", "train.batch_size=16", "train.warmup=1", "sde.N=25",
       "train.sample_n=4", "model.class_cond=true"]
CPU = ["--device", "cpu", "--no-progress"]


def _folder(path, scaling=0.7, shift=0.1, seed=0):
    """A tiny random AutoencoderKL (1 channel, f = 2, c = 2) saved with save_pretrained."""
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
        layers_per_block=1, latent_channels=2, norm_num_groups=8, sample_size=8,
        scaling_factor=scaling, shift_factor=shift)
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A first stage, a latent score model on it, and a diffusers folder."""
    root = tmp_path_factory.mktemp("latent")
    train(load_config(None, AE), root / "ae", progress=False)
    train(load_config(None, [*LDM, f"model.autoencoder={root / 'ae'}", "train.steps=3"]),
          root / "ldm", progress=False)
    return {"root": root, "ae": root / "ae", "ldm": root / "ldm",
            "folder": _folder(root / "folder")}


def test_latent_scaling_round_trip(runs):
    opened = open_autoencoder(runs["ae"])
    images = load_images("digits").x
    z = opened.codec((1, 8, 8), 1.0, 0.0).encode_all(images).double()
    s, b = latent_scaling(z, "test")
    codec = opened.codec((1, 8, 8), s, b)
    scaled = codec.scale(z)
    assert abs(scaled.mean().item()) < 1e-9 and scaled.std().item() == pytest.approx(1, abs=1e-9)
    torch.testing.assert_close(codec.unscale(scaled), z, rtol=0, atol=1e-12)
    x = uint8_to_model(images[:5])
    torch.testing.assert_close(codec.encode(x).double(), codec.scale(z[:5]), rtol=0, atol=1e-5)
    torch.testing.assert_close(codec.decode(codec.encode(x)), opened.vae.decode(
        opened.vae.encode(x).latent_dist.mean).sample, rtol=0, atol=1e-5)
    # The run recorded the same scaling, computed once from its training latents.
    rec = load_checkpoint(list_checkpoints(runs["ldm"])[-1])["latent"]
    assert rec["scaling_factor"] == pytest.approx(s, rel=1e-6)
    assert rec["shift_factor"] == pytest.approx(b, rel=1e-6, abs=1e-9)
    assert rec["latent_shape"] == [2, 4, 4] and len(rec["autoencoder_sha256"]) == 64
    assert json.loads((runs["ldm"] / "latent.json").read_text())["scaling_factor"] == \
        rec["scaling_factor"]


def test_diffusers_folder_encode_decode_equals_diffusers(runs, tmp_path):
    """sde-gen's codec of a save_pretrained folder against diffusers' own calls, both with the
    folder's scaling_factor 0.7 and shift_factor 0.1."""
    ours = open_autoencoder(runs["folder"])
    assert ours.spec.factor == 2 and ours.spec.scaling == (0.7, 0.1)
    codec = ours.codec((1, 8, 8), 0.7, 0.1)
    theirs = diffusers.AutoencoderKL.from_pretrained(runs["folder"]).eval()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z_ref = (theirs.encode(x).latent_dist.mean - 0.1) * 0.7
        z = codec.encode(x)
        torch.testing.assert_close(z, z_ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(codec.decode(z), theirs.decode(z / 0.7 + 0.1).sample,
                                   rtol=1e-6, atol=1e-6)
    # A pipeline folder (Stable Diffusion's layout) is read through its vae/.
    pipe = tmp_path / "pipe"
    _folder(pipe / "vae")
    (pipe / "model_index.json").write_text("{}")
    assert open_autoencoder(pipe).sha256 == ours.sha256


def test_samples_decode_to_the_data_shape_and_range(runs, tmp_path):
    runner = CliRunner()
    out = tmp_path / "s.png"
    res = runner.invoke(app, ["sample", "--ckpt", str(runs["ldm"]), "--solver", "ddim",
                              "--steps", "4", "--n", "6", "--out", str(out), *CPU])
    assert res.exit_code == 0, res.output
    npz = np.load(out.with_suffix(".npz"))
    assert npz["images"].shape == (6, 1, 8, 8) and npz["images"].dtype == np.uint8
    assert npz["samples"].shape == (6, 1, 8, 8) and np.isfinite(npz["samples"]).all()
    # The images are the decoder's outputs of the sampled latents: decode them again here.
    run = load_run(runs["ldm"])
    assert run.shape == (2, 4, 4) and run.data_shape == (1, 8, 8)
    res = runner.invoke(app, ["sample", "--ckpt", str(runs["ldm"]), "--solver", "ddim",
                              "--steps", "4", "--n", "2", "--class", "3", "--guidance", "1.5",
                              "--out", str(tmp_path / "g.png"), *CPU])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "g.npz")["images"].shape == (2, 1, 8, 8)


def test_an_export_keeps_the_latent_record(runs, tmp_path):
    out = tmp_path / "ldm.safetensors"
    res = CliRunner().invoke(app, ["export", "--ckpt", str(runs["ldm"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    run, ref = load_run(out), load_run(runs["ldm"])
    assert run.codec.metadata() == ref.codec.metadata() and run.data_shape == (1, 8, 8)


def test_latent_samples_are_the_decoded_latents(runs):
    from sde_gen.app.generate import generate

    run = load_run(runs["ldm"])
    gen = generate(run.model, run.sde, 3, run.shape, "ddim", steps=4, progress=False)
    x = run.decode(gen.x)
    vae = open_autoencoder(runs["ae"]).vae
    s, b = run.codec.scaling_factor, run.codec.shift_factor
    with torch.no_grad():
        torch.testing.assert_close(x, vae.decode(gen.x / s + b).sample, rtol=0, atol=1e-6)


def test_a_distilled_latent_run_samples_decoded_images(runs, tmp_path):
    from sde_gen.app.generate import generate
    from sde_gen.consistency import ConsistencyModel

    runner, cm = CliRunner(), tmp_path / "cm"
    res = runner.invoke(app, ["distill", "--ckpt", str(runs["ldm"]), "--steps", "1", "2", "-w",
                              str(cm), "--no-progress",
                              *cli_sets(["train.steps=4", "train.batch_size=8"])])
    assert res.exit_code == 0, res.output
    run, teacher = load_run(cm), load_run(runs["ldm"])
    assert isinstance(run.model, ConsistencyModel)
    # the student diffuses the teacher's latents: the same autoencoder and scaling
    assert run.codec.metadata() == teacher.codec.metadata()
    assert run.shape == (2, 4, 4) and run.data_shape == (1, 8, 8)
    out = tmp_path / "s.png"
    res = runner.invoke(app, ["sample", "--ckpt", str(cm), "--steps", "2", "--n", "5", "--out",
                              str(out), *CPU])
    assert res.exit_code == 0, res.output
    assert "sampling with --solver consistency" in res.output
    npz = np.load(out.with_suffix(".npz"))
    assert npz["images"].shape == (5, 1, 8, 8) and npz["images"].dtype == np.uint8
    # the images are the decoder's outputs of the consistency model's latents
    gen = generate(run.model, run.sde, 5, run.shape, "consistency", steps=2, progress=False)
    assert gen.x.shape == (5, 2, 4, 4)
    torch.testing.assert_close(torch.from_numpy(npz["samples"]), run.decode(gen.x), rtol=0,
                               atol=1e-6)
    # eval samples it with the consistency solver too, and says why there is no bits/dim
    res = runner.invoke(app, ["eval", "--ckpt", str(cm), "--n", "8", "--classifier-steps", "2",
                              "--out", str(tmp_path / "e.json"), *CPU])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "e.json").read_text())
    assert rep["solver"] == "consistency" and rep["nfe"] == 1 and "bpd" not in rep
    assert "no probability-flow ODE" in rep["bpd_note"] and "fd_classifier" in rep
    res = runner.invoke(app, ["eval", "--ckpt", str(cm), "--solver", "ddim", *CPU])
    assert "--solver ddim cannot sample it" in one_error_line(res)


def test_resume_is_bitwise_and_checks_the_autoencoder(runs, tmp_path):
    sets = [*LDM, f"model.autoencoder={runs['ae']}", "train.steps=6", "train.ckpt_every=3"]
    cfg = load_config(None, sets)
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "cut", progress=False)
    checkpoint_path(tmp_path / "cut", 6).unlink()
    res = train(cfg, tmp_path / "cut", progress=False)
    a = load_checkpoint(list_checkpoints(tmp_path / "full")[-1])
    b = load_checkpoint(res.checkpoint)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["latent"] == b["latent"]
    # Another autoencoder of the same shape at the same path: resuming, or sampling the run,
    # is refused in one line, naming both hashes.
    other = tmp_path / "ae2"
    train(load_config(None, [*AE, "train.seed=5"]), other, progress=False)
    moved = load_config(None, [*sets, f"model.autoencoder={other}", "train.steps=9"])
    with pytest.raises(ValueError, match="is not the one the run being resumed was trained on"):
        train(moved, tmp_path / "cut", progress=False)
    assert load_checkpoint(list_checkpoints(tmp_path / "cut")[-1])["step"] == 6
    (tmp_path / "cut" / "checkpoints" / "ckpt_000000006.pt").rename(tmp_path / "keep.pt")
    ckpt = tmp_path / "keep.pt"
    state = load_checkpoint(ckpt)
    state["config"]["model"]["autoencoder"] = str(other)
    torch.save(state, ckpt)
    res = CliRunner().invoke(app, ["sample", "--ckpt", str(ckpt), "--n", "2", *CPU])
    assert "is not the one" in one_error_line(res) and "sha256" in one_error_line(res)


def test_diffusers_folder_as_the_autoencoder(runs, tmp_path):
    base = [*LDM, f"model.autoencoder={runs['folder']}", "train.steps=2"]
    train(load_config(None, base), tmp_path / "auto", progress=False)
    rec = load_checkpoint(list_checkpoints(tmp_path / "auto")[-1])["latent"]
    assert (rec["scaling_factor"], rec["shift_factor"]) == (0.7, 0.1)  # the folder's own
    train(load_config(None, [*base, "model.latent_scaling=data"]), tmp_path / "data",
          progress=False)
    rec = load_checkpoint(list_checkpoints(tmp_path / "data")[-1])["latent"]
    assert rec["scaling_factor"] != 0.7  # computed from the digits' latents
    out = tmp_path / "ll.json"
    res = CliRunner().invoke(app, ["likelihood", "--ckpt", str(tmp_path / "auto"), "--n", "4",
                                   "--rtol", "1e-2", "--atol", "1e-2", "--out", str(out), *CPU])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert "bpd" not in rep and "bpd_bound" not in rep
    assert "a mean, not a likelihood" in rep["bpd_bound_note"]
    assert "nats per latent dim (not image bits/dim" in res.output


def test_likelihood_is_latent_nats_and_an_image_bound(runs, tmp_path):
    out = tmp_path / "ll.json"
    res = CliRunner().invoke(app, ["likelihood", "--ckpt", str(runs["ldm"]), "--n", "6",
                                   "--rtol", "1e-3", "--atol", "1e-3", "--out", str(out), *CPU])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["latent_dims"] == 32 and "bpd" not in rep
    assert rep["latent_nats_per_dim"] == pytest.approx(rep["latent_nll_nats"] / 32)
    # The bound is the ELBO of its three terms, in bits/dim of 64 dequantized pixels in [-1, 1]
    # (log p_y = log p_x + D log 2, plus 8 bits for the bins): bits/dim is affine in nats.
    elbo = (rep["bound_reconstruction_nats"] + rep["bound_latent_prior_nats"]
            + rep["bound_posterior_entropy_nats"])
    assert rep["bpd_bound"] == pytest.approx(-(elbo + 64 * math.log(2)) / (64 * math.log(2)) + 8,
                                             rel=1e-6)
    # The latent prior in unscaled units: the ODE's log-density plus d_z log s.
    s = load_run(runs["ldm"]).codec.scaling_factor
    assert rep["bound_latent_prior_nats"] == pytest.approx(
        -rep["latent_nll_nats"] + 32 * math.log(s), rel=1e-6)
    assert "image bits/dim bound" in res.output
    res = CliRunner().invoke(app, ["likelihood", "--ckpt", str(runs["ldm"]), "--method", "vlb",
                                   *CPU])
    assert "not defined on a latent run" in one_error_line(res)


def test_figures_decode_and_restore_guides_through_the_decoder(runs, tmp_path):
    res = CliRunner().invoke(app, ["figures", "--ckpt", str(runs["ldm"]), "--out",
                                   str(tmp_path / "f"), "--n", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "f").glob("*.png"))) == 5
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "low.png")
    args = ["restore", "--ckpt", str(runs["ldm"]), "--task", "superres", "--factor", "2",
            "--image", str(tmp_path / "low.png"), "--n", "2", "--steps", "5", "--device", "cpu"]
    res = CliRunner().invoke(app, [*args, "--method", "dps", "--out", str(tmp_path / "r.png")])
    assert res.exit_code == 0, res.output
    assert np.asarray(Image.open(tmp_path / "r.png")).shape == (8, 3 * 8 + 2 * 2)
    res = CliRunner().invoke(app, [*args, "--method", "mmps", "--out", str(tmp_path / "m.png")])
    assert "only --method dps" in one_error_line(res)
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "grey.png")
    res = CliRunner().invoke(app, ["colorize", "--ckpt", str(runs["ldm"]), "--image",
                                   str(tmp_path / "grey.png"), "--out", str(tmp_path / "c.png"),
                                   "--device", "cpu"])
    assert "not linear in the latent" in one_error_line(res)
    assert "restore --task colorize --method dps" in one_error_line(res)


def test_inpaint_imputes_latents_and_keeps_known_pixels(runs, tmp_path):
    """``sde-gen inpaint`` on a latent run: the latents of the wholly known 2x2 blocks are
    imputed (replacement), decoded, and the known pixels are the input's exactly."""
    from PIL import Image

    digit = load_images("digits", split="test").x[0, 0].numpy()
    Image.fromarray(digit).save(tmp_path / "digit.png")
    mask = np.full((8, 8), 255, np.uint8)
    mask[4:] = 0
    Image.fromarray(mask).save(tmp_path / "mask.png")
    res = CliRunner().invoke(app, [
        "inpaint", "--ckpt", str(runs["ldm"]), "--image", str(tmp_path / "digit.png"), "--mask",
        str(tmp_path / "mask.png"), "--steps", "20", "--out", str(tmp_path / "i.png"), "--device",
        "cpu"])
    assert res.exit_code == 0, res.output
    got = np.asarray(Image.open(tmp_path / "i.png"))
    np.testing.assert_array_equal(got[:4], digit[:4])
    assert got[4:].std() > 0  # filled in, not left blank


def test_latent_dps_reduces_the_measurement_residual(runs):
    """The same seed with and without guidance: DPS's step through the decoder brings every
    restoration closer to y = A D(z0) (2x downsampling of a held-out digit)."""
    from sde_gen.inverse import Downsample
    from sde_gen.latent.restore import restore_latent

    run = load_run(runs["ldm"])
    op = Downsample(2)
    y = op(uint8_to_model(load_images("digits", split="test").x[:1]))

    def forward(z):
        return op(run.codec.decode(z))

    def residual(zeta):
        res = restore_latent(run.model, run.sde, y, forward, shape=(4, *run.shape), zeta=zeta,
                             generator=torch.Generator().manual_seed(0), steps=20)
        assert res.nfe == 21
        with torch.no_grad():
            return (y - forward(res.x)).flatten(1).norm(dim=1)

    assert (residual(1.0) < residual(1e-6)).all()
    with pytest.raises(ValueError, match="zeta must be a finite number > 0"):
        restore_latent(run.model, run.sde, y, forward, shape=(1, *run.shape), zeta=0.0)


def _train_error(tmp_path, *sets) -> str:
    workdir = tmp_path / "bad"
    res = CliRunner().invoke(app, ["train", "--workdir", str(workdir), "--no-progress",
                                   *cli_sets([*LDM, "train.steps=2", *sets])])
    line = one_error_line(res)
    assert not list_checkpoints(workdir) and not (workdir / "config.yaml").exists()
    return line


def test_bad_autoencoders_are_one_line_errors_before_any_work(runs, tmp_path):
    assert "does not exist" in _train_error(tmp_path, f"model.autoencoder={tmp_path / 'no'}")
    assert "neither an sde-gen autoencoder run" in _train_error(
        tmp_path, f"model.autoencoder={tmp_path}")
    assert "is a run of model.name=unet, not a first-stage run" in _train_error(
        tmp_path, f"model.autoencoder={runs['ldm']}")
    # Channels and image size: 3-channel 8x8 images, and 1-channel 16x16 ones.
    rgb, big = tmp_path / "rgb.npz", tmp_path / "big.npz"
    np.savez(rgb, x_train=np.zeros((16, 8, 8, 3), np.uint8), y_train=np.zeros(16, np.int64))
    np.savez(big, x_train=np.zeros((16, 16, 16), np.uint8), y_train=np.zeros(16, np.int64))
    ae = f"model.autoencoder={runs['ae']}"
    assert "encodes 1-channel images; the data have 3 channels" in _train_error(
        tmp_path, ae, "data.name=npz", f"data.path={rgb}")
    assert "was trained on 1x8x8 images; the data are 1x16x16" in _train_error(
        tmp_path, ae, "data.name=npz", f"data.path={big}")
    # An autoencoder run that stopped before its train.steps.
    unfinished = tmp_path / "ae_cut"
    train(load_config(None, [*AE, "train.max_seconds=1e-9"]), unfinished, progress=False)
    assert "has not finished training (step 1 of train.steps=4)" in _train_error(
        tmp_path, f"model.autoencoder={unfinished}")
    # A folder whose scaling_factor is 0 or NaN (or a shift that is infinite).
    for i, (scale, shift) in enumerate(((0.0, None), (float("nan"), None), (1.0, float("inf")))):
        folder = _folder(tmp_path / f"f{i}", scaling=scale, shift=shift)
        line = _train_error(tmp_path, f"model.autoencoder={folder}")
        assert ("scaling_factor" if i < 2 else "shift_factor") in line and "finite" in line


def test_core_imports_without_diffusers_and_says_which_extra(tmp_path):
    code = (
        "import sys; sys.modules['diffusers'] = None\n"
        "import sde_gen, sde_gen.app.cli, sde_gen.app.train, sde_gen.latent\n"
        "from sde_gen.latent import KLAutoencoder\n"
        "try:\n"
        "    KLAutoencoder(in_channels=1, latent_channels=2, factor=2, block_out_channels=(8, 8),"
        " layers_per_block=1, image_size=8)\n"
        "except ValueError as e:\n"
        "    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert 'the diffusers extra: pip install -e ".[diffusers]"' in res.stdout
    assert "\n" not in res.stdout.strip()
