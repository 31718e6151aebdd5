"""Optional speed backends for the trunk: the attention implementation and Liger kernels.

No silent fallbacks: a backend that is asked for and missing raises with the install command;
one that is not asked for is picked when available, and the choice is logged.
"""

from __future__ import annotations

import importlib.util
import logging

import torch.nn as nn

logger = logging.getLogger(__name__)

ATTN_IMPLEMENTATIONS = ("flash_attention_2", "sdpa", "eager")


def choose_attn_implementation(requested: str = "auto") -> str:
    """``flash_attention_2`` when flash-attn is importable, else ``sdpa``; an explicit request must be met."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        chosen = "flash_attention_2" if has_flash else "sdpa"
        logger.info(
            "attention implementation: %s (auto; flash-attn %s)",
            chosen,
            "found" if has_flash else "not installed",
        )
        return chosen
    if requested not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation must be 'auto' or one of {ATTN_IMPLEMENTATIONS}, got {requested!r}"
        )
    if requested == "flash_attention_2" and not has_flash:
        raise ImportError(
            "attn_implementation='flash_attention_2' was asked for but flash-attn is not installed: "
            "pip install occ-fast[flash] (or use 'sdpa')"
        )
    logger.info("attention implementation: %s (requested)", requested)
    return requested


def apply_liger(base: nn.Module) -> None:
    """Swap the trunk's RMSNorm, SwiGLU and RoPE for Liger's Triton kernels (in place, CUDA only).

    Liger patches RoPE module-wide (the architecture's ``apply_rotary_pos_emb``), so the MTP
    layers, built from the same classes, use it too; norms and MLPs are patched per instance.
    """
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError as err:
        raise ImportError("use_liger=True needs liger-kernel: pip install occ-fast[liger]") from err
    _apply_liger_kernel_to_instance(
        model=base,
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
    )
    logger.info("Liger kernels applied to the trunk: RMSNorm, SwiGLU, RoPE")
