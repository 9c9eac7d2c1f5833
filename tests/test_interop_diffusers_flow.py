"""diffusers flow-matching folders (sde_gen.interop.diffusers_flow) against diffusers itself,
offline: a tiny random UNet2DModel saved with save_pretrained, sampled by sde-gen and by
diffusers' own scheduler loops from the same x_T on the same sigma grid (shift included).

The reference loops feed the network ``sigma N`` unrounded, as FlowMatchEulerDiscreteScheduler
does; UniPC and DPM-Solver in flow mode hand it ``int64`` timesteps (``floor(sigma N)``), a
rounding of the time input that the loader does not copy (the solvers are what is compared).
"""

from __future__ import annotations

import pytest
import torch

from sde_gen.errors import UserInputError as UserError
from sde_gen.flow_paths import FlowSDE
from sde_gen.interop import load_diffusers
from sde_gen.sampling import sample
from sde_gen.sampling.grids import make_grid

diffusers = pytest.importorskip("diffusers")

torch.set_num_threads(1)
SHIFT = 3.0
F64 = torch.float64


def tiny_unet() -> diffusers.UNet2DModel:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A pipeline folder (model_index.json, unet/, scheduler/) with FlowMatchEuler, shift 3."""
    path = tmp_path_factory.mktemp("flow")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=scheduler).save_pretrained(path)
    return path


def x_start(dtype=torch.float32) -> torch.Tensor:
    return torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(dtype)


def reference_loop(sched, unet, x_T, steps: int, *, stop: int | None = None):
    """diffusers' loop: ``sched.step`` over its timesteps (the first ``stop``), the network fed
    ``sigma N``."""
    sched.set_timesteps(steps)
    x = x_T
    n_train = sched.config.num_train_timesteps
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps[:stop]):
            time_in = (sched.sigmas[i] * n_train).to(x.dtype).expand(x.shape[0])
            x = sched.step(unet(x, time_in).sample, t, x).prev_sample
    return x, sched.sigmas


def test_flow_folder_is_the_flow_path(folder):
    model, sde = load_diffusers(folder)
    assert isinstance(sde, FlowSDE) and sde.N == 1000 and sde.grid_shift == SHIFT
    assert sde.few_step_spacing == "shifted"
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    for steps in (4, 25):  # the last nonzero sigma does not depend on the step count
        sched.set_timesteps(steps)
        assert sde.default_t_min == pytest.approx(float(sched.sigmas[-2]), rel=1e-6)
        grid = make_grid(sde, steps - 1, t_min=sde.default_t_min, spacing="shifted")
        torch.testing.assert_close(grid, sched.sigmas[:-1].double(), rtol=0, atol=2e-7)
    # the network sees timestep = sigma N, and v = eps - x0 (x = (1 - t) x0 + t eps)
    x, t = x_start(), torch.tensor([1.0, 0.5, 0.01])
    eps, x0 = model.predict(x, t)
    with torch.no_grad():
        v = model.unet(x, t * 1000).sample
    torch.testing.assert_close(eps - x0, v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * eps,
                               x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x0[:1], x[:1] - v[:1])  # t = 1: alpha = 0, x0 still finite
    # the run config recorded beside the outputs names the path it samples
    from sde_gen.app.runs import load_diffusers_run

    cfg = load_diffusers_run(folder).cfg
    assert (cfg.sde.name, cfg.sde.shift, cfg.sde.N) == ("flow", SHIFT, 1000)


@pytest.mark.parametrize("steps", [2, 7])
def test_euler_equals_flow_match_scheduler(folder, steps):
    """ddim (eta = 0) on the flow path is Euler in t: x_s = x + (s - t) v. On diffusers' sigmas
    (T = 1 first, shift 3) and with the final denoise as its last step to sigma 0, it is
    FlowMatchEulerDiscreteScheduler's loop, in float32."""
    model, sde = load_diffusers(folder)
    sched = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    ref, sigmas = reference_loop(sched, model.unet, x_start(), steps)
    assert float(sigmas[0]) == 1.0  # a pure-noise start
    ours = sample(model, sde, None, "ddim", x_T=x_start(), ts=sigmas[:-1].double())
    assert ours.nfe == steps
    err = float((ours.x - ref).abs().max())
    assert err < 1e-5, err
    # sde-gen's own shifted grid with the folder's default t_min is the same walk
    own = sample(model, sde, None, "ddim", x_T=x_start(), steps=steps - 1, spacing="shifted")
    assert float((own.x - ref).abs().max()) < 1e-5


