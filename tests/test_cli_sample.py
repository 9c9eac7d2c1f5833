import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from cli_runs import nan_weights
from helpers import EPS_SOLVERS, TINY_MLP, cli_sets
from sde_gen.app.cli import app
from sde_gen.sampling import SOLVERS
from sde_gen.sampling.solvers import solver_flags

TRAIN = ["train", *cli_sets([*TINY_MLP, "train.steps=20"]), "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    res = CliRunner().invoke(app, TRAIN + ["--workdir", str(d)])
    assert res.exit_code == 0, res.output
    return d


def _flags(options: dict) -> list[str]:
    """The command-line flags of solver options (their declarations come from the registry)."""
    decls = {f.name: f.decls for f in solver_flags()}
    out = []
    for name, value in options.items():
        decl = decls[name]
        if isinstance(value, bool):
            on, _, off = decl.partition("/")
            out.append(on if value else off)
        else:
            out += [decl, str(value)]
    return out


# Every registered solver at least once (test_sample_cases_cover_every_registered_solver);
# (solver, grid intervals, solver options, other flags). The expected NFE is the spec's.
SAMPLE_CASES = [
    ("dpm", 9, {}, []),
    ("ddim", 10, {"eta": 0.5}, []),
    ("heun", 5, {}, []),
    ("ode", 4, {"method": "rk4"}, []),
    ("pc", 5, {"snr": 0.1}, []),
    ("ancestral", 5, {"variance": "beta_tilde"}, []),
    ("sde", 5, {}, ["--no-denoise"]),
    ("sde", 5, {"method": "euler"}, ["--spacing", "quadratic"]),  # torchsde
    ("dpm", 5, {"lower_order_final": False}, []),  # a flag from the registry
    ("dpm", 9, {"variant": "taylor3"}, []),
    ("unipc", 9, {}, []),
    ("unipc", 5, {"variant": "bh1", "order": 2, "unic": False}, []),
    ("ipndm", 9, {}, []),
    ("ipndm", 5, {"order": 2, "variable_step": True}, []),
    ("deis", 9, {"order": 2}, []),
    # Regression: "999 intervals do not fit on the 1000-step discrete chain": the default
    # is now the chain's steps from t = 0.01 (None: the solver's default grid).
    ("ancestral", None, {}, ["--eps", "0.01"]),
]


def _expected_nfe(solver: str, steps: int | None, options: dict, extra: list[str]) -> int:
    from sde_gen.chain import chain_times
    from sde_gen.sde import VPSDE

    if steps is None:  # the discrete chain between t_min = 0.01 and T of the run's VP SDE
        steps = len(chain_times(VPSDE(), 0.01)) - 1
    return EPS_SOLVERS[solver].nfe(steps, options, denoise="--no-denoise" not in extra)


@pytest.mark.parametrize("solver, steps, options, extra", SAMPLE_CASES)
def test_sample_writes_png_and_npz(run_dir, tmp_path, solver, steps, options, extra):
    out = tmp_path / f"{solver}.png"
    grid = [] if steps is None else ["--steps", str(steps)]
    res = CliRunner().invoke(app, ["sample", "--solver", solver, "--ckpt", str(run_dir),
                                   "--n", "30", "--batch-size", "16", "--out", str(out),
                                   "--device", "cpu",
                                   "--no-progress", *grid, *_flags(options), *extra])
    assert res.exit_code == 0, res.output
    assert f"{_expected_nfe(solver, steps, options, extra)} NFE per batch" in res.output
    x = np.load(out.with_suffix(".npz"))["samples"]
    assert x.shape == (30, 2) and np.isfinite(x).all()
    assert out.stat().st_size > 1000


def test_the_same_seed_gives_the_same_samples_for_any_batch_size(run_dir, tmp_path):
    """Sample i depends on (seed, i) alone (a solver that draws noise at every step): the same
    up to the float32 rounding of the network's batched matrix products."""
    outs = []
    for batch in (7, 30):
        out = tmp_path / f"b{batch}.png"
        res = CliRunner().invoke(app, ["sample", "--solver", "ancestral", "--steps", "6",
                                       "--ckpt", str(run_dir), "--n", "30", "--batch-size",
                                       str(batch), "--seed", "4", "--out", str(out), "--device",
                                       "cpu", "--no-progress"])
        assert res.exit_code == 0, res.output
        outs.append(np.load(out.with_suffix(".npz"))["samples"])
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-5)
    assert np.abs(outs[0]).max() > 0.5  # real samples, not a constant


