"""Optional speed backends for the trunk: the attention implementation and Liger kernels.

No silent fallbacks: a backend that is asked for and missing raises with the install command;
one that is not asked for is picked when available, and the choice is logged.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

import torch.nn as nn

from occ_fast.config import ConfigError

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
    """Swap the trunk's RMSNorm, SwiGLU and RoPE for Liger's Triton kernels (in place, CUDA only),
    and log what was patched.

    Liger replaces the architecture's RoPE function and its RMSNorm and MLP classes module-wide, and
    patches the trunk's existing norms and MLPs per instance; MTP layers built afterwards from those
    classes get Liger's too. Liger skips a model type it does not know without a word: nothing
    patched is a :class:`ConfigError` naming the type (asked for and absent, like a missing package).
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
    counts = liger_counts(base)
    if not any(patched for patched, _ in counts.values()):
        model_type = getattr(getattr(base, "config", None), "model_type", None)
        raise ConfigError(
            f"model.use_liger: liger-kernel has no kernels for model type {model_type!r}: nothing was "
            "patched (set model.use_liger false)"
        )
    logger.info("Liger kernels in the trunk: %s", describe_liger(counts))


def liger_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(patched, total) per kind: RMSNorm and MLP modules (Liger's classes, or patched instances,
    which report Liger's name), and RoPE (the architecture's modeling-module function: 1 or 0 of 1)."""
    counts = {}
    for kind in ("RMSNorm", "MLP"):
        modules = [m for m in model.modules() if type(m).__name__.endswith(kind)]
        counts[kind] = (sum(m._get_name().startswith("Liger") for m in modules), len(modules))
    ropes = [getattr(sys.modules[type(m).__module__], "apply_rotary_pos_emb", None) for m in model.modules()]
    rope = next((r for r in ropes if r is not None), None)
    counts["RoPE"] = (int(getattr(rope, "__module__", "").startswith("liger_kernel")), int(rope is not None))
    return counts


def describe_liger(counts: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{kind} {patched}/{total}" for kind, (patched, total) in counts.items())
