"""Every registered solver through the one driver: options completed from its spec, NFE as the
spec predicts it (counted by wrapping the model), the grid, trajectory and progress reported
for every interval, and one validation before the first model call."""

from __future__ import annotations

import pytest
import torch

from helpers import EPS_SOLVERS, SDES, mixture, seeded, user_error
from sde_gen.sampling import sample
from sde_gen.sampling.driver import plan

F64 = torch.float64


class Counter:
    """The exact mixture's eps-model, counting its calls independently of the package."""

    def __init__(self, sde) -> None:
        self.model, self.calls = mixture().eps_model(sde), 0

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)


def _variants(name: str):
    """Each solver at its defaults, and at every other value of each option with choices
    (taken from the spec, so a new solver or option is covered without an edit here)."""
    spec = EPS_SOLVERS[name]
    yield {}
    for o in spec.options:
        for value in (o.choices or ((not o.default,) if o.type is bool else ())):
            if value != o.default:
                yield {o.name: value}


CASES = [pytest.param(name, opts, id=f"{name}-{opts}") for name in EPS_SOLVERS
         for opts in _variants(name)]


@pytest.mark.parametrize("name, options", CASES)
@pytest.mark.parametrize("steps", [1, 6])
def test_nfe_grid_and_trajectory_follow_the_spec(name: str, options: dict, steps: int) -> None:
    spec = EPS_SOLVERS[name]
    sde = SDES["vp"]()
    model = Counter(sde)
    if options.get("variance") == "learned":  # needs a model that learns it: refused up front
        assert "learns its reverse variance" in user_error(
            lambda: sample(model, sde, (6, 2), name, steps=steps, **options))
        assert model.calls == 0
        return
    res = sample(model, sde, (6, 2), name, steps=steps, generator=seeded(0), dtype=F64,
                 return_trajectory=True, **options)
    expected = spec.nfe(steps, options)
    if expected is not None:
        assert res.nfe == model.calls == expected
    else:  # the method decides (adaptive): still counted by the wrapper
        assert res.nfe == model.calls >= 1
    assert res.ts.shape == (steps + 1,) and bool((res.ts[1:] < res.ts[:-1]).all())
    assert res.trajectory.shape == (steps + 1, 6, 2)
    if options.get("method") != "reversible_heun":  # unstable here (torchsde_backend.py)
        assert torch.isfinite(res.x).all()


@pytest.mark.parametrize("name", list(EPS_SOLVERS))
def test_options_are_checked_once_before_the_first_model_call(name: str) -> None:
    sde = SDES["vp"]()
    calls = []

    def model(x, t):
        calls.append(1)
        return torch.zeros_like(x)

    assert "takes no option 'nope'" in user_error(
        lambda: sample(model, sde, (2, 2), name, nope=1))
    for o in EPS_SOLVERS[name].options:
        bad = {bool: 2, int: "x", float: "x", str: 3, tuple: "x"}[o.type]
        assert o.name in user_error(lambda o=o, bad=bad: sample(model, sde, (2, 2), name,
                                                                 **{o.name: bad}))
    assert not calls


@pytest.mark.parametrize("name", list(EPS_SOLVERS))
def test_the_plan_completes_every_option(name: str) -> None:
    sde = SDES["ve"]()
    run = plan(mixture().eps_model(sde), sde, name, {})
    assert run.options == EPS_SOLVERS[name].defaults()
    assert float(run.ts[0]) == sde.T and float(run.ts[-1]) == pytest.approx(sde.default_t_min,
                                                                            abs=1e-3)
    spacing = EPS_SOLVERS[name].spacing_for(sde)
    assert spacing == (EPS_SOLVERS[name].spacing or sde.few_step_spacing)


def test_a_users_sde_gets_its_declared_spacing() -> None:
    """The default spacing comes from a property the SDE declares, not from its registry name."""

    class MyVP(SDES["vp"]):
        few_step_spacing = "karras"

    assert EPS_SOLVERS["unipc"].spacing_for(MyVP()) == "karras"
    assert EPS_SOLVERS["unipc"].spacing_for(SDES["vp"]()) == "quadratic"
    assert EPS_SOLVERS["dpm"].spacing_for(MyVP()) == "logsnr"  # a solver's own spacing wins
