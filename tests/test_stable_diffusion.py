"""Stable Diffusion folders (issue 27) against diffusers' own StableDiffusionPipeline, offline, on
a tiny random pipeline built here (tests/sd_pipeline.py): the same latents ``x_T`` (diffusers'
``latents=``), the same timesteps, with and without classifier-free guidance, for epsilon and
v_prediction UNets. Agreement is to float32 round-off (measured <= 3e-5 on latents of size ~30:
diffusers' float32 alphas_cumprod against the float64 chain)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from helpers import user_error
from sd_pipeline import PROMPT, tiny_pipeline
from sde_gen.interop.stable_diffusion import load_stable_diffusion
from sde_gen.sampling import sample

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

ATOL = 1e-4  # float32 round-off on latents of size 3..30 (measured 2e-6 .. 3e-5)


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def folder(request, tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("sd") / "pipe", prediction_type=request.param)


@pytest.fixture(scope="module")
def loaded(folder):
    sd = load_stable_diffusion(folder)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return sd, pipe


def x_T(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def diffusers_run(pipe, steps, guidance_scale, latents, **kw):
    """The pipeline's latents (``output_type="latent"``) and the timesteps it used."""
    out = pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance_scale,
               latents=latents, num_images_per_prompt=latents.shape[0], **kw)
    return out.images, pipe.scheduler.timesteps


def chain_times(sd, timesteps):
    """diffusers' timesteps and the final timestep 0 as sde-gen chain times."""
    return sd.sde.index_to_time(torch.cat([timesteps, torch.zeros(1, dtype=timesteps.dtype)]))


@pytest.mark.parametrize("guidance_scale", [1.0, 4.5])
def test_ddim_equals_the_pipeline(loaded, guidance_scale):
    """DDIMScheduler with SD's config (set_alpha_to_one=False: the last step lands on
    alphas_cumprod[0], the chain time of timestep 0); diffusers' guidance_scale g is w = g - 1."""
    sd, pipe = loaded
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    latents = x_T()
    ref, timesteps = diffusers_run(pipe, 10, guidance_scale, latents, output_type="latent")
    model = sd.guided(PROMPT, guidance=guidance_scale - 1)
    res = sample(model, sd.sde, None, "ddim", x_T=latents, ts=chain_times(sd, timesteps),
                 discrete=True, denoise=False)
    assert res.nfe == len(timesteps) == 10
    torch.testing.assert_close(res.x, ref, rtol=0, atol=ATOL)
    assert ref.abs().max() > 1  # not a trivially small output


@pytest.mark.parametrize("solver,scheduler,config,options", [
    ("dpm", "DPMSolverMultistepScheduler",
     {"solver_order": 2, "algorithm_type": "dpmsolver++", "lower_order_final": False},
     {"order": 2, "lower_order_final": False}),
    ("unipc", "UniPCMultistepScheduler",
     {"solver_order": 2, "solver_type": "bh2", "lower_order_final": True},
     {"order": 2, "variant": "bh2", "lower_order_final": True}),
])
@pytest.mark.parametrize("guidance_scale", [1.0, 4.5])
def test_multistep_solvers_equal_the_pipeline(loaded, solver, scheduler, config, options,
                                              guidance_scale):
    """DPM-Solver++(2M) and UniPC-bh2 down to timestep 0 (final_sigmas_type="sigma_min")."""
    sd, pipe = loaded
    pipe.scheduler = getattr(diffusers, scheduler).from_config(
        pipe.scheduler.config, final_sigmas_type="sigma_min", **config)
    latents = x_T(2)
    ref, timesteps = diffusers_run(pipe, 8, guidance_scale, latents, output_type="latent")
    model = sd.guided(PROMPT, guidance=guidance_scale - 1)
    res = sample(model, sd.sde, None, solver, x_T=latents, ts=chain_times(sd, timesteps),
                 denoise=False, **options)
    assert res.nfe == len(timesteps) == 8
    torch.testing.assert_close(res.x, ref, rtol=0, atol=ATOL)


