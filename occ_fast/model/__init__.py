"""The MTP model: a Hugging Face causal LM with K chained MTP heads, their rows for the fused
log-prob kernel, and loading/saving of MiMo- and DeepSeek-style checkpoints."""

from .backends import apply_liger, choose_attn_implementation, describe_liger, liger_counts
from .checkpoint import (
    ModelDirError,
    MTPCheckpointError,
    check_model_dir,
    load_config,
    load_mtp_model,
    save_mtp_model,
)
from .layout import Layout, make_layout
from .mtp import MTPLayer
from .naming import Naming
from .rows import HeadRows, build_head_rows, head_logprobs
from .wrapper import MTPForwardOutput, MTPModel

__all__ = [
    "HeadRows",
    "Layout",
    "MTPCheckpointError",
    "MTPForwardOutput",
    "MTPLayer",
    "MTPModel",
    "ModelDirError",
    "Naming",
    "apply_liger",
    "describe_liger",
    "liger_counts",
    "build_head_rows",
    "check_model_dir",
    "choose_attn_implementation",
    "head_logprobs",
    "load_config",
    "load_mtp_model",
    "make_layout",
    "save_mtp_model",
]
