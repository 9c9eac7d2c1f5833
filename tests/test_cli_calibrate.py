"""``sde-gen calibrate``, the calibration at the end of training, and ``sample --steps K`` on the
run's calibrated grid: stored atomically in the run, used and announced, refused in one line
when made for another SDE or another run's weights, and bad input refused in one line."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from helpers import TINY_MLP, cli_sets, mixture, one_error_line, seeded
from sde_gen.app.calibration import (
    FILE,
    calibrate_run,
    load_calibrations,
    model_fingerprint,
    save_calibrations,
)
from sde_gen.app.cli import app
from sde_gen.app.config import load_config
from sde_gen.app.runs import load_run
from sde_gen.app.train import train
from sde_gen.errors import UserInputError
from sde_gen.sde import SDES, VESDE, VPSDE

TRAIN = [*TINY_MLP, "train.steps=20"]


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs (seeds 0 and 1); the first calibrated at 4 and 6 NFE."""
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    for d, seed in ((a, 0), (b, 1)):
        train(load_config(None, TRAIN + [f"train.seed={seed}"]), d, progress=False)
    res = _invoke("calibrate", "--ckpt", a, "--nfe", 4, 6, "--budget", 5, "--n", 32)
    assert res.exit_code == 0, res.output
    assert "4 NFE (deis, sample --steps 3)" in res.output
    assert "6 NFE (ipndm, sample --steps 5)" in res.output
    return a, b


def test_calibrate_stores_the_grids_in_the_run_and_sample_uses_them(runs):
    a, _ = runs
    doc = json.loads((a / FILE).read_text())
    assert [c["nfe"] for c in doc["calibrations"]] == [4, 6]
    assert not list(a.glob(".tmp_*"))  # written atomically, nothing left behind
    res = _invoke("sample", "--ckpt", a, "--steps", 5, "--n", 16, "--no-progress", "--out",
                  a / "s.png")
    assert res.exit_code == 0, res.output
    assert "using the calibration for 5 steps: ipndm at 6 NFE" in res.output
    assert "with ipndm: 6 NFE" in res.output
    off = _invoke("sample", "--ckpt", a, "--steps", 5, "--n", 16, "--no-progress",
                  "--no-calibration", "--out", a / "t.png")
    assert off.exit_code == 0 and "calibration" not in off.output and "with ode" in off.output
    other = _invoke("sample", "--ckpt", a, "--steps", 7, "--n", 16, "--no-progress", "--out",
                    a / "u.png")  # no calibration of 7 steps: the solver's own grid, silently
    assert other.exit_code == 0 and "calibration" not in other.output


def test_the_calibrated_samples_are_the_api_ones(runs):
    a, _ = runs
    from sde_gen.sampling import sample

    run = load_run(a)
    cal = load_calibrations(a / FILE, run.sde, run.model)[4]
    x_T = run.sde.prior_sampling((8, 2), generator=seeded(0))
    res = sample(run.model, run.sde, None, cal.solver, x_T=x_T, ts=cal.ts, **cal.options)
    assert res.nfe == 4 and cal.solver == "deis" and torch.isfinite(res.x).all()


def test_a_calibration_from_another_run_is_refused(runs, tmp_path):
    a, b = runs
    line = one_error_line(_invoke("sample", "--ckpt", b, "--steps", 5, "--calibration",
                                  a / FILE, "--no-progress"))
    assert "was calibrated for other model weights" in line
    c = shutil.copytree(b, tmp_path / "c")
    shutil.copy(a / FILE, c / FILE)  # copied into the other run: refused there too
    line = one_error_line(_invoke("sample", "--ckpt", c, "--steps", 5, "--no-progress"))
    assert "other model weights" in line and "--no-calibration" in line
    line = one_error_line(_invoke("sample", "--ckpt", a, "--steps", 7, "--calibration",
                                  a / FILE, "--no-progress"))
    assert "has no calibration of 7 steps; it has 3 (deis, 4 NFE), 5 (ipndm, 6 NFE)" in line


def test_a_calibration_for_one_sde_is_refused_for_another(tmp_path):
    gm = mixture()
    vp = VPSDE()
    model = gm.eps_model(vp)
    cals = calibrate_run(model, vp, (2,), [6], budget_s=3, n=32, n_val=16)
    path = save_calibrations(tmp_path / FILE, cals, vp, model)
    assert load_calibrations(path, vp, model)[6].nfe == 6
    for other in (VESDE(), VPSDE(beta_max=10.0), SDES["flow"]()):
        with pytest.raises(UserInputError, match="was calibrated for another SDE"):
            load_calibrations(path, other, model)


def test_model_fingerprint_follows_the_weights():
    net = torch.nn.Linear(2, 2)
    before = model_fingerprint(net)
    with torch.no_grad():
        net.weight[0, 0] += 1e-6
    assert model_fingerprint(net) != before and model_fingerprint(lambda x, t: x) is None


@pytest.mark.parametrize("args, match", [
    (["--nfe", 10, "--budget", 0], "budget must be a positive number of seconds, got 0.0"),
    (["--nfe", 10, "--budget", "nan"], "budget must be a positive number of seconds, got nan"),
    (["--nfe", 1], r"nfe must be 1 \+ 1 k \(k >= 1\), got 1"),
    (["--nfe", 0], r"nfe must be 1 \+ 1 k \(k >= 1\), got 0"),
    (["--nfe", 1, "--solver", "ipndm"], r"ipndm makes 1 model call\(s\) per interval"),
    (["--nfe", 10, "--budget", "inf"], "budget must be a positive number of seconds, got inf"),
    (["--nfe", 10, "--budget", -3], "budget must be a positive number of seconds, got -3.0"),
    (["--nfe", 10, "--solver", "heun"], "cannot be calibrated"),
    (["--nfe", 10, 10], "distinct NFEs"),
])
def test_bad_calibrate_input_is_one_line(args, match, tmp_path):
    import re

    line = one_error_line(_invoke("calibrate", "--ckpt", tmp_path / "nothing", *args))
    assert re.search(match, line), line  # refused before the (missing) run is read


@pytest.mark.parametrize("budget, words", [("nan", "expected a finite number, got nan"),
                                           ("-1", "-1.0 is below the minimum 0.0")])
def test_a_bad_training_calibration_budget_is_one_line(budget, words, tmp_path):
    line = one_error_line(_invoke("train", *cli_sets([*TRAIN, f"train.calibrate_budget={budget}"]),
                                  "-w", tmp_path / "run", "--no-progress"))
    assert f"train.calibrate_budget: {words}" in line and not (tmp_path / "run").exists()


def test_training_calibrates_by_default_within_its_budget(tmp_path):
    res = CliRunner().invoke(app, ["train", *cli_sets(TRAIN + ["train.calibrate_budget=4",
                                                               "train.calibrate_nfe=[6]"]),
                                   "--no-progress", "--workdir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert f"calibration: {tmp_path / FILE}" in res.output
    run = load_run(tmp_path)
    cal = load_calibrations(tmp_path / FILE, run.sde, run.model)[6]
    assert cal.steps == 5 and cal.seconds < 10  # the 4 s budget (loose: a loaded shared CPU)

