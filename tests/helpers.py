"""Shared test helpers: the SDEs under test (from the package's registry), seeded generators,
the tiny-run configurations, the exact 2-D mixture the solver tests measure on, and the CLI's
one-line error check."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache

import pytest
import torch

from sde_gen.analytic import GaussianMixture
from sde_gen.errors import UserInputError
from sde_gen.sampling.solvers import SOLVERS
from sde_gen.sde import SDE, SDES, VPSDE

F64 = torch.float64
#: The registered SDEs and VP with [Nichol21]'s cosine schedule, by name (see :func:`make_sde`).
SDE_NAMES = (*SDES, "vp_cosine")
#: The registered SDEs whose ``alpha_T > 0`` (VP, sub-VP, VE): where the tests' measured bounds
#: and the discrete chains are; and the flow paths (``alpha_T = 0``), tested in test_flow_path.py
#: and wherever a contract holds for every path.
DIFFUSION_SDES = {n: c for n, c in SDES.items() if not c().pure_noise_at_T}
FLOW_SDES = {n: c for n, c in SDES.items() if n not in DIFFUSION_SDES}
#: The registered solvers of eps-models: all but ``consistency``, which samples a distilled
#: consistency model only (its contract: tests/test_consistency.py, tests/test_distill.py).
EPS_SOLVERS = {n: spec for n, spec in SOLVERS.items() if spec.model == "eps"}

# Tiny runs: ``section.key=value`` overrides that keep a training run to seconds on one CPU core.
# A test adds its steps and what it checks (later overrides win).
#: A 2-D MLP run: a small network and batch, no sample plot, on the CPU.
TINY_MLP = ["model.width=16", "model.depth=1", "model.emb_dim=16", "model.fourier_features=4",
            "train.batch_size=32", "train.plot_samples=0", "train.device=cpu",
            "train.calibrate_budget=0"]
#: An image U-Net run on the CPU (the test names the data and the batch size).
TINY_UNET = ["model.name=unet", "model.ch=8", "model.ch_mult=[1, 2]", "model.num_res_blocks=1",
             "model.attn_resolutions=[]", "model.dropout=0.0", "train.device=cpu",
             "train.calibrate_budget=0"]


def cli_sets(overrides: Iterable[str]) -> list[str]:
    """The command-line arguments ``--set KEY=VALUE`` of each override."""
    return [arg for s in overrides for arg in ("--set", s)]


def make_sde(name: str) -> SDE:
    """The default instance of a name of :data:`SDE_NAMES`: a key of ``sde_gen.sde.SDES``, or
    ``vp_cosine``."""
    if name == "vp_cosine":
        return VPSDE(schedule="cosine")
    return SDES[name]()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mixture() -> GaussianMixture:
    """Asymmetric 3-component mixture in 2-D: full covariances, weights 0.2 / 0.3 / 0.5."""
    means = torch.tensor([[-1.5, 0.5], [1.2, 1.0], [0.3, -1.4]], dtype=F64)
    a = torch.tensor([[[0.3, 0.1], [0.0, 0.15]], [[0.2, -0.1], [0.1, 0.3]],
                      [[0.4, 0.0], [0.2, 0.1]]], dtype=F64)
    covs = a @ a.transpose(-1, -2) + 0.01 * torch.eye(2, dtype=F64)
    return GaussianMixture(means, covs, torch.tensor([0.2, 0.3, 0.5], dtype=F64))


def mixture_8d() -> GaussianMixture:
    """Anisotropic 3-component mixture in 8-D (seed 123), weights 0.5 / 0.3 / 0.2."""
    g = seeded(123)
    a = torch.randn(3, 8, 8, generator=g, dtype=F64) * 0.25
    covs = a @ a.transpose(-1, -2) + 0.02 * torch.eye(8, dtype=F64)
    means = torch.randn(3, 8, generator=g, dtype=F64) * 1.5
    return GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2], dtype=F64))


@cache
def ode_reference(sde_name: str, n: int = 256):
    """``(sde, x_T, x_eps)``: n prior samples (seed 3) and their exact PF-ODE solution at the
    default end time (dopri5, tol 1e-10) for :func:`mixture`."""
    sde = SDES[sde_name]()
    x_T = sde.prior_sampling((n, 2), generator=seeded(3), dtype=F64)
    return sde, x_T, mixture().ode_endpoint(sde, x_T, sde.default_t_min)


def one_error_line(res) -> str:
    """The single ``error: ...`` line of a failed command (exit code 2, no traceback)."""
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output
    return lines[0]


def user_error(fn: Callable[[], object]) -> str:
    """The message of the :class:`UserInputError` that ``fn()`` raises, checked to be one line."""
    with pytest.raises(UserInputError) as err:
        fn()
    text = str(err.value)
    assert "\n" not in text and text
    return text


def refuses_the_chain(sde: SDE, solver: str, options: dict) -> bool:
    """Whether ``solver`` with ``options`` walks the discrete chain (its ``discrete`` option, or
    its default) on an SDE that has none (the flow paths): ``sample`` then refuses it in one
    line, which a caller checks with :func:`check_refuses_the_chain`."""
    from sde_gen.sampling import SOLVERS

    spec = SOLVERS[solver]
    walks = bool(options.get("discrete", spec.discrete_default))
    return walks and sde.chain == "none"


def check_refuses_the_chain(fn: Callable[[], object]) -> None:
    """``fn()`` stops with the one-line "no discrete chain" error before any model call."""
    assert "has no discrete chain" in user_error(fn)

