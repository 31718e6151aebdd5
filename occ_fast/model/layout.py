"""Which tokens of a batch belong to the same sequence, and attention inputs that keep sequences apart.

A batch is ``[B, T]`` token ids laid out padded (one sequence per row, ``attention_mask`` 0 on
padding), packed (several sequences per row, ``position_ids`` restarting at each sequence), or
both (packed rows with trailing padding). Everything downstream, the trunk's and the MTP layers'
attention and the MTP heads' look-ahead, reads the sequence structure from one :class:`Layout`.

Attention masking, by implementation:

- ``sdpa`` / ``eager`` (CPU and the GPU fallback): an explicit 4D block-diagonal causal mask
  ``[B, 1, T, T]`` (bool for sdpa, additive float for eager). Padding queries attend to
  themselves only, so no row is fully masked (no NaN); no real token ever attends to padding.
- ``flash_attention_2``: the batch is flattened to one row and the varlen kwargs
  (``cu_seq_lens_*``, ``max_length_*``) are passed explicitly, one segment per sequence (a run
  of padding is a segment of its own). Explicit kwargs, rather than HF's detection from
  ``position_ids``, because the MTP layers run at shifted positions (row i at position i + k).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    """``segment_ids`` ``[B, T]``: equal ids = same sequence (ids count per row), -1 on padding.
    ``position_ids`` ``[B, T]``: the trunk's rotary positions."""

    segment_ids: torch.Tensor
    position_ids: torch.Tensor

    def same_sequence_ahead(self, k: int) -> torch.Tensor:
        """``[B, T]`` bool: token ``i + k`` exists and lies in the same sequence as token ``i``."""
        seg = self.segment_ids
        ahead = shift_left(seg, k, fill=-1)
        return (seg >= 0) & (ahead == seg)


def make_layout(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> Layout:
    """Derive the layout: a sequence starts at the first real token of a row, after padding, or
    wherever ``position_ids`` do not continue by +1. Without ``position_ids``, each row is one
    sequence and positions count its real tokens (left or right padding)."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        valid = torch.ones_like(input_ids, dtype=torch.bool)
    elif attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask must match input_ids {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
        )
    else:
        valid = attention_mask.bool()
    if position_ids is None:
        position_ids = (valid.long().cumsum(-1) - 1).clamp_min(0)
    elif position_ids.shape != input_ids.shape:
        raise ValueError(
            f"position_ids must match input_ids {tuple(input_ids.shape)}, got {tuple(position_ids.shape)}"
        )
    position_ids = position_ids.long()
    prev_valid = torch.nn.functional.pad(valid[:, :-1], (1, 0), value=False)
    continues = position_ids[:, 1:] == position_ids[:, :-1] + 1
    continues = torch.nn.functional.pad(continues, (1, 0), value=False)
    starts = valid & ~(prev_valid & continues)
    segment_ids = torch.where(valid, starts.long().cumsum(-1) - 1, -1)
    return Layout(segment_ids=segment_ids, position_ids=position_ids)


def shift_left(x: torch.Tensor, k: int, fill: float | int = 0) -> torch.Tensor:
    """``out[:, i] = x[:, i + k]``, ``fill`` past the end of the row (dim 1)."""
    if k == 0:
        return x
    pad = x.new_full((x.shape[0], min(k, x.shape[1]), *x.shape[2:]), fill)
    return torch.cat([x[:, k:], pad], dim=1)


def attention_inputs(layout: Layout, attn_implementation: str, dtype: torch.dtype) -> dict:
    """Keyword arguments that make a decoder (or one decoder layer) attend within sequences only.

    For ``flash_attention_2`` the caller must flatten ``[B, T]`` inputs to ``[1, B*T]``.
    """
    if attn_implementation == "flash_attention_2":
        return _varlen_kwargs(layout.segment_ids)
    seg = layout.segment_ids
    t = seg.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=seg.device).tril()
    allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0) & causal
    allowed = allowed | torch.eye(t, dtype=torch.bool, device=seg.device)
    allowed = allowed[:, None]
    if attn_implementation == "sdpa":
        return {"attention_mask": allowed}
    if attn_implementation == "eager":
        additive = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
        return {"attention_mask": additive.masked_fill(~allowed, torch.finfo(dtype).min)}
    raise ValueError(
        f"unsupported attention implementation {attn_implementation!r}: use flash_attention_2, sdpa or eager"
    )


def _varlen_kwargs(segment_ids: torch.Tensor) -> dict:
    seg = segment_ids.reshape(-1)
    t = segment_ids.shape[1]
    index = torch.arange(seg.numel(), device=seg.device)
    boundary = (index % t == 0) | torch.nn.functional.pad(seg[1:] != seg[:-1], (1, 0), value=True)
    starts = index[boundary].to(torch.int32)
    cu_seq_lens = torch.cat([starts, starts.new_tensor([seg.numel()])])
    max_length = int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())
    return {
        "attention_mask": None,
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": max_length,
        "max_length_k": max_length,
    }
