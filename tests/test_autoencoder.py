"""The first stage of latent diffusion: a KL autoencoder trained by the training loop itself
(``model.name=autoencoder``), with its checkpoints, bitwise resume, SIGTERM stop, metrics and
reconstruction report; and its config's one-line errors."""

import json
import math
import os
import signal

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sde_gen.app.train as train_mod
from helpers import cli_sets, one_error_line
from sde_gen.app.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from sde_gen.app.cli import app
from sde_gen.app.config import ConfigError, load_config
from sde_gen.app.train import train
from sde_gen.latent import KLAutoencoder, autoencoder_loss
from sde_gen.latent.autoencoder import gaussian_kl, gaussian_nll

pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

#: A tiny first stage on the 8x8 digits: f = 2, c = 2, widths 8 and 16.
TINY_AE = ["model.name=autoencoder", "model.factor=2", "model.latent_channels=2", "model.ch=8",
           "model.ch_mult=[1, 2]", "model.num_res_blocks=1", "data.name=digits",
           "train.batch_size=16", "train.device=cpu", "train.log_every=2", "train.sample_n=4",
           "train.warmup=2", "train.lr=0.002"]


def _weights(path):
    state = load_checkpoint(path)
    return state["model"], state["ema"]


def test_resume_is_bitwise_identical(tmp_path):
    common = TINY_AE + ["train.steps=8", "train.ckpt_every=4", "train.keep=5"]
    cfg = load_config(None, common)
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "cut", progress=False)
    checkpoint_path(tmp_path / "cut", 8).unlink()  # the run died after its step-4 checkpoint
    res = train(cfg, tmp_path / "cut", progress=False)
    assert res.step == 8
    (a, ea), (b, eb) = _weights(list_checkpoints(tmp_path / "full")[-1]), _weights(res.checkpoint)
    assert set(a) == set(b) and any(k.startswith("vae.encoder") for k in a)
    assert "log_scale" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert torch.equal(ea[k], eb[k]), k
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(ln) for ln in lines]
    assert [r["step"] for r in recs] == [2, 4, 6, 8]  # no duplicates after the resume
    assert all(math.isfinite(r["nll"]) and r["kl"] >= 0 for r in recs)


def test_sigterm_checkpoints_and_resumes_bitwise(tmp_path, monkeypatch):
    cfg = load_config(None, TINY_AE + ["train.steps=6", "train.ckpt_every=100",
                                       "train.lr_schedule=constant"])
    train(cfg, tmp_path / "full", progress=False)
    lr_at = train_mod.lr_at

    def lr_and_terminate(step, c):  # SIGTERM to ourselves during step 3
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return lr_at(step, c)

    monkeypatch.setattr(train_mod, "lr_at", lr_and_terminate)
    cut = train(cfg, tmp_path / "cut", progress=False)
    assert cut.interrupted and cut.step == 3
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["ckpt_000000003.pt"]
    monkeypatch.setattr(train_mod, "lr_at", lr_at)
    res = train(cfg, tmp_path / "cut", progress=False)
    a, b = _weights(list_checkpoints(tmp_path / "full")[-1])[0], _weights(res.checkpoint)[0]
    assert res.step == 6 and all(torch.equal(a[k], b[k]) for k in a)


