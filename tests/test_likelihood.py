"""Likelihood through the probability-flow ODE against closed-form mixture densities."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from helpers import F64, SDES, seeded
from sde_gen import VESDE, VPSDE, GaussianMixture
from sde_gen.app.cli import app
from sde_gen.likelihood import bits_per_dim, decode, encode, log_likelihood, slerp
from sde_gen.scaling import SCALE, dequantize, from_model, model_to_uint8, uint8_to_model
from sde_gen.schedules import scaled_linear_betas


def asymmetric_2d() -> GaussianMixture:
    means = torch.tensor([[1.0, 0.5], [-1.5, -0.3], [0.2, 1.8]])
    covs = torch.tensor([[0.1, 0.3], [0.5, 0.05], [0.2, 0.2]])
    return GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2]))


def anisotropic_8d() -> GaussianMixture:
    g = seeded(5)
    means = 1.5 * torch.randn(3, 8, generator=g, dtype=F64)
    a = torch.randn(3, 8, 8, generator=g, dtype=F64) / 3
    covs = a @ a.transpose(1, 2) + 0.05 * torch.eye(8, dtype=F64)
    return GaussianMixture(means, covs, torch.tensor([0.2, 0.5, 0.3]))


# The registered SDEs, VE with sigma_max 15, and a 100-step chain given by its beta table (a
# diffusers scheduler's): piecewise beta(t).
SDE_CASES = {**SDES, "ve": lambda: VESDE(sigma_max=15.0),
             "vp_table": lambda: VPSDE(schedule="table",
                                       betas=scaled_linear_betas(1e-3, 0.2, 100))}


def reference_logp(gm, sde, x, z, eps):
    """The density the method defines with a perfect score:
    log q_eps(x) + log p_T(z) - log q_T(z)."""
    b = x.shape[0]
    te, tT = torch.full((b,), eps, dtype=F64), torch.full((b,), sde.T, dtype=F64)
    return gm.log_prob_t(x, te, sde) + sde.prior_logp(z) - gm.log_prob_t(z, tT, sde)


@pytest.mark.parametrize("sde_name", list(SDE_CASES))
@pytest.mark.parametrize("problem", ["2d", "8d"])
def test_exact_trace_matches_closed_form(sde_name, problem):
    gm = asymmetric_2d() if problem == "2d" else anisotropic_8d()
    sde = SDE_CASES[sde_name]()
    x = gm.sample(128, generator=seeded(1), dtype=F64)
    eps = 1e-5
    res = log_likelihood(gm.eps_model(sde), sde, x, trace="exact", rtol=1e-5, atol=1e-5, t_min=eps)
    err = (res.logp - reference_logp(gm, sde, x, res.z, eps)).abs().mean().item()
    # Required <= 1e-3 nats/example; measured 1.7e-5 .. 2.8e-4 across SDEs and both problems.
    assert err <= 1e-3, err
    assert err <= 5e-4, err  # our own, tighter bound
    # The prior mismatch log p_T(z) - log q_T(z) is what separates this from log q_0 (reported).
    gap_q0 = (res.logp - gm.log_prob(x)).mean().item()
    print(f"{sde_name} {problem}: MAE {err:.2e}, mean gap to log q0 {gap_q0:.2e}, nfe {res.nfe}")
    assert res.nfe > 0 and res.z.shape == x.shape


def test_wrong_sign_or_time_fails_the_same_bound():
    gm, sde = asymmetric_2d(), VPSDE()
    x = gm.sample(64, generator=seeded(2), dtype=F64)
    exact = gm.eps_model(sde)

    def shifted(x, t):  # off-by-one in the time index
        return exact(x, t + 1.0 / sde.N)

    res = log_likelihood(shifted, sde, x, trace="exact", t_min=1e-5)
    err = (res.logp - reference_logp(gm, sde, x, res.z, 1e-5)).abs().mean().item()
    assert err > 1e-3, err  # measured ~6e-2: a one-step shift is caught


def test_hutchinson_is_unbiased():
    gm, sde = asymmetric_2d(), VPSDE()
    x = gm.sample(16, generator=seeded(3), dtype=F64).repeat(32, 1)
    g = seeded(4)
    for probe in ("rademacher", "gaussian"):
        res = log_likelihood(gm.eps_model(sde), sde, x, trace="hutchinson", probe=probe,
                             n_probes=2, generator=g)
        d = res.logp - reference_logp(gm, sde, x, res.z, 1e-5)
        se = d.std().item() / math.sqrt(d.numel())
        assert abs(d.mean().item()) < 3 * se, (probe, d.mean().item(), se)  # within 3 SE
        assert d.std().item() > 1e-3  # it is a stochastic estimate, not the exact trace


def test_encode_decode_roundtrip_and_no_grad():
    gm = anisotropic_8d()
    for sde in (VPSDE(), VESDE(sigma_max=15.0)):
        x = gm.sample(32, generator=seeded(6), dtype=F64)
        model = gm.eps_model(sde)
        with torch.no_grad():
            z = encode(model, sde, x)
            x_rec = decode(model, sde, z)
            res = log_likelihood(model, sde, x[:4], trace="exact")
        err = (x_rec - x).abs()
        assert err.mean().item() <= 1e-3  # measured 1e-5 (VP), 1.5e-4 (VE, |z| ~ 15)
        assert err.max().item() <= 5e-3  # measured 1.2e-3 worst coordinate (VE)
        assert torch.allclose(res.z, z[:4], rtol=1e-4, atol=1e-3)  # same ODE, other step sizes
        assert torch.isfinite(res.logp).all()


def test_bits_per_dim_of_a_known_discrete_distribution():
    # P over {0..255}^D with independent pixels; the piecewise-constant density of the dequantized
    # data in model units is P(x) 256^D / SCALE^D, so the bound is tight: bpd = -log2 P(x) / D.
    g = seeded(7)
    probs = torch.softmax(torch.randn(256, generator=g, dtype=F64), 0)
    x = torch.multinomial(probs, 3 * 4 * 4 * 5, replacement=True, generator=g).reshape(5, 3, 4, 4)
    log_p = torch.log(probs[x]).sum(dim=(1, 2, 3))
    d = 3 * 4 * 4
    logp_model = log_p + d * math.log(256) - d * math.log(SCALE)
    bpd = bits_per_dim(logp_model, x)  # D from one example of the data itself
    torch.testing.assert_close(bpd, -log_p / (d * math.log(2)), rtol=0, atol=1e-12)
    torch.testing.assert_close(bits_per_dim(logp_model, shape=(3, 4, 4)), bpd, rtol=0, atol=0)
    # The [-1, 1] offset is 7 bits: a model log-density of 0 gives exactly 7 bpd.
    seven = bits_per_dim(torch.zeros(1, dtype=F64), shape=(10,)).item()
    assert seven == pytest.approx(7.0, abs=1e-12)


@pytest.mark.parametrize("args, kw, msg", [
    # Regression: bits_per_dim(logp, x.shape) (the batch shape) silently gave a wrong number.
    ("batch-shape", {}, "must be the data tensor"),
    ("example-shape", {}, "must be the data tensor"),  # the old positional shape is ambiguous
    ("nothing", {}, "exactly one of them"),
    ("both", {"shape": (3, 4, 4)}, "exactly one of them"),
    ("one-example", {}, "the batch"),  # x[0] instead of x: its leading 3 is not B = 5
])
def test_bits_per_dim_rejects_a_shape_for_the_data(args, kw, msg):
    x = torch.zeros(5, 3, 4, 4)
    logp = torch.zeros(5, dtype=F64)
    positional = {"batch-shape": (x.shape,), "example-shape": (x.shape[1:],), "nothing": (),
                  "both": (x,), "one-example": (x[0],)}[args]
    with pytest.raises(ValueError, match=msg):
        bits_per_dim(logp, *positional, **kw)


@pytest.mark.parametrize("fn", ["log_likelihood", "encode", "decode"])
@pytest.mark.parametrize("kw, msg", [
    # Regression: these reached torchdiffeq and stopped with "AssertionError: underflow in dt 0.0".
    ({"t_min": 0.0}, r"t_min \(the data end of the ODE\) must be in \(0, T\)"),
    ({"t_min": -1e-3}, r"must be in \(0, T\)"),
    ({"rtol": 0.0}, "need rtol > 0"),
    ({"atol": 0.0}, "need atol > 0"),
    ({"rtol": 0.0, "atol": 0.0}, "need rtol > 0"),
])
def test_ode_solves_reject_a_zero_end_time_or_tolerance(fn, kw, msg):
    gm, sde = asymmetric_2d(), VPSDE()
    f = {"log_likelihood": log_likelihood, "encode": encode, "decode": decode}[fn]
    with pytest.raises(ValueError, match=msg):
        f(gm.eps_model(sde), sde, torch.zeros(2, 2, dtype=F64), **kw)


def test_dequantize_and_scaler():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 256)
    y = dequantize(x, generator=seeded(0))
    assert (y >= -1).all() and (y < 1).all()
    assert torch.equal(model_to_uint8(uint8_to_model(x)), x)  # scaler round-trip
    assert torch.equal(torch.floor(from_model(y) * 256).to(torch.uint8), x)  # same bin
    with pytest.raises(ValueError, match="uint8"):
        dequantize(x.float())


def test_slerp_endpoints_and_norm():
    g = seeded(8)
    a, b = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    torch.testing.assert_close(slerp(a, b, 0.0), a, atol=1e-5, rtol=0)
    torch.testing.assert_close(slerp(a, b, 1.0), b, atol=1e-5, rtol=0)
    mid = slerp(a, b, 0.5).flatten(1).norm(dim=1)
    lin = (0.5 * (a + b)).flatten(1).norm(dim=1)
    assert (mid > lin).all()  # linear interpolation shrinks the norm, slerp does not


@pytest.mark.parametrize("kw, msg", [({"trace": "x"}, "unknown trace"),
                                     ({"probe": "x"}, "unknown probe"),
                                     ({"n_probes": 0}, "n_probes"), ({"t_min": 2.0}, "t_min")])
def test_bad_arguments(kw, msg):
    gm, sde = asymmetric_2d(), VPSDE()
    with pytest.raises(ValueError, match=msg):
        log_likelihood(gm.eps_model(sde), sde, torch.zeros(2, 2, dtype=F64), **kw)


def test_likelihood_cli_reports_gap(tmp_path):
    runner = CliRunner()
    train = ["train", "--workdir", str(tmp_path), "--no-progress", "--set", "model.width=32",
             "--set", "model.depth=1", "--set", "train.steps=30", "--set", "train.batch_size=64",
             "--set", "train.plot_samples=0", "--set", "train.device=cpu",
             "--set", "train.calibrate_budget=0"]
    assert runner.invoke(app, train).exit_code == 0
    out = tmp_path / "ll.json"
    res = runner.invoke(app, ["likelihood", "--ckpt", str(tmp_path), "--n", "64",
                              "--batch-size", "32", "--rtol", "1e-3", "--atol", "1e-3",
                              "--out", str(out), "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    for key in ("nll_nats", "nll_stderr", "nfe", "true_nll_nats", "kl_gap_nats"):
        assert math.isfinite(rep[key]), key
    assert rep["kl_gap_nats"] == pytest.approx(rep["nll_nats"] - rep["true_nll_nats"], abs=1e-9)
    assert "gap (KL estimate)" in res.output
    bad = runner.invoke(app, ["likelihood", "--ckpt", str(tmp_path), "--trace", "nope"])
    assert bad.exit_code == 2 and "unknown trace" in bad.output
    # Regression: --eps 0 / --rtol 0 ended in torchdiffeq's AssertionError "underflow in dt 0.0".
    for flags, message in ((["--eps", "0"], "must be in (0, T)"),
                           (["--rtol", "0"], "need rtol > 0"), (["--atol", "0"], "need atol > 0")):
        bad = runner.invoke(app, ["likelihood", "--ckpt", str(tmp_path), "--n", "8",
                                  "--no-progress", "--device", "cpu", *flags])
        assert bad.exit_code == 2, bad.output
        assert message in bad.output and "Traceback" not in bad.output
        assert len(bad.output.strip().splitlines()) == 1


def test_likelihood_cli_ode_and_vlb_together(tmp_path):
    runner = CliRunner()
    train = ["train", "--workdir", str(tmp_path), "--no-progress", "--set", "model.width=32",
             "--set", "model.depth=1", "--set", "train.steps=10", "--set", "train.batch_size=64",
             "--set", "train.plot_samples=0", "--set", "train.device=cpu",
             "--set", "train.calibrate_budget=0", "--set", "sde.N=50"]
    assert runner.invoke(app, train).exit_code == 0
    out = tmp_path / "both.json"
    res = runner.invoke(app, ["likelihood", "--ckpt", str(tmp_path), "--method", "both",
                              "--n", "32", "--rtol", "1e-3", "--atol", "1e-3", "--out", str(out),
                              "--no-progress", "--device", "cpu", "--variance", "beta_tilde"])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["vlb_nfe"] == 50 and rep["vlb_variance"] == "beta_tilde"
    parts = rep["vlb_prior"] + rep["vlb_diffusion"] + rep["vlb_decoder"]
    assert rep["vlb_nats"] == pytest.approx(parts)
    assert "ODE: NLL" in res.output and "VLB (beta_tilde)" in res.output
    bad = runner.invoke(app, ["likelihood", "--ckpt", str(tmp_path), "--method", "elbo"])
    assert bad.exit_code == 2 and "unknown method" in bad.output
