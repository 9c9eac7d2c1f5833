"""Image runs end to end on the offline digits dataset: train, resume, sample, likelihood, eval."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from helpers import TINY_UNET, cli_sets
from sde_gen.app.checkpoint import list_checkpoints, load_checkpoint
from sde_gen.app.cli import app
from sde_gen.app.config import load_config
from sde_gen.app.train import train

pytest.importorskip("sklearn")

# The shared tiny U-Net with 16 channels and self-attention at 4x4, on the digits.
TINY = [*TINY_UNET, "data.name=digits", "model.ch=16", "model.attn_resolutions=[4]",
        "train.batch_size=16", "train.log_every=5", "train.sample_n=4"]


def test_digits_resume_is_bitwise_identical(tmp_path):
    common = TINY + ["train.ckpt_every=6", "train.keep=5", "data.flip=true"]
    train(load_config(None, common + ["train.steps=12"]), tmp_path / "full", progress=False)
    train(load_config(None, common + ["train.steps=6"]), tmp_path / "cut", progress=False)
    res = train(load_config(None, common + ["train.steps=12"]), tmp_path / "cut", progress=False)
    a = load_checkpoint(list_checkpoints(tmp_path / "full")[-1])["model"]
    b = load_checkpoint(res.checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_image_run_through_the_cli(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--workdir", str(tmp_path), "--no-progress",
                              *cli_sets(TINY + ["train.steps=10", "train.sample_every=5"])])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "samples" / "step_000000005.png").is_file()
    assert (tmp_path / "samples.png").is_file()
    rec = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["img_s"] == pytest.approx(rec["it_s"] * 16)

    out = tmp_path / "grid.png"
    res = runner.invoke(app, ["sample", "--ckpt", str(tmp_path), "--solver", "ddim", "--steps", "3",
                              "--n", "6", "--out", str(out), "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    npz = np.load(out.with_suffix(".npz"))
    assert npz["images"].shape == (6, 1, 8, 8) and npz["images"].dtype == np.uint8

    ll = tmp_path / "ll.json"
    res = runner.invoke(app, ["likelihood", "--ckpt", str(tmp_path), "--n", "4",
                              "--batch-size", "4", "--rtol", "1e-2", "--atol", "1e-2",
                              "--out", str(ll), "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    rep = json.loads(ll.read_text())
    assert rep["trace"] == "hutchinson" and np.isfinite(rep["bpd"]) and rep["n"] == 4
    assert "bits/dim" in res.output


def test_eval_reports_fd_classifier_and_bpd(tmp_path, monkeypatch):
    monkeypatch.setattr("sde_gen.app.sample_quality.CACHE", tmp_path / "cache")
    runner = CliRunner()
    assert runner.invoke(app, ["train", "--workdir", str(tmp_path), "--no-progress",
                               *cli_sets(TINY + ["train.steps=2"])]).exit_code == 0
    res = runner.invoke(app, ["eval", "--ckpt", str(tmp_path), "--n", "40", "--steps", "2",
                              "--n-bpd", "2", "--batch-size", "20", "--classifier-steps", "30",
                              "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "eval.json").read_text())
    assert rep["fd_classifier"] > 0 and np.isfinite(rep["bpd"])
    assert "FD-classifier (not FID)" in res.output
    assert rep["fid"] is not None or "FID skipped" in rep["fid_note"]
    assert list((tmp_path / "cache").glob("digits_*.pt"))  # the classifier is cached


def test_model_data_mismatch_is_one_line_error(tmp_path):
    res = CliRunner().invoke(app, ["train", "--workdir", str(tmp_path),
                                   "--set", "data.name=digits"])
    assert res.exit_code == 2 and "does not fit data.name=digits" in res.output


def test_missing_dataset_is_one_line_error(tmp_path):
    res = CliRunner().invoke(app, ["train", "--workdir", str(tmp_path), "--set", "data.name=mnist",
                                   "--set", "model.name=unet", "--set", f"data.root={tmp_path}"])
    assert res.exit_code == 2, res.output
    assert "mnist not found" in res.output and "Traceback" not in res.output
