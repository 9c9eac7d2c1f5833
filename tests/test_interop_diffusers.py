"""sde_gen.interop.load_diffusers against diffusers itself (offline: a tiny random UNet2DModel).

The reference loops are diffusers' own DDIMScheduler / DDPMScheduler step functions on the same
UNet, x_T and noise; agreement is to float32 round-off (the schedulers' float32 ``alphas_cumprod``
differs from the float64 chain by up to ~3e-7 relative).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from sde_gen.errors import UserInputError
from sde_gen.interop import load_diffusers
from sde_gen.interop.diffusers import sde_from_scheduler_config
from sde_gen.sampling import sample
from sde_gen.sampling.thresholding import clip_x0_model, process_x0

diffusers = pytest.importorskip("diffusers")

N_TRAIN = 100  # a short chain keeps the full DDPM loop fast


def tiny_unet(channels: int = 1, out_channels: int | None = None) -> diffusers.UNet2DModel:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=channels, out_channels=out_channels or channels,
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


def save_pipeline(folder, unet, scheduler) -> None:
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddpm")
    unet = tiny_unet()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=N_TRAIN, beta_end=0.2)
    save_pipeline(folder, unet, scheduler)
    return folder, unet, scheduler


def scheduler_loop(sched, unet, x_T, steps):
    """``sched.step`` over its ``steps`` timesteps on ``unet``; returns ``(x, timesteps)``."""
    sched.set_timesteps(steps)
    x = x_T
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
    return x, sched.timesteps


def ddim_reference(unet, config, x_T, steps, abar=None, **kw):
    """diffusers' DDIM loop; ``abar``: replace its float32 alphas_cumprod (a float64 check)."""
    sched = diffusers.DDIMScheduler.from_config(config, **kw)
    if abar is not None:
        sched.alphas_cumprod, sched.final_alpha_cumprod = abar, torch.tensor(1.0, dtype=abar.dtype)
    return scheduler_loop(sched, unet, x_T, steps)


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_discrete_chain_is_diffusers(beta_schedule):
    sched = diffusers.DDPMScheduler(beta_schedule=beta_schedule, beta_start=1e-4, beta_end=0.02)
    sde = sde_from_scheduler_config(sched.config)
    assert sde.N == 1000
    assert torch.equal(sde._betas64, sched.betas.double())  # the table itself, exactly
    # diffusers' cumprod runs in float32: it agrees to float32 round-off over 1000 steps
    torch.testing.assert_close(sde._alphas_cumprod64, sched.alphas_cumprod.double(),
                               rtol=2e-6, atol=1e-7)
    # the continuous marginal passes through every chain step exactly (float64)
    i = torch.arange(sde.N)
    alpha, sigma = sde.marginal_coeffs(sde.index_to_time(i))
    torch.testing.assert_close(alpha**2, sde._alphas_cumprod64, rtol=1e-13, atol=0)  # exp(log)
    torch.testing.assert_close(sigma**2, 1 - sde._alphas_cumprod64, rtol=1e-12, atol=0)
    assert torch.equal(sde.time_to_index(sde.index_to_time(i)), i)


def test_time_to_timestep_mapping(pipeline):
    folder, _, _ = pipeline
    model, sde = load_diffusers(folder)
    k = torch.arange(N_TRAIN)
    # a chain time is its integer timestep; between steps the timestep is fractional
    assert torch.equal(model.timestep(sde.index_to_time(k)), k.double())
    assert torch.equal(model.timestep(sde.index_to_time(k).float()), k.double())
    mid = (sde.index_to_time(torch.tensor([3])) + sde.index_to_time(torch.tensor([4]))) / 2
    torch.testing.assert_close(model.timestep(mid), torch.tensor([3.5], dtype=torch.float64))
    assert float(model.timestep(torch.tensor([1e-5]))) == 0.0  # below t_0 = T/N: timestep 0
    t = torch.rand(7, dtype=torch.float64)  # the continuous schedule inverts
    torch.testing.assert_close(sde.schedule.inverse_integral(sde.schedule.integral(t)), t)


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_equals_diffusers(pipeline, clip):
    folder, unet, scheduler = pipeline
    model, sde = load_diffusers(folder)
    assert model.sampler_defaults["clip_sample"] == 1.0  # DDPMScheduler's default
    x_T = 3 * torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))  # clips often
    ref, timesteps = ddim_reference(unet, scheduler.config, x_T, 10, clip_sample=clip)
    ts = sde.index_to_time(timesteps)
    opts = {"ts": ts, "discrete": True, "clip_sample": 1.0 if clip else 0.0}
    res = sample(model, sde, None, "ddim", x_T=x_T, **opts)
    # float32: diffusers' float32 alphas_cumprod is off the chain by ~3e-7 relative
    torch.testing.assert_close(res.x, ref, rtol=0, atol=5e-4)
    assert res.nfe == len(timesteps)
    # float64, with diffusers' table replaced by the chain's: the loops agree to round-off
    unet64 = copy.deepcopy(unet).double()
    ref64, _ = ddim_reference(unet64, scheduler.config, x_T.double(), 10,
                              abar=sde._alphas_cumprod64, clip_sample=clip)
    model.unet = unet64
    res64 = sample(model, sde, None, "ddim", x_T=x_T.double(), **opts)
    torch.testing.assert_close(res64.x, ref64, rtol=0, atol=1e-10)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
