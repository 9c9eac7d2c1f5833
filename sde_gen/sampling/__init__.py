"""Samplers behind one entry point, :func:`sample`; each solver is also a plain function.

:data:`SOLVERS` lists them (name -> :class:`SolverSpec`, declared in each solver's module:
function, options, default grid, whether stochastic, model calls per step, order); benchmarks
and tools iterate over it. Conditional sampling with an unconditional model: :func:`impute`
(imputation, inpainting, SMC) and :func:`colorize`. :func:`calibrate` learns a fast solver's
grid for one model (LD3).
"""

from .ancestral import sample_ancestral
from .calibrate import CALIBRATABLE, Calibration, calibrate
from .colorize import colorize
from .consistency import sample_consistency
from .ddim import sample_ddim
from .deis import sample_deis
from .dpm import sample_dpm
from .grids import make_grid
from .impute import impute
from .ipndm import sample_ipndm
from .ode import sample_heun, sample_ode
from .result import SampleResult
from .sample import sample
from .sde_solvers import sample_em, sample_pc, sample_sde
from .solvers import SOLVERS
from .spec import Option, SolverSpec
from .torchsde_backend import sample_torchsde
from .unipc import sample_unipc

__all__ = [
    "CALIBRATABLE", "Calibration", "calibrate",
    "SOLVERS", "Option", "SampleResult", "SolverSpec", "colorize", "impute", "make_grid",
    "sample", "sample_ancestral", "sample_consistency", "sample_ddim", "sample_deis",
    "sample_dpm", "sample_em", "sample_heun", "sample_ipndm", "sample_ode", "sample_pc",
    "sample_sde", "sample_torchsde", "sample_unipc",
]