def multistep_folder(tmp_path, cls, **config):
    """A UNet2DModel folder with a flow-mode ``cls`` scheduler_config.json beside it."""
    tiny_unet().save_pretrained(tmp_path)
    sched = cls(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT,
                **config)
    sched.save_config(tmp_path)
    return tmp_path, sched


# (diffusers config, sde-gen options, steps): diffusers lowers the order on the last step to
# sigma 0 (which is sde-gen's final denoise) and, below 15 steps, DPM-Solver's to 2 on the one
# before, so sde-gen's lower_order_final (a rule of its own) is off where they coincide.
UNIPC_CASES = [({"solver_order": 2, "solver_type": "bh2"}, {"order": 2, "variant": "bh2"}, 8),
               ({"solver_order": 1}, {"order": 1}, 5)]
DPM_CASES = [({"solver_order": 2}, {"order": 2}, 8), ({"solver_order": 3}, {"order": 3}, 15)]


MULTISTEP_CASES = ([("unipc", "UniPCMultistepScheduler", *c) for c in UNIPC_CASES]
                   + [("dpm", "DPMSolverMultistepScheduler", *c) for c in DPM_CASES])


@pytest.mark.parametrize("solver, scheduler, config, options, steps", MULTISTEP_CASES)
def test_multistep_equals_diffusers_flow_prediction(tmp_path, solver, scheduler, config, options,
                                                    steps):
    """UniPC and DPM-Solver++ in flow_prediction mode on diffusers' own sigmas: diffusers' sigmas,
    alphas and log-SNRs are float32, and its DPM-Solver steps its state in float32."""
    cls = getattr(diffusers, scheduler)
    model, sde = load_diffusers(*multistep_folder(tmp_path, cls, **config)[:1])
    sched = cls.from_pretrained(tmp_path)
    model.double()
    ref, sigmas = reference_loop(sched, model.unet, x_start(F64), steps)
    ours = sample(model, sde, None, solver, x_T=x_start(F64), ts=sigmas[:-1].double(),
                  lower_order_final=False, **options)
    assert ours.nfe == steps
    err = float((ours.x - ref).abs().max())
    assert err < 1e-5, err


def test_unipc_bh1_equals_diffusers_before_its_last_step(tmp_path):
    """diffusers' bh1 returns NaN on its step to sigma 0 (B(h) = h = inf times a zero
    correction): compared at the last nonzero sigma, sde-gen without the final denoise."""
    model, sde = load_diffusers(multistep_folder(tmp_path, diffusers.UniPCMultistepScheduler,
                                                 solver_order=2, solver_type="bh1")[0])
    sched = diffusers.UniPCMultistepScheduler.from_pretrained(tmp_path)
    model.double()
    full, _ = reference_loop(sched, model.unet, x_start(F64), 6)
    assert torch.isnan(full).any()  # diffusers' own final step (a diffusers bug, not ours)
    ref, sigmas = reference_loop(sched, model.unet, x_start(F64), 6, stop=5)
    ours = sample(model, sde, None, "unipc", x_T=x_start(F64), ts=sigmas[:-1].double(),
                  lower_order_final=False, order=2, variant="bh1", denoise=False)
    err = float((ours.x - ref).abs().max())
    assert err < 1e-5, err


