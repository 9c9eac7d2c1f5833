"""Exact likelihoods through the probability-flow ODE, bits/dim, encode/decode."""

from .ode_likelihood import LikelihoodResult, decode, encode, log_likelihood, slerp
from .bpd import bits_per_dim

__all__ = ["LikelihoodResult", "bits_per_dim", "decode", "encode", "log_likelihood", "slerp"]
