"""Samplers behind one entry point, :func:`sample`; each solver is also a plain function."""

from .ancestral import sample_ancestral
from .ddim import sample_ddim
from .dpm import sample_dpm
from .grids import default_eps, make_grid
from .ode import sample_heun, sample_ode
from .result import CountingModel, SampleResult
from .sample import SAMPLERS, sample
from .sde_solvers import sample_em, sample_pc
from .torchsde_backend import sample_torchsde

__all__ = [
    "SAMPLERS", "CountingModel", "SampleResult", "default_eps", "make_grid", "sample",
    "sample_ancestral", "sample_ddim", "sample_dpm", "sample_em", "sample_heun", "sample_ode",
    "sample_pc", "sample_torchsde",
]
