"""Samplers behind one entry point, :func:`sample`."""

from .result import CountingModel, SampleResult
from .sample import SAMPLERS, sample
from .sde_solvers import sample_em

__all__ = ["SAMPLERS", "CountingModel", "SampleResult", "sample", "sample_em"]
