"""Training on the flow paths: the flow-matching loss (exact identity with the weighted eps-DSM,
closed-form irreducible loss), SD3's logit-normal times and shift, the path-aware config, and
tiny CLI runs that train on flow / trig and sample the checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from typer.testing import CliRunner

from helpers import F64, TINY_MLP, TINY_UNET, cli_sets, mixture, one_error_line, seeded, user_error
from sde_gen.analytic import GaussianMixture
from sde_gen.app.cli import app
from sde_gen.app.config import load_config
from sde_gen.flow_paths import FlowSDE, TrigFlowSDE
from sde_gen.losses import dsm_loss, sample_time, weight_velocity
from sde_gen.nets.mlp import MLP
from sde_gen.parameterization import ScoreModel
from sde_gen.sde import VPSDE
from sde_gen.tensor_utils import append_dims
from sde_gen.time_sampling import TimeSampler

PATHS = {"flow": FlowSDE, "trig": TrigFlowSDE, "vp": VPSDE}


def _random_model(sde, prediction: str) -> ScoreModel:
    torch.manual_seed(0)
    net = MLP(2, width=32, depth=2, emb_dim=16).double()
    for p in net.parameters():  # the output layer starts at zero: make the network non-trivial
        torch.nn.init.normal_(p, std=0.3)
    return ScoreModel(net, sde, prediction=prediction, noise_cond="t")


# -- the loss ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("prediction", ["velocity", "edm", "eps"])
def test_velocity_loss_is_the_weighted_eps_dsm_per_example(path, prediction):
    """||v_theta - v||^2 == ((alpha sigma' - alpha' sigma)/alpha)^2 ||eps_theta - eps||^2, per
    example, on a random network (the same draws: the same generator seed)."""
    sde = PATHS[path]()
    model = _random_model(sde, prediction)
    x0 = mixture().sample(256, generator=seeded(1)).to(F64)
    with torch.no_grad():
        fm = dsm_loss(model, sde, x0, weighting="velocity", t_eps=1e-3, generator=seeded(2))
        eps_mse = dsm_loss(model, sde, x0, weighting="simple", t_eps=1e-3, generator=seeded(2))
    t = sample_time(sde, 256, t_eps=1e-3, generator=seeded(2), dtype=F64)[0]
    w = weight_velocity(sde, t)
    if path == "flow":
        torch.testing.assert_close(w, 1 / (1 - t) ** 2, rtol=1e-12, atol=0)
    assert eps_mse.std() > 0.05  # a real error, not a trivial zero
    torch.testing.assert_close(fm, w * eps_mse, rtol=1e-8, atol=1e-10)  # float64 round-off


def test_velocity_loss_is_the_published_flow_matching_loss():
    """On the flow path with a velocity-predicting network the loss is the raw output's MSE to
    eps - x0 ([Lipman23] Eq. (23), [Liu23] Eq. (1)), written here by hand."""
    sde = FlowSDE()
    model = _random_model(sde, "velocity")
    x0 = mixture().sample(128, generator=seeded(4)).to(F64)
    with torch.no_grad():
        loss = dsm_loss(model, sde, x0, weighting="velocity", time_sampling="logit_normal",
                        generator=seeded(5))
        g = seeded(5)
        t = TimeSampler("logit_normal").sample(sde, 128, generator=g, dtype=F64)[0]
        z = torch.randn(x0.shape, generator=g, dtype=F64)
        x_t = append_dims(1 - t, 2) * x0 + append_dims(t, 2) * z
        c_in = torch.rsqrt((1 - t) ** 2 + t**2)  # s_d = 1
        v_theta = model.net(x_t * append_dims(c_in, 2), t)
    torch.testing.assert_close(loss, ((v_theta - (z - x0)) ** 2).mean(1), rtol=1e-10, atol=1e-12)


@dataclass(frozen=True)
class _FixedTime(TimeSampler):
    """Every training time at ``t`` (a test double)."""

    t: float = 0.5

    def sample(self, sde, batch, *, t_eps=1e-5, generator=None, device=None, dtype=F64):
        torch.rand(batch, generator=generator, dtype=F64)  # keep the draws' order
        t = torch.full((batch,), self.t, dtype=F64)
        return t.to(dtype), torch.ones(batch, dtype=dtype)


@pytest.mark.parametrize("t", [0.05, 0.5, 0.9, 1 - 1e-6, 1.0])
def test_irreducible_flow_matching_loss_matches_the_closed_form(t):
    """Data N(0, s^2 I) with the exact model: E||v* - v||^2 per dimension is the posterior variance
    of v, (alpha' sigma - sigma' alpha)^2 s^2 / (alpha^2 s^2 + sigma^2) = s^2 / ((1-t)^2 s^2 +
    t^2) on flow; finite up to T (times are kept below T, where it tends to s^2)."""
    s, n = 0.5, 40_000
    sde = FlowSDE()
    gauss = GaussianMixture.gaussian(torch.zeros(2, dtype=F64), s**2 * torch.eye(2, dtype=F64))
    x0 = gauss.sample(n, generator=seeded(6)).to(F64)
    loss = dsm_loss(gauss.eps_model(sde), sde, x0, weighting="velocity",
                    time_sampling=_FixedTime(t=t), generator=seeded(7))
    assert torch.isfinite(loss).all()
    exact = s**2 / ((1 - t) ** 2 * s**2 + t**2)
    se = loss.std().item() / math.sqrt(n)
    assert abs(loss.mean().item() - exact) < 4 * se, (loss.mean().item(), exact, se)


def test_irreducible_loss_averaged_over_uniform_times():
    """Unit-variance Gaussian data, uniform t on [0, 1]: the mean irreducible loss is
    int_0^1 dt / ((1-t)^2 + t^2) = pi/2 on flow, and (pi/2)^2 at every t on the trig path; the
    exact mixture oracle is below a perturbed one."""
    n = 40_000
    gauss = GaussianMixture.gaussian(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    x0 = gauss.sample(n, generator=seeded(8)).to(F64)
    for sde, exact in ((FlowSDE(), math.pi / 2), (TrigFlowSDE(), math.pi**2 / 4)):
        loss = dsm_loss(gauss.eps_model(sde), sde, x0, weighting="velocity", t_eps=0.0,
                        generator=seeded(9))
        se = loss.std().item() / math.sqrt(n)
        assert abs(loss.mean().item() - exact) < 4 * se, (loss.mean().item(), exact, se)
    sde, mix = FlowSDE(), mixture()
    x0 = mix.sample(4000, generator=seeded(10)).to(F64)
    exact = mix.eps_model(sde)

    def perturbed(x, t):
        return exact(x, t) + 0.05

    best = dsm_loss(exact, sde, x0, weighting="velocity", generator=seeded(11)).mean()
    worse = dsm_loss(perturbed, sde, x0, weighting="velocity", generator=seeded(11)).mean()
    assert best < worse


def test_training_times_stay_below_T_on_a_pure_noise_path():
    """A draw at T is rounded to the largest float below T in the training dtype, so the eps-MSE
    weightings, infinite at T, stay finite; VP's times are left as they are."""
    t = sample_time(FlowSDE(), 64, time_sampling=_FixedTime(t=1.0), dtype=torch.float32)[0]
    assert (t < 1).all() and (t == torch.nextafter(torch.tensor(1.0), torch.tensor(0.0))).all()
    sde = FlowSDE()
    model = _random_model(sde, "edm").float()
    x0 = torch.randn(64, 2, generator=seeded(12))
    for weighting in ("edm", "likelihood", "velocity"):
        loss = dsm_loss(model, sde, x0, weighting=weighting, time_sampling=_FixedTime(t=1.0))
        assert torch.isfinite(loss).all(), weighting
    assert (sample_time(VPSDE(), 8, time_sampling=_FixedTime(t=1.0))[0] == 1).all()