def test_loss_is_the_decoder_nll_plus_weighted_kl():
    """autoencoder_loss against the closed forms, written out here: -log N(x; x_hat, s^2) summed
    over pixels, KL of diagonal Gaussians to N(0, I) summed over latents, / D."""
    torch.manual_seed(0)
    ae = KLAutoencoder(in_channels=1, latent_channels=2, factor=2, block_out_channels=(8, 16),
                       layers_per_block=1, image_size=8)
    with torch.no_grad():
        ae.log_scale.fill_(-0.7)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    terms = autoencoder_loss(ae, x, kl_weight=0.25, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    mu, logvar = ae.posterior(x)
    x_hat = ae.decode(mu + torch.exp(0.5 * logvar) * eps)
    s = math.exp(-0.7)
    nll = ((x - x_hat) ** 2 / (2 * s * s) + math.log(s) + 0.5 * math.log(2 * math.pi))
    nll = nll.sum((1, 2, 3))
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum((1, 2, 3))
    torch.testing.assert_close(terms.nll, nll, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms.kl, kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms.loss, (nll + 0.25 * kl) / 64, rtol=1e-5, atol=1e-6)
    # The two helpers are exact at a known point: a perfect mean and the prior itself.
    assert torch.allclose(gaussian_kl(torch.zeros(1, 3), torch.zeros(1, 3)), torch.zeros(1))
    assert gaussian_nll(x, x, torch.tensor(0.0))[0].item() == pytest.approx(
        64 * 0.5 * math.log(2 * math.pi), rel=1e-6)


def test_training_reduces_the_loss_and_eval_reports_psnr(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--workdir", str(tmp_path), "--no-progress",
                              *cli_sets(TINY_AE + ["train.steps=60", "train.log_every=10"])])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "samples.png").is_file()  # images over their reconstructions
    recs = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["loss"] < recs[0]["loss"] - 0.1, (recs[0], recs[-1])
    res = runner.invoke(app, ["eval", "--ckpt", str(tmp_path), "--n", "50", "--device", "cpu",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "eval.json").read_text())
    assert rep["n"] == 50 and rep["split"] == "test"
    # PSNR is 10 log10(1 / MSE) per image: by Jensen (mean of logs <= log of mean) the mean PSNR
    # is at least the PSNR of the mean MSE; and a trained stage beats the blank image.
    assert rep["psnr_db"] >= 10 * math.log10(1 / rep["mse"]) - 1e-9
    assert rep["psnr_db"] > 8 and 0 < rep["vae_bpd"] < 12
    assert "reconstruction PSNR" in res.output
    # It is no score model: the sampling commands refuse it in one line.
    res = runner.invoke(app, ["sample", "--ckpt", str(tmp_path), "--device", "cpu"])
    assert res.exit_code == 2 and "first-stage autoencoder run" in one_error_line(res)


@pytest.mark.parametrize("sets, message", [
    (["model.factor=4"], "needs 3 (f = 2^(levels - 1))"),
    (["model.factor=3"], "model.factor: 3 is not one of 2, 4, 8"),
    (["data.name=8gaussians"], "is 2-D data"),
    (["sde.name=ve"], "sde.name does not apply to model.name=autoencoder"),
    (["model.class_cond=true"], "model.class_cond does not apply"),
    (["model.autoencoder=runs/x"], "model.autoencoder does not apply"),
])
def test_autoencoder_config_errors(sets, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("^", r"\^")):
        load_config(None, TINY_AE + sets)


@pytest.mark.parametrize("sets, message", [
    (["train.kl_weight=0.1"], "train.kl_weight applies only to model.name=autoencoder"),
    (["model.latent_channels=3"], "model.latent_channels applies only"),
    (["model.latent_scaling=data"], "applies only to latent diffusion"),
])
def test_first_stage_keys_on_a_score_model_are_errors(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_image_size_not_divisible_by_the_factor_is_one_line(tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, x_train=np.zeros((8, 12, 12), np.uint8), x_test=np.zeros((2, 12, 12), np.uint8))
    res = CliRunner().invoke(app, ["train", "--workdir", str(tmp_path / "s"), "--no-progress",
                                   *cli_sets(TINY_AE + ["model.factor=8",
                                                        "model.ch_mult=[1, 1, 1, 1]",
                                                        "data.name=npz", f"data.path={data}",
                                                        "train.batch_size=4"])])
    assert "12x12 pixels do not divide by the autoencoder's model.factor=8" in one_error_line(res)
    assert not list_checkpoints(tmp_path / "s")
