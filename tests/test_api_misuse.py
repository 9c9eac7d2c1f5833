"""Misuse of the library API gets a one-line error naming the problem (issue 30, items 4-6,
10, 15 and 22), or, for a diverged adaptive solve, the same non-finite report as every solver."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import EPS_SOLVERS, SDES, mixture, seeded, user_error
from sde_gen.errors import SDEGenError
from sde_gen.likelihood import log_likelihood
from sde_gen.pf_ode import ODEDivergedError
from sde_gen.sampling import impute, sample
from sde_gen.sampling.grid_file import OptimizedGrid, sde_signature
from sde_gen.sampling.optimized_grid import optimize_grid
from sde_gen.sde import VESDE, VPSDE

F64 = torch.float64


def _model(sde=None):
    return mixture().eps_model(sde or VPSDE())


# -- 5, 22: the model's output and the inputs ------------------------------------------------------
@pytest.mark.parametrize("bad, match", [
    (lambda x, t: x[:1], r"returned shape \(1, 2\) for an input of shape \(4, 2\)"),
    (lambda x, t: x.sum(), r"returned shape \(\) for an input of shape \(4, 2\)"),
    (lambda x, t: torch.zeros(x.shape[0], 3, dtype=x.dtype), r"shape \(4, 3\)"),
    (lambda x, t: (x, x), "returned a tuple, not a tensor"),
    (lambda x, t: (x > 0).long(), "returned torch.int64"),
])
@pytest.mark.parametrize("solver", list(EPS_SOLVERS))
def test_a_wrong_model_output_is_named(bad, match: str, solver: str) -> None:
    sde = VPSDE()
    msg = user_error(lambda: sample(bad, sde, (4, 2), solver, steps=3, generator=seeded(0)))
    assert "model" in msg and "<lambda>" in msg
    assert __import__("re").search(match, msg), msg


def test_a_wrong_model_output_is_named_by_the_likelihood_too() -> None:
    msg = user_error(lambda: log_likelihood(lambda x, t: x[:1], VPSDE(), torch.zeros(3, 2)))
    assert "returned shape (1, 2)" in msg


def test_x_T_and_dtype_must_be_real_floating() -> None:
    sde, m = VPSDE(), _model()
    assert "real floating" in user_error(
        lambda: sample(m, sde, None, "ddim", x_T=torch.zeros(3, 2, dtype=torch.long)))
    assert "real floating" in user_error(
        lambda: sample(m, sde, (3, 2), "ddim", dtype=torch.complex64))
    assert "NaN or infinite" in user_error(
        lambda: sample(m, sde, None, "ddim", x_T=torch.full((3, 2), float("nan"))))
    assert "meta" in user_error(lambda: sample(m, sde, (3, 2), "ddim", device="meta"))
    assert "t_min=" in user_error(lambda: sample(m, sde, (3, 2), "ddim", eps=1e-3))


def test_likelihood_refuses_an_empty_batch() -> None:
    assert "non-empty batch" in user_error(
        lambda: log_likelihood(_model(), VPSDE(), torch.zeros(0, 2)))


def test_smc_refuses_more_particles_than_memory_holds() -> None:
    sde = VPSDE()
    x = torch.zeros(2, 2, dtype=F64)
    msg = user_error(lambda: impute(_model(sde), sde, x, torch.tensor([1, 0]), method="smc",
                                    particles=10**12))
    assert "particles" in msg and "memory" in msg


# -- 6: a diverged adaptive ODE --------------------------------------------------------------------
def nan_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, float("nan"))


def test_a_nan_model_under_the_adaptive_ode_is_reported_as_nonfinite() -> None:
    sde = VPSDE()
    res = sample(nan_model, sde, (5, 2), "ode", generator=seeded(0))
    assert res.n_nonfinite == 5  # as the fixed-step solvers report it, no AssertionError
    fixed = sample(nan_model, sde, (5, 2), "ddim", steps=3, generator=seeded(0))
    assert fixed.n_nonfinite == 5


def test_a_nan_model_in_the_likelihood_is_one_line() -> None:
    with pytest.raises(ODEDivergedError) as err:
        log_likelihood(nan_model, VPSDE(), torch.zeros(3, 2), trace="exact")
    assert isinstance(err.value, SDEGenError) and "\n" not in str(err.value)
    assert "underflow" in str(err.value) and "NaN or infinite" in str(err.value)


# -- 4, 10: grid files -----------------------------------------------------------------------------
def _grid(sde, **kw) -> OptimizedGrid:
    d = dict(ts=torch.tensor([1.0, 0.3, 1e-3], dtype=F64), solver="dpm", options={"order": 2},
             nfe=3, error_before=1.0, error_after=0.5, heldout_before=1.1, heldout_after=0.6,
             seconds=0.1, method="gits", sde=sde_signature(sde))
    return OptimizedGrid(**(d | kw))


def test_a_grid_file_records_the_chain_it_was_made_for(tmp_path) -> None:
    table = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    made_for = VPSDE(schedule="table", betas=table)
    path = _grid(made_for).save(tmp_path / "g.json")
    OptimizedGrid.load(path, VPSDE(schedule="table", betas=table.clone()))  # the same chain
    msg = user_error(lambda: OptimizedGrid.load(path, VPSDE(schedule="table", betas=table[::100])))
    assert "another SDE" in msg and "N: 1000 there, 10 here" in msg
    other = table.clone()
    other[5] *= 1.001
    msg = user_error(lambda: OptimizedGrid.load(path, VPSDE(schedule="table", betas=other)))
    assert "table_sha256" in msg
    assert "N: 1000 there, 500 here" in user_error(
        lambda: OptimizedGrid.load(_grid(VPSDE()).save(tmp_path / "h.json"), VPSDE(N=500)))


def test_a_grid_file_without_its_sde_is_refused(tmp_path) -> None:
    d = json.loads(_grid(VPSDE()).save(tmp_path / "g.json").read_text())
    del d["sde"]
    (tmp_path / "g.json").write_text(json.dumps(d))
    assert "does not record the SDE" in user_error(
        lambda: OptimizedGrid.load(tmp_path / "g.json", VPSDE()))


@pytest.mark.parametrize("key, value, match", [
    ("options", [1, 2], '"options" must be a dict, got list'),
    ("sde", "VPSDE", '"sde" must be a dict, got str'),
    ("ts", [1.0, "x"], '"ts" must be a list of finite numbers'),
    ("ts", [1.0, None], '"ts" must be a list of finite numbers'),
    ("nfe", 2.5, '"nfe" must be a int, got float'),
    ("solver", "nope", "unknown solver 'nope'"),
    ("options", {"order": 7}, "order must be 2 or 3"),
    ("options", {"eta": 0.1}, "takes no option 'eta'"),
    ("extra", 1, "unknown key extra"),
])
def test_a_malformed_grid_file_is_one_line(tmp_path, key, value, match) -> None:
    d = json.loads(_grid(VPSDE()).save(tmp_path / "g.json").read_text())
    d[key] = value
    (tmp_path / "g.json").write_text(json.dumps(d))
    msg = user_error(lambda: OptimizedGrid.load(tmp_path / "g.json", VPSDE()))
    assert "not a grid file" in msg and match in msg, msg


def test_a_directory_is_not_a_grid_file(tmp_path) -> None:
    assert "is a directory" in user_error(lambda: OptimizedGrid.load(tmp_path))


# -- 15: more steps than gits has candidates ------------------------------------------------------
def test_gits_with_more_steps_than_candidates_is_one_line() -> None:
    sde = VESDE()
    msg = user_error(lambda: optimize_grid(_model(sde), sde, (2,), "dpm", 1000, n=4, n_heldout=4))
    assert "candidate" in msg and "descent" in msg


@pytest.mark.parametrize("name", list(SDES))
def test_descent_accepts_a_long_grid(name: str) -> None:
    sde = SDES[name]()
    g = optimize_grid(_model(sde), sde, (2,), "ddim", 301, method="descent", n=4, n_heldout=4,
                      evals=0)
    assert len(g.ts) == 301 and bool((g.ts[1:] < g.ts[:-1]).all())