# -- time sampling -------------------------------------------------------------------------------
SAMPLERS = [TimeSampler("logit_normal"),
            TimeSampler("logit_normal", logit_mean=0.5, logit_std=0.7, shift=3.0),
            TimeSampler("uniform", shift=3.0), TimeSampler("uniform", shift=0.5),
            TimeSampler("lognormal")]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: f"{s.name}-shift{s.shift}")
@pytest.mark.parametrize("path", ["flow", "vp"])
def test_time_density_integrates_to_one_and_matches_the_draws(sampler, path):
    sde, t_eps, n = PATHS[path](), 1e-3, 200_000
    grid = torch.linspace(t_eps, sde.T, 400_001, dtype=F64)
    p = sampler.density(sde, grid, t_eps=t_eps)
    assert torch.isfinite(p).all() and (p >= 0).all()
    assert abs(torch.trapezoid(p, grid).item() - 1) < 1e-6
    t = sampler.sample(sde, n, t_eps=t_eps, generator=seeded(13), dtype=F64)[0]
    assert t.min() >= t_eps and t.max() <= sde.T
    for k in (1, 2):  # moments of the draws against the density's, within 4 standard errors
        exact = torch.trapezoid(p * grid**k, grid).item()
        se = (t**k).std().item() / math.sqrt(n)
        assert abs((t**k).mean().item() - exact) < 4 * se, (k, (t**k).mean().item(), exact)
    edges = torch.linspace(t_eps, sde.T, 21, dtype=F64)  # histogram: mass of 20 bins
    counts = torch.histc(t, bins=20, min=t_eps, max=sde.T)
    for i in range(20):
        inside = (grid >= edges[i]) & (grid <= edges[i + 1])
        mass = torch.trapezoid(p[inside], grid[inside]).item()
        se = math.sqrt(mass * (1 - mass) / n)
        assert abs(counts[i].item() / n - mass) < 4 * se + 1e-4, (i, counts[i].item() / n, mass)


