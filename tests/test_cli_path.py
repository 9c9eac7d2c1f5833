"""``sde-gen sample --path NAME``: a checkpoint's model moved to another path
(sde_gen.path_transfer.on_path), against the API on the same draws, and against the trained
path's own probability-flow solve (both directions: VP -> flow starts below the flow path's T,
flow -> VP from the VP prior at T)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli_runs import toy_run
from helpers import F64, one_error_line
from sde_gen.app.cli import app
from sde_gen.app.runs import load_run
from sde_gen.noise import IndexedGenerator
from sde_gen.path_transfer import _scaled, on_path
from sde_gen.sampling import sample
from sde_gen.sampling.grids import make_grid
from sde_gen.sde import SDES

torch.set_num_threads(1)
N = 6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("path")
    flow = ["sde.name=flow", "model.noise_cond=t"]  # the log-SNR is -inf at the flow path's T
    return {"vp": toy_run(base / "vp"), "flow": toy_run(base / "flow", *flow)}


def cli_sample(run_dir, out, *args: str):
    return CliRunner().invoke(app, ["sample", "--ckpt", str(run_dir), "--n", str(N),
                                    "--no-progress", "--device", "cpu", "--out", str(out),
                                    *args])


def samples(out) -> torch.Tensor:
    return torch.from_numpy(np.load(out.with_suffix(".npz"))["samples"]).double()


@pytest.mark.parametrize("trained, target", [("vp", "flow"), ("flow", "vp")])
def test_path_option_is_the_api(tmp_path, runs, trained, target):
    """The CLI's samples are on_path's on the same draws and grid (ddim), and its ODE endpoint
    is the trained path's ODE endpoint, mapped (solver tolerance)."""
    out = tmp_path / "ddim.png"
    res = cli_sample(runs[trained], out, "--path", target, "--solver", "ddim", "--steps", "8")
    assert res.exit_code == 0, res.output
    assert f"on the {target} path" in res.output
    run = load_run(runs[trained])
    sde = SDES[target]()
    moved = on_path(run.model, run.sde, sde)
    assert (moved.t_max < sde.T) == (trained == "vp")  # a VP model does not reach alpha = 0
    start = sde.prior_sampling((N, 2), generator=IndexedGenerator(0, 0, N)) * moved.start_scale
    ts = make_grid(sde, 8, t_min=moved.t_min, T=moved.t_max, spacing="uniform")
    api = sample(moved, sde, None, "ddim", x_T=start, ts=ts)
    torch.testing.assert_close(samples(out), api.x.double(), rtol=1e-5, atol=1e-5)

    out = tmp_path / "ode.png"
    res = cli_sample(runs[trained], out, "--path", target, "--solver", "ode", "--rtol", "1e-7",
                     "--atol", "1e-7", "--no-denoise")
    assert res.exit_code == 0, res.output
    n = torch.full((N,), 1.0, dtype=F64)
    z, s0 = _scaled(sde, run.sde, start.double(), moved.t_max * n)
    end, s_end = _scaled(sde, run.sde, samples(out), moved.t_min * n)
    ref = sample(run.model, run.sde, None, "ode", x_T=z, ts=torch.stack([s0[0], s_end[0]]),
                 denoise=False, rtol=1e-9, atol=1e-9)
    err = float((end - ref.x).abs().max())
    assert err < 1e-4, err


def test_path_option_refusals(tmp_path, runs):
    out = tmp_path / "x.png"
    bad = cli_sample(runs["vp"], out, "--path", "rectified")
    assert bad.exit_code == 2 and "unknown --path 'rectified'" in one_error_line(bad)
    assert "flow" in one_error_line(bad)
    # an option of another path: the flow path has no discrete chain
    bad = cli_sample(runs["vp"], out, "--path", "flow", "--solver", "ddim", "--discrete")
    assert bad.exit_code == 2 and "no discrete chain" in one_error_line(bad)
    bad = cli_sample(runs["vp"], out, "--path", "flow", "--t-min", "1e-6")
    assert bad.exit_code == 2 and "outside the times" in one_error_line(bad)
    assert not out.exists() and not out.with_suffix(".npz").exists()
