"""Time grids optimized per model (GITS dynamic programming, then Powell descent), checked on
exact-score mixtures: they must beat the solver's built-in grid on held-out prior draws."""

import itertools
import json

import pytest
import torch
from typer.testing import CliRunner

from helpers import TINY_MLP, mixture
from sde_gen.app.cli import app
from sde_gen.app.config import load_config
from sde_gen.app.train import train
from sde_gen.errors import UserInputError
from sde_gen.flow_paths import FlowSDE, TrigFlowSDE
from sde_gen.sampling import sample
from sde_gen.sampling.grid_file import sde_signature
from sde_gen.sampling.optimized_grid import OptimizedGrid, _gits_path, optimize_grid, steps_for_nfe
from sde_gen.sde import VESDE, VPSDE

F64 = torch.float64


def test_gits_dynamic_programme_finds_the_cheapest_k_edge_path():
    g = torch.Generator().manual_seed(0)
    m, k = 7, 3
    cost = torch.rand(m + 1, m + 1, generator=g, dtype=F64)
    path = _gits_path(cost, k)
    brute = min(([0, *mid, m] for mid in itertools.combinations(range(1, m), k - 1)),
                key=lambda p: sum(float(cost[a, b]) for a, b in zip(p, p[1:])))
    assert path == brute


@pytest.mark.parametrize("sde_fn, solver, method", [
    (VPSDE, "dpm", "gits"), (VPSDE, "ddim", "gits"),
    (lambda: VESDE(sigma_max=20.0), "dpm", "descent"), (FlowSDE, "unipc", "gits"),
    (TrigFlowSDE, "dpm", "descent")])
def test_optimized_grid_beats_the_built_in_one_on_held_out_draws(sde_fn, solver, method):
    sde, gm = sde_fn(), mixture()
    res = optimize_grid(gm.eps_model(sde), sde, (2,), solver, 10, method=method, n=128,
                        n_heldout=128, evals=150, dtype=F64)
    print(f"\n{solver} {method}: held-out {res.heldout_before:.3e} -> {res.heldout_after:.3e} "
          f"({res.heldout_after / res.heldout_before:.2f}x, {res.seconds:.1f} s)")
    ts = res.ts
    assert len(ts) == 10 and res.nfe == 10  # 9 intervals and the final denoise
    assert ts[0] == sde.T and float(ts[-1]) == pytest.approx(sde.default_t_min)
    assert bool((ts[1:] < ts[:-1]).all())
    # measured held-out ratios (after / before): vp dpm 0.49, vp ddim 0.67, ve dpm 0.61, flow
    # unipc 0.11, trig dpm 0.60 (from T itself: the grid keeps T and t_min)
    assert res.error_after < res.error_before
    assert res.heldout_after < 0.85 * res.heldout_before, res
    # The file round-trips, and sample() on it gives the reported held-out error back.
    x_T = sde.prior_sampling((128, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    again = sample(gm.eps_model(sde), sde, None, solver, x_T=x_T, ts=res.ts).x
    ref = sample(gm.eps_model(sde), sde, None, "ode", x_T=x_T, ts=torch.tensor(
        [sde.T, sde.default_t_min], dtype=F64), rtol=1e-7, atol=1e-7).x
    assert float((again - ref).norm(dim=1).mean()) == pytest.approx(res.heldout_after, rel=1e-6)


def test_grid_file_round_trip_and_checks(tmp_path):
    sde = VPSDE()
    grid = OptimizedGrid(ts=torch.tensor([1.0, 0.3, 1e-3], dtype=F64), solver="dpm",
                         options={"order": 2}, nfe=3, error_before=1.0, error_after=0.5,
                         heldout_before=1.1, heldout_after=0.6, seconds=0.1, method="gits",
                         sde=sde_signature(sde))
    path = grid.save(tmp_path / "g.json")
    back = OptimizedGrid.load(path, sde)
    assert torch.equal(back.ts, grid.ts) and back.options == {"order": 2}
    with pytest.raises(UserInputError,
                       match=r"optimized for another SDE \(sde: VPSDE there, VESDE here\)"):
        OptimizedGrid.load(path, VESDE())
    (tmp_path / "bad.json").write_text(json.dumps({"ts": [1, 0.5]}))
    with pytest.raises(UserInputError, match="not a grid file"):
        OptimizedGrid.load(tmp_path / "bad.json")
    with pytest.raises(UserInputError, match="grid file not found"):
        OptimizedGrid.load(tmp_path / "missing.json")


@pytest.mark.parametrize("solver, nfe, options, match", [
    ("sde", 10, {}, "draws noise"), ("ddim", 10, {"eta": 0.5}, "draws noise"),
    ("heun", 10, {}, r"nfe must be 1 \+ 2 k"), ("ode", 10, {}, "adaptive"),
    ("dpm", 1, {}, r"nfe must be 1 \+ 1 k"), ("nope", 10, {}, "unknown solver")])
def test_steps_for_nfe_rejects_what_has_no_fixed_grid(solver, nfe, options, match):
    with pytest.raises(UserInputError, match=match):
        steps_for_nfe(solver, nfe, options)


def test_steps_for_nfe_counts_the_final_denoise():
    assert steps_for_nfe("dpm", 10) == 9 and steps_for_nfe("heun", 9) == 4


def test_cli_optimize_grid_then_sample_with_it(tmp_path):
    train(load_config(None, TINY_MLP + ["train.steps=30"]), tmp_path, progress=False)
    out = tmp_path / "g.json"
    res = CliRunner().invoke(app, ["optimize-grid", "--ckpt", str(tmp_path), "--nfe", "6",
                                   "--solver", "dpm", "--order", "2", "--n", "32",
                                   "--n-heldout", "32", "--evals", "10", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "held out" in res.output and out.is_file()
    saved = OptimizedGrid.load(out)
    assert saved.solver == "dpm" and saved.options == {"order": 2} and len(saved.ts) == 6
    res = CliRunner().invoke(app, ["sample", "--ckpt", str(tmp_path), "--grid", str(out), "--n",
                                   "16", "--no-progress", "--out", str(tmp_path / "s.png")])
    assert res.exit_code == 0, res.output
    assert "with dpm: 6 NFE" in res.output
    bad = CliRunner().invoke(app, ["sample", "--ckpt", str(tmp_path), "--grid", str(out),
                                   "--steps", "4", "--no-progress"])
    assert bad.exit_code == 2 and "--grid fixes the time grid; drop --steps" in bad.output
    bad = CliRunner().invoke(app, ["optimize-grid", "--ckpt", str(tmp_path), "--solver", "pc"])
    assert bad.exit_code == 2 and "draws noise" in bad.output