def test_decoded_images_and_negative_prompt_equal_the_pipeline(loaded):
    """output_type="np": the VAE decodes latents / scaling_factor; the negative prompt replaces
    the empty one in the guided pair."""
    sd, pipe = loaded
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    latents = x_T(3)
    ref, timesteps = diffusers_run(pipe, 5, 3.0, latents, output_type="np",
                                   negative_prompt="dog")
    model = sd.guided(PROMPT, negative_prompt="dog", guidance=2.0)
    res = sample(model, sd.sde, None, "ddim", x_T=latents, ts=chain_times(sd, timesteps),
                 discrete=True, denoise=False)
    images = sd.codec().decode(res.x)  # [-1, 1]
    ours = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    assert sd.codec().scaling_factor == pipe.vae.config.scaling_factor
    plain = sample(sd.guided(PROMPT, guidance=2.0), sd.sde, None, "ddim", x_T=latents,
                   ts=chain_times(sd, timesteps), discrete=True, denoise=False)
    assert (plain.x - res.x).abs().max() > 1e-3  # the negative prompt changed something


def test_prompts_are_encoded_once_and_guidance_is_one_batched_call(loaded):
    sd, _ = loaded
    calls = {"text": 0, "unet": []}
    hooks = [sd.text_encoder.register_forward_hook(
                 lambda m, a, o: calls.__setitem__("text", calls["text"] + 1)),
             sd.model.unet.register_forward_hook(
                 lambda m, a, o: calls["unet"].append(a[0].shape[0]))]
    try:
        model = sd.guided(PROMPT, guidance=2.0)
        res = sample(model, sd.sde, (3, *sd.latent_shape()), "dpm", steps=4,
                     generator=torch.Generator().manual_seed(0))
        unguided = sd.guided(PROMPT, guidance=0.0)
        sample(unguided, sd.sde, (3, *sd.latent_shape()), "ddim", steps=2,
               generator=torch.Generator().manual_seed(0))
    finally:
        for h in hooks:
            h.remove()
    assert calls["text"] == 4  # prompt and negative, twice (two guided() calls), never per step
    assert calls["unet"] == [6] * res.nfe + [3] * (len(calls["unet"]) - res.nfe)
    assert len(calls["unet"]) > res.nfe


def test_bad_folders_and_inputs_are_one_line_errors(folder, tmp_path):
    broken = tmp_path / "no_tokenizer"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "tokenizer")
    assert "missing the tokenizer/ component" in user_error(lambda: load_stable_diffusion(broken))
    index = (broken / "model_index.json").read_text()
    (broken / "model_index.json").write_text(
        index.replace('"unet"', '"text_encoder_2": ["transformers", "CLIPTextModel"], "unet"'))
    assert "SDXL" in user_error(lambda: load_stable_diffusion(broken))
    sd = load_stable_diffusion(folder)
    assert sd.multiple == 4 and sd.default_size == 16  # VAE factor 2 x UNet downsampling 2
    assert "multiple of 4" in user_error(lambda: sd.latent_shape(18, 16))
    assert sd.latent_shape(24, 32) == (4, 12, 16)
    assert "finite" in user_error(lambda: sd.guided(PROMPT, guidance=float("nan")))
    assert "finite" in user_error(lambda: sd.guided(PROMPT, guidance=-1.0))


@pytest.mark.parametrize("solver", ["ddim", "ode", "dpm", "heun", "unipc", "ipndm", "deis"])
def test_every_deterministic_solver_runs_the_guided_folder(loaded, solver):
    """Each deterministic solver samples the guided prompt model: finite latents, and the same
    latents again from the same x_T (no hidden randomness)."""
    sd, _ = loaded
    model = sd.guided(PROMPT, guidance=2.0)
    opts = {"method": "euler"} if solver == "ode" else {}
    runs = [sample(model, sd.sde, None, solver, x_T=x_T(4), steps=3, **opts) for _ in range(2)]
    assert runs[0].x.shape == (2, 4, 8, 8) and torch.isfinite(runs[0].x).all()
    assert torch.equal(runs[0].x, runs[1].x) and runs[0].nfe >= 3
