"""Checkpoint names of MTP weights: MiMo and DeepSeek conventions, mapped to :class:`MTPLayer` names.

- MiMo: ``model.mtp_layers.{k-1}.{hidden_layernorm, token_layernorm, input_proj, final_layernorm}``
  plus the decoder layer's own submodules at the same level; ``input_proj`` is hidden-first.
- DeepSeek: ``model.layers.{N+k-1}.{hnorm, enorm, eh_proj, shared_head.norm}`` plus the decoder
  layer's submodules (N = trunk layers); ``eh_proj`` is embedding-first, so its column halves are
  swapped on the way in and out. DeepSeek checkpoints also carry per-depth copies of the shared
  embedding and lm_head (``embed_tokens``, ``shared_head.head``): ignored at load (the trunk's are
  shared), written at save so that vLLM's MTP drafter finds them.

The naming is also the checkpoint *format*, and a format fixes which trunk state the first MTP depth
reads (:data:`HIDDEN_INPUT`): MiMo's model hands its MTP layer the last decoder layer's output before
the final norm (its ``compute_logits`` applies the norm), DeepSeek-V3's hands it the normed output.
Training, diagnostics, export and vLLM's drafter all follow the format, so an MTP head sees the same
inputs everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

import torch

Naming = Literal["mimo", "deepseek"]
NAMINGS: tuple[Naming, ...] = ("mimo", "deepseek")

_RENAMES: dict[str, list[tuple[str, str]]] = {
    "mimo": [
        ("hidden_layernorm.", "hidden_layernorm."),
        ("token_layernorm.", "token_layernorm."),
        ("input_proj.", "input_proj."),
        ("final_layernorm.", "final_layernorm."),
        ("layer.", ""),
    ],
    "deepseek": [
        ("hidden_layernorm.", "hnorm."),
        ("token_layernorm.", "enorm."),
        ("input_proj.", "eh_proj."),
        ("final_layernorm.", "shared_head.norm."),
        ("layer.", ""),
    ],
}
HiddenInput = Literal["pre_norm", "post_norm"]
HIDDEN_INPUT: dict[Naming, HiddenInput] = {"mimo": "pre_norm", "deepseek": "post_norm"}
SHARED_COPIES = {"deepseek": ("embed_tokens.weight", "shared_head.head.weight"), "mimo": ()}


def prefix(naming: Naming, depth: int, num_hidden_layers: int) -> str:
    """Checkpoint key prefix of MTP depth ``depth`` (1-based)."""
    if naming == "mimo":
        return f"model.mtp_layers.{depth - 1}."
    if naming == "deepseek":
        return f"model.layers.{num_hidden_layers + depth - 1}."
    raise ValueError(f"naming must be one of {NAMINGS}, got {naming!r}")


def checkpoint_key(naming: Naming, depth: int, num_hidden_layers: int, key: str) -> str:
    """The checkpoint name of :class:`MTPLayer` parameter ``key`` at depth ``depth``."""
    for ours, theirs in _RENAMES[naming]:
        if key.startswith(ours):
            return prefix(naming, depth, num_hidden_layers) + theirs + key[len(ours) :]
    raise KeyError(f"MTP parameter {key!r} has no {naming} checkpoint name")


def convert(naming: Naming, key: str, tensor: torch.Tensor) -> torch.Tensor:
    """Reorder a tensor between our layout and the checkpoint's (an involution: same both ways)."""
    if naming == "deepseek" and key == "input_proj.weight":
        half = tensor.shape[1] // 2
        return torch.cat([tensor[:, half:], tensor[:, :half]], dim=1)
    return tensor


def detect(keys: Iterable[str], num_hidden_layers: int) -> tuple[Naming, int] | None:
    """``(naming, depths)`` of the MTP weights among checkpoint ``keys``, or None if there are none."""
    mimo, deepseek = set(), set()
    for key in keys:
        if m := re.match(r"model\.mtp_layers\.(\d+)\.", key):
            mimo.add(int(m.group(1)))
        elif (m := re.match(r"model\.layers\.(\d+)\.", key)) and int(m.group(1)) >= num_hidden_layers:
            deepseek.add(int(m.group(1)) - num_hidden_layers)
    if mimo and deepseek:
        raise ValueError(
            "checkpoint carries both MiMo-style (model.mtp_layers.*) and DeepSeek-style "
            f"(model.layers.{num_hidden_layers}+.*) MTP weights; cannot tell which to use"
        )
    if mimo:
        return "mimo", max(mimo) + 1
    if deepseek:
        return "deepseek", max(deepseek) + 1
    return None