def test_sample_is_reproducible(run_dir, tmp_path):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.png"
        args = ["sample", "--solver", "ddim", "--eta", "1", "--steps", "5", "--ckpt", str(run_dir),
                "--n", "20", "--seed", "3", "--out", str(out), "--no-progress", "--device", "cpu"]
        assert CliRunner().invoke(app, args).exit_code == 0
        outs.append(np.load(out.with_suffix(".npz"))["samples"])
    assert np.array_equal(*outs)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--solver", "bogus"], "unknown solver 'bogus'"),
        (["--solver", "ode", "--eta", "0.5"], "--eta does not apply to --solver ode"),
        (["--solver", "sde", "--method", "nope"], "unknown torchsde method 'nope'"),
        (["--solver", "ode", "--method", "nope"], "unknown ODE method 'nope'"),
        (["--solver", "pc", "--predictor", "x"], "unknown predictor 'x'"),
        (["--solver", "ancestral", "--steps", "5000"],
         "do not fit on the 1000-step discrete chain"),
        (["--solver", "ancestral", "--steps", "5000"], "use at most 999 steps"),
        (["--solver", "ancestral", "--eps", "0.01", "--steps", "999"], "use at most 990 steps"),
        (["--solver", "ddim", "--out", "x.jpg"], "--out must be a .png path"),
        # Regression: dpm --eps 2 gave samples of std 4e5, --eps 1 / 0 all-NaN samples; ode
        # --eps 0 / --rtol 0 torchdiffeq's "AssertionError: underflow in dt 0.0".
        (["--solver", "dpm", "--eps", "2"], "must be in (0, T) = (0, 1), got 2.0"),
        (["--solver", "dpm", "--eps", "1"], "must be in (0, T)"),
        (["--solver", "heun", "--eps", "0"], "must be in (0, T)"),
        (["--solver", "ode", "--eps", "0"], "must be in (0, T)"),
        (["--solver", "ode", "--rtol", "0"], "need rtol > 0, got 0.0"),
        (["--solver", "ode", "--atol", "0"], "need atol > 0, got 0.0"),
        (["--solver", "pc", "--snr", "0"], "need snr > 0"),
    ],
)
def test_sample_bad_input_is_one_line_error(run_dir, tmp_path, args, message):
    res = CliRunner().invoke(app, ["sample", "--ckpt", str(run_dir), "--n", "4", "--no-progress",
                                   "--device", "cpu", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


def test_sample_cases_cover_every_registered_solver():
    assert {case[0] for case in SAMPLE_CASES} == set(EPS_SOLVERS)


def test_sample_flags_and_their_help_come_from_the_registry():
    """One flag per solver option of SOLVERS, with the registry's help and range."""
    command = typer.main.get_command(app).commands["sample"]
    params = {p.name: p for p in command.params}
    for flag in solver_flags():
        param = params[flag.name]
        assert param.help == flag.help + "."
        assert flag.decls.split("/")[0] in param.opts
        for solver in flag.solvers:
            assert solver in param.help
        if flag.min is not None:
            assert param.min == flag.min
    # learned coefficients (ipndm's step_scales) come from a calibration file, not a flag
    options = {o.name for spec in SOLVERS.values() for o in spec.options if o.type is not tuple}
    assert options <= set(params) and "step_scales" not in params


def test_sample_refuses_non_finite_samples(run_dir, tmp_path, monkeypatch):
    """Regression: a model with NaN weights sampled 100% NaN, wrote the files and exited 0."""
    nan_weights(monkeypatch)
    out = tmp_path / "nan.png"
    res = CliRunner().invoke(app, ["sample", "--solver", "ddim", "--steps", "5", "--ckpt",
                                   str(run_dir), "--n", "8", "--out", str(out), "--no-progress",
                                   "--device", "cpu"])
    assert res.exit_code == 2, res.output
    assert "8 of 8 samples are NaN or infinite" in res.output
    assert "nothing was written" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists() and not out.with_suffix(".npz").exists()


def test_sample_missing_checkpoint(tmp_path):
    res = CliRunner().invoke(app, ["sample", "--ckpt", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no checkpoint in" in res.output
