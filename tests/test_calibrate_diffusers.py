"""Calibration of a diffusers folder (``sde-gen calibrate --ckpt FOLDER``): the grid is learned
in continuous time on the folder's tabulated chain and sampled as fractional timesteps."""

import pytest
import torch
from typer.testing import CliRunner

from sde_gen.app.calibration import FILE, load_calibrations
from sde_gen.app.cli import app
from sde_gen.app.runs import load_run


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_diffusers_folder_is_calibrated_in_continuous_time(tmp_path, monkeypatch):
    """A diffusers DDPM folder: the learned times are fractional timesteps k(t) = t N / T - 1 of
    its tabulated chain (sde_gen.interop.diffusers), sampled as they are, not snapped."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    folder = tmp_path / "ddpm"
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(
        num_train_timesteps=100, beta_end=0.2)).save_pretrained(folder)
    # a random UNet is rough in t: a loose teacher keeps this test to seconds
    monkeypatch.setattr("sde_gen.sampling.optimized_grid.REFERENCE_TOL", 1e-3)
    res = _invoke("calibrate", "--ckpt", folder, "--nfe", 6, "--budget", 4, "--n", 4)
    assert res.exit_code == 0, res.output
    run = load_run(folder)
    cal = load_calibrations(folder / FILE, run.sde, run.model)[6]
    k = run.model.timestep(cal.ts)
    assert bool((k[1:] < k[:-1]).all()) and cal.steps == 5
    res = _invoke("sample", "--ckpt", folder, "--steps", 5, "--n", 4, "--no-progress", "--out",
                  tmp_path / "s.png")
    assert res.exit_code == 0, res.output
    assert "using the calibration for 5 steps" in res.output and "6 NFE" in res.output
    # gradient steps on the tabulated chain (its inverse log-SNR has no gradient: gaps in t)
    from sde_gen.sampling import calibrate

    cal = calibrate(run.model, run.sde, (4, 1, 8, 8), nfe=6, n_val=2, max_iterations=2,
                    budget_s=600)
    assert cal.iterations == 2 and bool((cal.ts[1:] < cal.ts[:-1]).all())