def test_logit_normal_is_sd3s_and_a_shift_moves_its_mean_by_log_shift():
    """t = sigmoid(m + s n) untruncated at t_eps = 0; the shifted logit-normal equals the
    logit-normal with mean m + ln(shift), draw for draw."""
    sde = FlowSDE()
    t = TimeSampler("logit_normal", logit_mean=0.3, logit_std=0.8).sample(
        sde, 100_000, t_eps=0.0, generator=seeded(14), dtype=F64)[0]
    ell = torch.log(t) - torch.log1p(-t)
    assert abs(ell.mean().item() - 0.3) < 4 * 0.8 / math.sqrt(1e5)
    assert abs(ell.std().item() - 0.8) < 0.01
    a = TimeSampler("logit_normal", shift=3.0).sample(sde, 1000, generator=seeded(15), dtype=F64)
    b = TimeSampler("logit_normal", logit_mean=math.log(3.0)).sample(sde, 1000,
                                                                     generator=seeded(15),
                                                                     dtype=F64)
    torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-14)
    x = torch.rand(1000, generator=seeded(16), dtype=F64)  # and the map is SD3's
    shifted = 3.0 * x / (1 + 2.0 * x)
    torch.testing.assert_close(torch.log(shifted / (1 - shifted)),
                               torch.log(x / (1 - x)) + math.log(3.0))


def test_edm_lognormal_on_flow_is_a_logit_normal():
    """sigma/alpha = t/(1 - t) on flow, so ln(sigma/alpha) ~ N(P_mean, P_std^2) is logit(t) ~
    N(m = P_mean, s = P_std): two independent density formulas agree."""
    sde, t = FlowSDE(), torch.linspace(1e-3, 1, 1001, dtype=F64)
    lognormal = TimeSampler("lognormal", p_mean=-1.0, p_std=1.6).density(sde, t, t_eps=1e-3)
    logit = TimeSampler("logit_normal", logit_mean=-1.0, logit_std=1.6).density(sde, t,
                                                                                 t_eps=1e-3)
    torch.testing.assert_close(lognormal, logit, rtol=1e-9, atol=1e-12)


