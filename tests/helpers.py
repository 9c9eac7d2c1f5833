"""Shared test helpers: the exact 2-D mixture the solver tests measure on, seeded generators,
and the CLI's one-line error check."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pytest
import torch

from sde_gen.analytic import GaussianMixture
from sde_gen.errors import UserInputError
from sde_gen.sde import VESDE, VPSDE, SubVPSDE

F64 = torch.float64
SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mixture() -> GaussianMixture:
    """Asymmetric 3-component mixture in 2-D: full covariances, weights 0.2 / 0.3 / 0.5."""
    means = torch.tensor([[-1.5, 0.5], [1.2, 1.0], [0.3, -1.4]], dtype=F64)
    a = torch.tensor([[[0.3, 0.1], [0.0, 0.15]], [[0.2, -0.1], [0.1, 0.3]],
                      [[0.4, 0.0], [0.2, 0.1]]], dtype=F64)
    covs = a @ a.transpose(-1, -2) + 0.01 * torch.eye(2, dtype=F64)
    return GaussianMixture(means, covs, torch.tensor([0.2, 0.3, 0.5], dtype=F64))


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