def test_unipc_order3_differs_from_diffusers_only_by_its_order_schedule(tmp_path, monkeypatch):
    """diffusers' lower_order_final takes order min(p, n - i) at step i of n, so UniPC-3 runs
    its last interval before sigma 0 at order 2; sde-gen's rule (README) does not. With
    diffusers' schedule patched in, the steps agree."""
    from sde_gen.sampling import unipc

    model, sde = load_diffusers(multistep_folder(tmp_path, diffusers.UniPCMultistepScheduler,
                                                 solver_order=3)[0])
    sched = diffusers.UniPCMultistepScheduler.from_pretrained(tmp_path)
    model.double()
    ref, sigmas = reference_loop(sched, model.unet, x_start(F64), 8)
    ts = sigmas[:-1].double()
    plain = sample(model, sde, None, "unipc", x_T=x_start(F64), ts=ts, order=3)
    assert float((plain.x - ref).abs().max()) > 1e-3  # measured 0.040 (|x| ~ 2.9)
    monkeypatch.setattr(unipc, "_step_orders", lambda k, order, lower_order_final=True:
                        [min(order, i + 1, k + 1 - i) for i in range(k)])
    ours = sample(model, sde, None, "unipc", x_T=x_start(F64), ts=ts, order=3)
    err = float((ours.x - ref).abs().max())
    assert err < 1e-5, err


def one_line(fn) -> str:
    with pytest.raises(UserError) as e:
        fn()
    message = str(e.value)
    assert "\n" not in message and message
    return message


FLOW_EULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}
UNIPC_FLOW = {"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction",
              "use_flow_sigmas": True, "flow_shift": 3.0}


@pytest.mark.parametrize("config, named", [
    ({**FLOW_EULER, "use_dynamic_shifting": True}, "use_dynamic_shifting"),
    ({**FLOW_EULER, "shift_terminal": 0.1}, "shift_terminal"),
    ({**FLOW_EULER, "use_karras_sigmas": True}, "use_karras_sigmas"),
    ({**FLOW_EULER, "invert_sigmas": True}, "invert_sigmas"),
    ({**FLOW_EULER, "stochastic_sampling": True}, "stochastic_sampling"),
    ({**FLOW_EULER, "shift": -1.0}, "shift"),
    ({**UNIPC_FLOW, "use_flow_sigmas": False}, "use_flow_sigmas"),
    ({**UNIPC_FLOW, "prediction_type": "epsilon"}, "flow_prediction"),
    ({**UNIPC_FLOW, "use_dynamic_shifting": True}, "use_dynamic_shifting"),
    ({**UNIPC_FLOW, "disable_corrector": [0]}, "disable_corrector"),
    ({**UNIPC_FLOW, "final_sigmas_type": "sigma_min"}, "final_sigmas_type"),
    ({**UNIPC_FLOW, "_class_name": "DPMSolverMultistepScheduler",
      "algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
    ({**UNIPC_FLOW, "_class_name": "DPMSolverMultistepScheduler", "solver_type": "heun"},
     "solver_type"),
])
def test_options_that_cannot_be_honoured_are_refused(folder, config, named):
    message = one_line(lambda: load_diffusers(folder, scheduler=config))
    assert named in message, message


def test_cli_samples_a_flow_folder(tmp_path, folder):
    """--ckpt FOLDER goes through load_diffusers: the samples are the API's (ddim on the
    folder's shifted grid); a dynamic-shift folder is one line, exit code 2."""
    import json

    import numpy as np
    from typer.testing import CliRunner

    from sde_gen.app.cli import app
    from sde_gen.noise import IndexedGenerator

    out = tmp_path / "s.png"
    res = CliRunner().invoke(app, ["sample", "--ckpt", str(folder), "--solver", "ddim",
                                   "--steps", "3", "--spacing", "shifted", "--n", "2",
                                   "--no-progress", "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    model, sde = load_diffusers(folder)
    api = sample(model, sde, (2, 1, 8, 8), "ddim", steps=3, spacing="shifted",
                 generator=IndexedGenerator(0, 0, 2))
    np.testing.assert_allclose(np.load(out.with_suffix(".npz"))["samples"], api.x.numpy(),
                               atol=1e-5)
    config = folder / "scheduler" / "scheduler_config.json"
    saved = config.read_text()
    try:
        config.write_text(json.dumps({**json.loads(saved), "use_dynamic_shifting": True}))
        res = CliRunner().invoke(app, ["sample", "--ckpt", str(folder), "--n", "2",
                                       "--no-progress", "--device", "cpu"])
    finally:
        config.write_text(saved)
    assert res.exit_code == 2 and "use_dynamic_shifting" in res.output, res.output
