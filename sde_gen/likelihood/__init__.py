"""Exact likelihoods through the probability-flow ODE, bits/dim, encode/decode."""

from .bpd import bits_per_dim
from .ode_likelihood import LikelihoodResult, decode, encode, log_likelihood, slerp
from .vlb import VLBResult, discretized_gaussian_log_likelihood, vlb

__all__ = [
    "LikelihoodResult", "VLBResult", "bits_per_dim", "decode",
    "discretized_gaussian_log_likelihood", "encode", "log_likelihood", "slerp", "vlb",
]