def test_ancestral_equals_ddpm_scheduler(tmp_path, variance_type):
    """Improved DDPM's learned_range output (2C channels) is our ``variance="learned"``."""
    unet = tiny_unet(out_channels=2 if variance_type == "learned_range" else None)
    sched = diffusers.DDPMScheduler(num_train_timesteps=N_TRAIN, beta_end=0.2,
                                    variance_type=variance_type)
    save_pipeline(tmp_path, unet, sched)
    model, sde = load_diffusers(tmp_path)
    opts = model.sampler_defaults
    assert opts["variance"] == {"fixed_small": "beta_tilde", "fixed_large": "beta",
                                "learned_range": "learned"}[variance_type]
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    sched.set_timesteps(N_TRAIN)
    g, x = torch.Generator().manual_seed(3), x_T
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x, generator=g).prev_sample
    res = sample(model, sde, None, "ancestral", x_T=x_T, generator=torch.Generator().manual_seed(3),
                 discrete=True, **opts)
    assert res.nfe == N_TRAIN
    torch.testing.assert_close(res.x, x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_prediction_types_convert_to_eps(tmp_path, prediction_type):
    unet = tiny_unet()
    sched = diffusers.DDPMScheduler(num_train_timesteps=N_TRAIN, prediction_type=prediction_type)
    save_pipeline(tmp_path, unet, sched)
    model, sde = load_diffusers(tmp_path)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    k = torch.tensor([10, 60])
    with torch.no_grad():
        out, eps = unet(x, k).sample, model(x, sde.index_to_time(k).float())
    abar = sde._alphas_cumprod64[k].float().view(-1, 1, 1, 1)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    want = (a * out + s * x) if prediction_type == "v_prediction" else (x - a * out) / s
    torch.testing.assert_close(eps, want, rtol=1e-5, atol=1e-5)


def test_thresholding_matches_diffusers():
    x0 = 2 * torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    sched = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9,
                                    sample_max_value=1.5)
    ref = sched._threshold_sample(x0.clone())
    torch.testing.assert_close(process_x0(x0, clip_sample=1.5, threshold=0.9), ref)
    assert process_x0(x0, clip_sample=0.5).abs().max() <= 0.5
    assert torch.equal(process_x0(x0), x0)


def test_clip_model_wrapper_clips_x0(pipeline):
    folder, _, _ = pipeline
    model, sde = load_diffusers(folder)
    wrapped = clip_x0_model(model, sde, clip_sample=1.0)
    x = 5 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    t = torch.full((2,), 0.5)
    a, s = (c.view(-1, 1, 1, 1) for c in sde.marginal_coeffs(t))
    assert ((x - s * wrapped(x, t)) / a).abs().max() <= 1 + 1e-5
    res = sample(wrapped, sde, (2, 1, 8, 8), "dpm", steps=5,
                 generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(res.x).all()


def test_unet_folder_with_scheduler_config(tmp_path):
    unet = tiny_unet()
    unet.save_pretrained(tmp_path / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=N_TRAIN, clip_sample=False).save_config(
        tmp_path / "sched")
    model, sde = load_diffusers(tmp_path / "unet", scheduler=tmp_path / "sched")
    assert sde.N == N_TRAIN and "clip_sample" not in model.sampler_defaults
    assert model.image_shape == (1, 8, 8) and model.num_classes is None
    with pytest.raises(UserInputError, match="without a scheduler config") as e:
        load_diffusers(tmp_path / "unet")
    # Regression (issue 30.19): it suggested a scheduler= flag that the CLI does not have.
    assert "scheduler=" not in one_line(e) and "copy the pipeline's scheduler_config.json" in str(
        e.value)


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_bad_input(tmp_path, pipeline):
    folder, _, _ = pipeline
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError) as e:
        load_diffusers(tmp_path / "empty")
    assert "not a diffusers pipeline" in one_line(e)
    with pytest.raises(UserInputError) as e:
        load_diffusers(folder, scheduler={"_class_name": "ScoreSdeVeScheduler"})
    assert "no VP-SDE equivalent" in one_line(e)
    with pytest.raises(UserInputError) as e:
        load_diffusers(folder, scheduler={"_class_name": "DDPMScheduler", "beta_schedule": "exp"})
    assert "no VP equivalent" in one_line(e)
    with pytest.raises(UserInputError) as e:
        load_diffusers(folder, shape=(3, 8, 8))
    assert "1x8x8" in one_line(e)
    with pytest.raises(UserInputError) as e:
        load_diffusers(folder, scheduler={"rescale_betas_zero_snr": True})
    assert "abar_N = 0" in one_line(e)


