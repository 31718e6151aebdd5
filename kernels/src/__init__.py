"""Fused kernels of occ-fast, installed as ``occ_fast.kernels``."""

from .heads import heads_logprob
from .logprob import LinearLogprobOutput, linear_logprob

__all__ = ["LinearLogprobOutput", "heads_logprob", "linear_logprob"]
