"""sde-gen: score-based generative modelling with stochastic differential equations."""

from . import guidance
from .analytic import GaussianMixture
from .losses import dsm_loss
from .noise import IndexedGenerator
from .parameterization import ScoreModel, denoise_fn, score_fn
from .sampling import SampleResult, colorize, impute, sample
from .sde import SDE, VESDE, VPSDE, ReverseSDE, SubVPSDE

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "GaussianMixture",
    "IndexedGenerator",
    "ReverseSDE",
    "SampleResult",
    "ScoreModel",
    "SubVPSDE",
    "VESDE",
    "VPSDE",
    "colorize",
    "denoise_fn",
    "dsm_loss",
    "guidance",
    "impute",
    "sample",
    "score_fn",
]