def test_missing_extra_names_it(pipeline, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_diffusers(name, *args, **kwargs):
        if name == "diffusers" or name.startswith("diffusers."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_diffusers)
    with pytest.raises(UserInputError) as e:
        load_diffusers(pipeline[0])
    assert '.[diffusers]' in one_line(e)


def test_cli_sample_and_likelihood(tmp_path, pipeline):
    from typer.testing import CliRunner

    from sde_gen.app.cli import app

    folder, _, _ = pipeline
    runner = CliRunner()
    for solver in ("ddim", "ancestral", "dpm"):
        out = tmp_path / f"{solver}.png"
        res = runner.invoke(app, ["sample", "--ckpt", str(folder), "--solver", solver,
                                  "--steps", "5", "--n", "4", "--no-progress", "--out", str(out),
                                  "--device", "cpu"])
        assert res.exit_code == 0, res.output
        x = np.load(out.with_suffix(".npz"))["samples"]
        assert x.shape == (4, 1, 8, 8) and np.abs(x).max() <= 1  # clip_sample from the config
    res = runner.invoke(app, ["likelihood", "--ckpt", str(folder), "--method", "both",
                              "--n", "2", "--batch-size", "2", "--rtol", "1e-3", "--atol", "1e-3",
                              "--n-t", "3", "--no-progress", "--device", "cpu",
                              "--out", str(tmp_path / "ll.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "ll.json").read_text())
    assert np.isfinite(report["bpd"]) and np.isfinite(report["vlb_bpd"])


def diffusers_multistep_loop(scheduler_cls, unet, x_T, steps, **config):
    """A diffusers multistep scheduler's loop on ``unet``, down to timestep 0
    (``final_sigmas_type="sigma_min"``: ``steps`` intervals, no final jump to sigma 0)."""
    sched = scheduler_cls(num_train_timesteps=N_TRAIN, beta_end=0.2, final_sigmas_type="sigma_min",
                          **config)
    return scheduler_loop(sched, unet, x_T, steps)


@pytest.mark.parametrize("solver,scheduler,config,options", [
    ("dpm", "DPMSolverMultistepScheduler",
     {"solver_order": 2, "algorithm_type": "dpmsolver++", "lower_order_final": False},
     {"order": 2, "lower_order_final": False}),
    ("unipc", "UniPCMultistepScheduler",
     {"solver_order": 2, "solver_type": "bh2", "lower_order_final": False},
     {"order": 2, "variant": "bh2", "lower_order_final": False}),
])
def test_thresholded_multistep_solvers_equal_diffusers(pipeline, solver, scheduler, config,
                                                       options):
    """dpm and unipc take the x0 options through the model wrapper; with dynamic thresholding
    on, they equal diffusers' DPMSolverMultistep / UniPCMultistep with ``thresholding=True``
    (which threshold the same x0 prediction), and differ from the unthresholded run."""
    folder, unet, _ = pipeline
    model, sde = load_diffusers(folder)
    x_T = 3 * torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    cls = getattr(diffusers, scheduler)
    ref, timesteps = diffusers_multistep_loop(cls, unet, x_T, 12, thresholding=True,
                                              dynamic_thresholding_ratio=0.9,
                                              sample_max_value=1.2, **config)
    ts = sde.index_to_time(torch.cat([timesteps, torch.zeros(1, dtype=timesteps.dtype)]))
    res = sample(model, sde, None, solver, x_T=x_T, ts=ts, denoise=False, threshold=0.9,
                 clip_sample=1.2, **options)
    torch.testing.assert_close(res.x, ref, rtol=0, atol=1e-4)  # measured 9e-6 (float32)
    assert res.nfe == len(timesteps)
    plain = sample(model, sde, None, solver, x_T=x_T, ts=ts, denoise=False, **options)
    assert (plain.x - ref).abs().max() > 1e-2  # the thresholding did something


def test_cli_options_and_notes(tmp_path, pipeline):
    """The config's clip_sample fills in for every x0 solver, a flag overrides it, and a score
    solver says it does not clip."""
    from typer.testing import CliRunner

    from sde_gen.app.cli import app

    folder, _, _ = pipeline
    runner = CliRunner()
    base = ["sample", "--ckpt", str(folder), "--steps", "4", "--n", "4", "--no-progress",
            "--device", "cpu", "--seed", "3"]

    def run(*args):
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}.png"
        res = runner.invoke(app, [*base, *args, "--out", str(out)])
        assert res.exit_code == 0, res.output
        return np.load(out.with_suffix(".npz"))["samples"], res.output

    for solver in ("unipc", "deis", "ipndm", "heun"):
        x, _ = run("--solver", solver)
        assert np.abs(x).max() <= 1 + 1e-6, solver
    x, _ = run("--solver", "dpm", "--clip-sample", "0")  # off: the random UNet leaves [-1, 1]
    assert np.abs(x).max() > 1
    x, _ = run("--solver", "ddim", "--clip-sample", "0.5")
    assert np.abs(x).max() <= 0.5 + 1e-6
    _, output = run("--solver", "ode", "--method", "euler", "--steps", "3")
    assert "does not clip x0" in output
    res = runner.invoke(app, [*base, "--solver", "pc", "--clip-sample", "1"])
    assert res.exit_code == 2 and "--clip-sample does not apply to --solver pc" in res.output


def test_cli_data_option_and_eval(tmp_path, pipeline, monkeypatch):
    from typer.testing import CliRunner

    from sde_gen.app.cli import app

    monkeypatch.setattr("sde_gen.app.sample_quality.CACHE", tmp_path / "cache")
    folder, _, _ = pipeline
    runner = CliRunner()
    ll = ["likelihood", "--ckpt", str(folder), "--method", "vlb", "--n", "2", "--batch-size", "2",
          "--n-t", "2", "--no-progress", "--device", "cpu"]
    # an .npz of 8x8 images in place of the built-in digits
    x = np.random.default_rng(0).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", x_train=x, x_test=x)
    res = runner.invoke(app, [*ll, "--data", str(tmp_path / "mine.npz"),
                              "--out", str(tmp_path / "ll.json")])
    assert res.exit_code == 0, res.output
    assert np.isfinite(json.loads((tmp_path / "ll.json").read_text())["vlb_bpd"])
    np.savez(tmp_path / "big.npz", x_train=np.zeros((2, 9, 9), np.uint8),
             x_test=np.zeros((2, 9, 9), np.uint8))
    for data, message in [(str(tmp_path / "big.npz"), "has 1x9x9 images; the model makes 1x8x8"),
                          ("nowhere", "not a built-in image set")]:
        res = runner.invoke(app, [*ll, "--data", data])
        assert res.exit_code == 2 and message in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["eval", "--ckpt", str(folder), "--n", "8", "--steps", "3",
                              "--n-bpd", "2", "--batch-size", "8", "--classifier-steps", "5",
                              "--no-progress", "--device", "cpu", "--out",
                              str(tmp_path / "eval.json")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "eval.json").read_text())
    assert rep["nfe"] == 4 and np.isfinite(rep["bpd"]) and rep["fd_classifier"] > 0


def test_unknown_shape_needs_data(tmp_path):
    from typer.testing import CliRunner

    from sde_gen.app.cli import app

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=12, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"))
    save_pipeline(tmp_path / "p", unet, diffusers.DDPMScheduler(num_train_timesteps=N_TRAIN))
    res = CliRunner().invoke(app, ["likelihood", "--ckpt", str(tmp_path / "p"), "--device", "cpu"])
    assert res.exit_code == 2 and "1x12x12 images match no built-in dataset" in res.output
    res = CliRunner().invoke(app, ["sample", "--ckpt", str(tmp_path / "p"), "--n", "2",
                                   "--steps", "2", "--no-progress", "--device", "cpu",
                                   "--out", str(tmp_path / "s.png")])
    assert res.exit_code == 0, res.output  # sampling needs no data
    assert np.load(tmp_path / "s.npz")["samples"].shape == (2, 1, 12, 12)


WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def _edit_json(rel: str, **changes):
    def edit(folder):
        config = json.loads((folder / rel).read_text())
        config.update(changes)
        (folder / rel).write_text(json.dumps(config))
    return edit


def _cut(fraction: float):
    def cut(folder):
        data = (folder / WEIGHTS).read_bytes()
        (folder / WEIGHTS).write_bytes(data[:int(len(data) * fraction)])
    return cut


SCHEDULER = "scheduler/scheduler_config.json"
CORRUPT_FOLDERS = {
    "no weights": (lambda f: (f / WEIGHTS).unlink(), "has no UNet weights"),
    "truncated header": (_cut(0.001), "cannot read the UNet weights"),
    "truncated data": (_cut(0.9), "cannot read the UNet weights"),
    "garbage weights": (lambda f: (f / WEIGHTS).write_bytes(b"garbage" * 50),
                        "cannot read the UNet weights"),
    "config wider than weights": (_edit_json("unet/config.json", block_out_channels=[16, 32]),
                                  "do not fit"),
    "config with more layers": (_edit_json("unet/config.json", layers_per_block=2),
                                "do not fit"),
    "config with attention": (_edit_json("unet/config.json", down_block_types=[
        "DownBlock2D", "AttnDownBlock2D"]), "do not fit"),
    "malformed unet config": (_edit_json("unet/config.json", block_out_channels="x"),
                              "cannot load the UNet in"),
    "negative timesteps": (_edit_json(SCHEDULER, num_train_timesteps=-5),
                           "num_train_timesteps must be a positive integer, got -5"),
    "text timesteps": (_edit_json(SCHEDULER, num_train_timesteps="abc"),
                       "num_train_timesteps must be a positive integer"),
    "scheduler config a list": (lambda f: (f / SCHEDULER).write_text("[1, 2]"),
                                "must hold a JSON object"),
    "scheduler config not JSON": (lambda f: (f / SCHEDULER).write_text("{oops"),
                                  "cannot read"),
    "unet config a list": (lambda f: (f / "unet/config.json").write_text("[1]"),
                           "must hold a JSON object"),
    "model index a list": (lambda f: (f / "model_index.json").write_text("[1]"),
                           "must hold a JSON object"),
    "trained_betas text": (_edit_json(SCHEDULER, trained_betas="abc"),
                           "trained_betas must be a non-empty list of numbers, got 'abc'"),
    "trained_betas nested": (_edit_json(SCHEDULER, trained_betas=[[0.1]]),
                             "trained_betas must be a non-empty list of numbers"),
    "beta_start text": (_edit_json(SCHEDULER, beta_start="x"), "beta_start must be a number"),
    "clip range text": (_edit_json(SCHEDULER, clip_sample_range="x"),
                        "clip_sample_range must be a number"),
    "in_channels text": (_edit_json("unet/config.json", in_channels="a"),
                         "in_channels must be a positive integer"),
    "sample_size zero": (_edit_json("unet/config.json", sample_size=0),
                         "sample_size must be one positive integer"),
    "no model_index.json": (lambda f: (f / "model_index.json").unlink(),
                            "looks like a diffusers model folder, but sde-gen loads"),
}


@pytest.mark.parametrize("case", list(CORRUPT_FOLDERS))
def test_corrupt_folder_is_one_line_error(tmp_path, pipeline, case):
    """Regression (issue 30.8, 30.19): tracebacks from diffusers, torch and json, and "no
    checkpoint" for a pipeline folder without model_index.json."""
    import shutil

    from typer.testing import CliRunner

    from helpers import one_error_line
    from sde_gen.app.cli import app

    spoil, message = CORRUPT_FOLDERS[case]
    folder = tmp_path / "p"
    shutil.copytree(pipeline[0], folder)
    spoil(folder)
    for command in (["sample", "--n", "2", "--steps", "2", "--no-progress",
                     "--out", str(tmp_path / "s.png")],
                    ["likelihood", "--n", "2", "--no-progress", "--method", "vlb"]):
        res = CliRunner().invoke(app, [command[0], "--ckpt", str(folder), "--device", "cpu",
                                       *command[1:]])
        assert message in one_error_line(res), case
    assert not (tmp_path / "s.png").exists()


def test_export_of_a_diffusers_folder_says_what_it_is(tmp_path, pipeline):
    from typer.testing import CliRunner

    from helpers import one_error_line
    from sde_gen.app.cli import app

    res = CliRunner().invoke(app, ["export", "--ckpt", str(pipeline[0]), "--out",
                                   str(tmp_path / "m.safetensors")])
    line = one_error_line(res)
    assert "is a diffusers pipeline folder, not an sde-gen run" in line and "no checkpoint" \
        not in line
    assert not (tmp_path / "m.safetensors").exists()