def test_importance_sampling_is_refused_on_the_flow_paths():
    for sde in (FlowSDE(), TrigFlowSDE()):
        msg = user_error(lambda: TimeSampler("importance").sample(sde, 4))
        assert "not normalizable" in msg and "alpha_T = 0" in msg
    msg = user_error(lambda: TimeSampler("lognormal", shift=2.0))
    assert "shift" in msg


# -- config and CLI ------------------------------------------------------------------------------
def test_noise_cond_auto_resolves_per_path():
    assert load_config(None).model.noise_cond == "logsnr"
    assert load_config(None, ["sde.name=flow"]).model.noise_cond == "t"
    assert load_config(None, ["sde.name=trig"]).model.noise_cond == "t"
    assert load_config("configs/digits_vp.yaml", ["sde.name=flow"]).model.noise_cond == "t"
    assert load_config(None, ["sde.name=ve", "model.noise_cond=t"]).model.noise_cond == "t"


@pytest.mark.parametrize("sets, names", [
    (["model.noise_cond=logsnr"], "model.noise_cond=logsnr"),
    (["model.prediction=eps"], "model.prediction=eps"),
    (["model.learn_variance=true", "train.discrete=true", "train.time_sampling=uniform",
      "train.weighting=simple"], "model.learn_variance=true"),
    (["train.discrete=true", "train.time_sampling=uniform"], "train.discrete=true"),
    (["train.time_sampling=importance"], "train.time_sampling=importance"),
    (["sde.beta_max=10"], "sde.beta_max=10"),
])
def test_vp_only_options_on_flow_are_one_line_errors_before_training(tmp_path, sets, names):
    res = CliRunner().invoke(app, ["train", "--sde", "flow", "--workdir", str(tmp_path / "run"),
                                   *cli_sets(sets)])
    assert names in one_error_line(res)
    assert not (tmp_path / "run").exists()  # refused when the config was checked


def _train(workdir, *args):
    res = CliRunner().invoke(app, ["train", "--workdir", str(workdir), "--no-progress", *args])
    assert res.exit_code == 0, res.output
    return res


def _sample(workdir, tmp_path, *args):
    out = tmp_path / f"{workdir.name}.png"
    res = CliRunner().invoke(app, ["sample", "--ckpt", str(workdir), "--n", "16", "--out",
                                   str(out), *args])
    assert res.exit_code == 0, res.output
    assert out.is_file() and out.with_suffix(".npz").is_file()


@pytest.mark.parametrize("sde", ["flow", "trig"])
def test_train_default_recipe_on_a_flow_path_and_sample_it(tmp_path, sde):
    run = tmp_path / sde
    _train(run, "--sde", sde, *cli_sets(TINY_MLP + ["train.steps=4"]))
    assert load_config(run / "config.yaml").model.noise_cond == "t"
    _sample(run, tmp_path, "--solver", "ipndm", "--steps", "5")


def test_train_the_flow_matching_config_and_sample_it(tmp_path):
    run = tmp_path / "fm"
    _train(run, "--config", "configs/flow_toy2d.yaml", *cli_sets(TINY_MLP + ["train.steps=4"]))
    cfg = load_config(run / "config.yaml")
    assert (cfg.sde.name, cfg.model.prediction, cfg.train.weighting, cfg.train.time_sampling) == (
        "flow", "velocity", "velocity", "logit_normal")
    _sample(run, tmp_path, "--solver", "ddim", "--steps", "5")


def test_train_images_on_the_flow_path_and_sample_them(tmp_path):
    pytest.importorskip("sklearn")
    run = tmp_path / "digits"
    tiny = [*TINY_UNET, "train.batch_size=8", "train.steps=2", "train.sample_n=4",
            "train.sample_every=0", "train.weighting=velocity",
            "train.time_sampling=logit_normal", "train.time_shift=2"]
    _train(run, "--config", "configs/digits_vp.yaml", "--sde", "flow", *cli_sets(tiny))
    assert (run / "samples.png").is_file()
    _sample(run, tmp_path, "--solver", "ipndm", "--steps", "3")
