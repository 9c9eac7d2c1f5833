"""Input validation of the SDEs and their ``sde.*`` config keys.

Regressions: non-finite constructor arguments were accepted (``VPSDE(beta_max=inf)`` passed
``0 < beta_min < beta_max``); ``marginal_prob`` took times outside ``[0, T]``; VP's DDPM chain with
``N <= beta_max`` has ``beta_i >= 1`` (``abar_i <= 0``) and turned training, ancestral sampling and
the bound into NaN without a word; and ``sde.*`` keys of another SDE were silently ignored.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from helpers import SDE_NAMES, SDES, make_sde
from sde_gen.app.config import ConfigError, load_config
from sde_gen.chain import grid_coeffs
from sde_gen.errors import UserInputError
from sde_gen.likelihood.vlb import discrete_chain, vlb
from sde_gen.losses import dsm_loss
from sde_gen.sampling import sample
from sde_gen.schedules import CosineBeta, LinearBeta
from sde_gen.sde import VESDE, VPSDE, SubVPSDE, vp_min_chain_steps

F64 = torch.float64
PACKAGE = Path(__file__).resolve().parents[1] / "sde_gen"


def zero_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


# -------------------------------------------------------------------------------------------------
# 1. non-finite constructor arguments
# -------------------------------------------------------------------------------------------------
CONSTRUCTORS = {
    "VPSDE": VPSDE,
    "VPSDE-cosine": lambda **kw: VPSDE(schedule="cosine", **kw),
    "SubVPSDE": SubVPSDE,
    "VESDE": VESDE,
    "LinearBeta": LinearBeta,
    "CosineBeta": CosineBeta,
}
PARAMETERS = [
    ("VPSDE", "beta_min"), ("VPSDE", "beta_max"), ("VPSDE", "T"), ("VPSDE", "N"),
    ("VPSDE-cosine", "beta_min"), ("VPSDE-cosine", "beta_max"), ("VPSDE-cosine", "T"),
    ("SubVPSDE", "beta_min"), ("SubVPSDE", "beta_max"), ("SubVPSDE", "N"),
    ("VESDE", "sigma_min"), ("VESDE", "sigma_max"), ("VESDE", "N"),
    ("LinearBeta", "beta_min"), ("LinearBeta", "beta_max"), ("CosineBeta", "s"),
]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("ctor, param", PARAMETERS, ids=[f"{c}-{p}" for c, p in PARAMETERS])
def test_non_finite_constructor_argument_is_rejected_by_name(ctor: str, param: str,
                                                             value: float) -> None:
    # Regression: VPSDE(beta_max=inf), VESDE(sigma_max=inf) and T=inf passed; N=inf was an
    # OverflowError; NaN gave "need 0 < beta_min < beta_max" without naming the culprit.
    with pytest.raises(UserInputError) as e:
        CONSTRUCTORS[ctor](**{param: value})
    assert one_line(e).startswith(f"{param} must be a ")
    assert repr(value) in str(e.value)


def test_finite_arguments_still_build() -> None:
    assert VPSDE(beta_min=0.5, beta_max=3.0, N=50, T=0.5).T == 0.5
    assert VPSDE(N=1000.0).N == 1000  # an integral float is still an integer
    assert SubVPSDE(beta_min=0.2, beta_max=5).beta_max == 5.0
    assert VESDE(sigma_min=0.1, sigma_max=2.0, N=2).prior_std == 2.0
    with pytest.raises(UserInputError, match=r"^N must be a positive integer, got 2\.5$"):
        VPSDE(N=2.5)


# -------------------------------------------------------------------------------------------------
# 2. marginal_prob checks t against [0, T]
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t, got", [
    ([-0.5, 0.3, 0.1], r"got values in \[-0.5, 0.3\]$"),
    ([0.2, 1.5, 1.0], r"got values in \[0.2, 1.5\]$"),
    ([math.nan, 0.3, 0.4], r"got NaN and values in \[0.3, 0.4\]$"),
    ([math.nan] * 3, r"got NaN$"),
    ([math.inf, 0.3, 0.4], r"got values in \[0.3, inf\]$"),
], ids=["negative", "above_T", "nan", "all_nan", "inf"])
def test_marginal_prob_rejects_times_outside_0_T(t: list[float], got: str) -> None:
    sde = VPSDE()
    with pytest.raises(UserInputError, match=r"^t must lie in \[0, T=1.0\]; " + got) as e:
        sde.marginal_prob(torch.zeros(3, 2), torch.tensor(t))
    one_line(e)


@pytest.mark.parametrize("name", SDE_NAMES)
def test_marginal_prob_accepts_the_closed_interval(name: str) -> None:
    sde = make_sde(name)
    t = torch.tensor([0.0, 0.5 * sde.T, sde.T], dtype=F64)
    mean, std = sde.marginal_prob(torch.ones(3, 2, dtype=F64), t)
    assert mean.shape == (3, 2) and std.shape == (3,)
    with pytest.raises(UserInputError, match=rf"T={sde.T}\]"):
        sde.marginal_prob(torch.ones(3, 2, dtype=F64), t + 1e-3)


def test_package_code_calls_marginal_coeffs_not_marginal_prob() -> None:
    """marginal_prob reads t on the host (a device sync); library code must not call it."""
    callers = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if p.name != "sde.py" and ".marginal_prob(" in p.read_text()]
    assert callers == []


# -------------------------------------------------------------------------------------------------
# 3. VP's DDPM chain needs N > beta_max
# -------------------------------------------------------------------------------------------------
def test_min_chain_steps_rule() -> None:
    assert vp_min_chain_steps(20.0) == VPSDE().min_chain_steps == 21
    assert vp_min_chain_steps(20.5) == 21 and vp_min_chain_steps(30.0) == 31
    assert vp_min_chain_steps(0.5) == 1
    assert vp_min_chain_steps(20.0, "cosine") == VPSDE(schedule="cosine").min_chain_steps == 1


CHAIN_USES = {
    "discrete_coeffs": lambda sde: sde.discrete_coeffs(torch.arange(sde.N)),
    "discretize": lambda sde: sde.discretize(torch.zeros(3, 2), torch.full((3,), 0.5)),
    "reverse_discretize": lambda sde: sde.reverse(zero_eps).discretize(torch.zeros(3, 2),
                                                                       torch.full((3,), 0.5)),
    "discrete_betas": lambda sde: sde.discrete_betas,
    "alphas": lambda sde: sde.alphas,
    "alphas_cumprod": lambda sde: sde.alphas_cumprod,
    "grid_coeffs": lambda sde: grid_coeffs(sde, torch.tensor([0.5, 0.1]), discrete=True),
    "discrete_chain": lambda sde: discrete_chain(sde),
    "vlb": lambda sde: vlb(zero_eps, sde, torch.randn(4, 2, generator=torch.Generator())),
    "dsm_discrete": lambda sde: dsm_loss(zero_eps, sde, torch.zeros(4, 2), discrete=True),
    "ancestral": lambda sde: sample(zero_eps, sde, (3, 2), "ancestral"),
    "ddim_discrete": lambda sde: sample(zero_eps, sde, (3, 2), "ddim", discrete=True),
}


@pytest.mark.parametrize("use", list(CHAIN_USES))
@pytest.mark.parametrize("n, beta", [(7, "2.86"), (20, "1")], ids=["N7", "N20"])
def test_invalid_ddpm_chain_raises_on_every_use(n: int, beta: str, use: str) -> None:
    # Regression: beta_i = linspace(beta_min/N, beta_max/N, N) reaches beta_max/N >= 1, so abar_i
    # went to 0 or below and these produced NaN silently.
    sde = VPSDE(N=n)  # the continuous SDE is fine: constructing it stays legal
    with pytest.raises(UserInputError) as e:
        CHAIN_USES[use](sde)
    assert one_line(e) == (f"VP's {n}-step DDPM chain has beta_i up to {beta} >= 1 (beta_max/N); "
                           f"use N >= 21")


def test_invalid_chain_leaves_the_continuous_sde_usable() -> None:
    sde = VPSDE(N=7)
    alpha, sigma = sde.marginal_coeffs(torch.tensor([0.5], dtype=F64))
    assert torch.isfinite(alpha).all() and torch.isfinite(sigma).all()
    res = sample(zero_eps, sde, (3, 2), "ode", steps=4)
    assert torch.isfinite(res.x).all()
    assert torch.isfinite(dsm_loss(zero_eps, sde, torch.zeros(4, 2))).all()


@pytest.mark.parametrize("sde_fn", [lambda: VPSDE(N=21), lambda: VPSDE(N=7, schedule="cosine"),
                                    lambda: VPSDE(beta_max=3.0, N=4), lambda: SubVPSDE(N=7)],
                         ids=["vp-N21", "vp_cosine-N7", "vp-beta3-N4", "subvp-N7"])
def test_valid_short_chains_work(sde_fn) -> None:
    sde = sde_fn()
    alpha, sigma = sde.discrete_coeffs(torch.arange(sde.N))
    assert (alpha > 0).all() and (sigma > 0).all() and (alpha[1:] < alpha[:-1]).all()
    ch = discrete_chain(sde)
    assert (ch.beta > 0).all() and (ch.beta < 1).all()
    out = vlb(zero_eps, sde, torch.randn(4, 2, generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(out.nats).all()
    assert torch.isfinite(dsm_loss(zero_eps, sde, torch.zeros(4, 2), discrete=True)).all()
    assert torch.isfinite(sample(zero_eps, sde, (3, 2), "ancestral").x).all()


@pytest.mark.parametrize("overrides, message", [
    (["sde.N=2"], "sde.N=2: VP's linear DDPM chain has beta_i up to 10 >= 1 "
                  "(sde.beta_max/sde.N); use sde.N >= 21"),
    (["sde.N=20"], "beta_i up to 1 >= 1 (sde.beta_max/sde.N); use sde.N >= 21"),
    (["sde.beta_max=30", "sde.N=25"], "sde.N=25: VP's linear DDPM chain has beta_i up to 1.2 "
                                      ">= 1 (sde.beta_max/sde.N); use sde.N >= 31"),
])
def test_config_rejects_an_invalid_vp_chain(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert message in one_line(e)


@pytest.mark.parametrize("overrides", [
    ["sde.N=21"], ["sde.schedule=cosine", "sde.N=2"], ["sde.name=subvp", "sde.N=2"],
    ["sde.name=ve", "sde.N=2"], ["sde.beta_max=3", "sde.N=4"],
])
def test_config_accepts_a_valid_short_chain(overrides: list[str]) -> None:
    assert load_config(None, overrides).sde.N == int(overrides[-1].split("=")[1])


# -------------------------------------------------------------------------------------------------
# 4. sde.* keys that the chosen SDE does not read
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["sde.name=subvp", "sde.schedule=cosine"],
     "sde.schedule=cosine applies only to sde.name=vp (it is subvp)"),
    (["sde.name=ve", "sde.schedule=cosine"],
     "sde.schedule=cosine applies only to sde.name=vp (it is ve)"),
    (["sde.name=ve", "sde.beta_max=10"],
     "sde.beta_max=10.0 applies only to sde.name=vp or subvp (it is ve)"),
    (["sde.name=ve", "sde.beta_min=0.2"],
     "sde.beta_min=0.2 applies only to sde.name=vp or subvp (it is ve)"),
    (["sde.sigma_max=5"], "sde.sigma_max=5.0 applies only to sde.name=ve (it is vp)"),
    (["sde.name=subvp", "sde.sigma_min=0.02"],
     "sde.sigma_min=0.02 applies only to sde.name=ve (it is subvp)"),
    (["sde.schedule=cosine", "sde.beta_max=10"],
     "sde.beta_max=10.0 is unused by sde.schedule=cosine (it applies only to schedule=linear)"),
    (["sde.schedule=cosine", "sde.beta_min=0.2"],
     "sde.beta_min=0.2 is unused by sde.schedule=cosine (it applies only to schedule=linear)"),
])
def test_config_rejects_keys_the_sde_does_not_use(overrides: list[str], message: str) -> None:
    # Regression: --sde subvp --set sde.schedule=cosine trained linear sub-VP while config.yaml
    # recorded cosine.
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert one_line(e) == message


@pytest.mark.parametrize("overrides", [
    ["sde.name=subvp", "sde.schedule=linear", "sde.sigma_max=50"],  # defaults: nothing ignored
    ["sde.name=subvp", "sde.beta_max=10"], ["sde.name=ve", "sde.sigma_max=5", "sde.N=100"],
    ["sde.schedule=cosine"], ["sde.beta_min=0.2", "sde.beta_max=10"],
])
def test_config_accepts_keys_the_sde_uses(overrides: list[str]) -> None:
    load_config(None, overrides)


def test_full_default_yaml_works_with_every_sde() -> None:
    """configs/toy2d.yaml lists every sde.* key at its default, so any sde.name may override it."""
    path = Path(__file__).resolve().parents[1] / "configs" / "toy2d.yaml"
    for name in SDES:
        assert load_config(path, [f"sde.name={name}"]).sde.name == name
