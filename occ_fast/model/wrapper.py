"""A transformers causal LM plus K chained MTP heads, returning rows for the fused log-prob kernel.

The forward never computes logits: it returns the trunk's final hidden states, each MTP depth's
hidden states and the shared output matrix, so the trainer can score every head's rows in one
:func:`occ_fast.kernels.heads_logprob` call (see :mod:`occ_fast.model.rows`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers import PreTrainedModel

from .backends import choose_attn_implementation
from .layout import Layout, attention_inputs, make_layout, shift_left
from .mtp import MTPLayer
from .naming import HIDDEN_INPUT, Naming

logger = logging.getLogger(__name__)


@dataclass
class MTPForwardOutput:
    """``hidden``: trunk rows ``[B, T, H]`` after the final norm (row i predicts token i+1).
    ``mtp_hidden[k-1]``: depth-k rows ``[B, T, H]`` (row i predicts token i+k+1).
    ``weight``: the ``[V, H]`` lm_head for the main rows; ``mtp_weight``: the same tensor, or a
    detached view of it when the MTP objective must not reach lm_head (``detach_lm_head``)."""

    hidden: torch.Tensor
    mtp_hidden: list[torch.Tensor]
    weight: torch.Tensor
    mtp_weight: torch.Tensor
    layout: Layout


class MTPModel(nn.Module):
    """``base`` (any HF decoder-only causal LM with Llama-style layers) with ``len(mtp)`` MTP depths
    (``K = 0`` is the plain model: the ``none`` regime).

    Gradient routing: ``detach_trunk`` detaches the trunk hidden state and the token embedding at
    the MTP input (the "detach" regime); ``detach_lm_head`` detaches the embedding at the MTP input
    and hands out a detached ``mtp_weight``, so the MTP objective never reaches lm_head/embedding.
    ``naming`` is the checkpoint format used when saving (``mimo`` or ``deepseek``); it also fixes
    the trunk state depth 1 reads (:data:`~occ_fast.model.naming.HIDDEN_INPUT`: MiMo before the final
    norm, DeepSeek after it), and, as vLLM's drafters do, depth 1 sees a zero token embedding on the
    row at position 0.
    """

    def __init__(
        self,
        base: PreTrainedModel,
        mtp: list[MTPLayer],
        *,
        naming: Naming = "mimo",
        detach_trunk: bool = False,
        detach_lm_head: bool = False,
    ):
        super().__init__()
        if getattr(base.get_output_embeddings(), "bias", None) is not None:
            raise ValueError(
                "lm_head with a bias is not supported: the fused log-prob kernel takes a weight only"
            )
        self.base = base
        self.mtp = nn.ModuleList(mtp)
        self.naming = naming
        self.detach_trunk = detach_trunk
        self.detach_lm_head = detach_lm_head

    @classmethod
    def from_base(
        cls,
        base: PreTrainedModel,
        num_mtp: int = 1,
        *,
        attn_implementation: str = "auto",
        naming: Naming = "mimo",
        detach_trunk: bool = False,
        detach_lm_head: bool = False,
    ) -> MTPModel:
        """Wrap an in-memory model with ``num_mtp`` fresh MTP depths (see :meth:`MTPLayer.init_fresh`)."""
        base.set_attn_implementation(choose_attn_implementation(attn_implementation))
        layers = [new_mtp_layer(base) for _ in range(num_mtp)]
        for layer in layers:
            layer.init_fresh(decoder_of(base).layers[-1])
        logger.info("MTP init: fresh (%d depth(s): last trunk layer copied, norms 1, P = [I, 0])", num_mtp)
        return cls(base, layers, naming=naming, detach_trunk=detach_trunk, detach_lm_head=detach_lm_head)

    @property
    def num_mtp(self) -> int:
        return len(self.mtp)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        with_mtp: bool = True,
    ) -> MTPForwardOutput:
        """Run the trunk and every MTP depth on ``[B, T]`` ids (padded and/or packed, see :mod:`.layout`).

        ``with_mtp=False`` skips the MTP depths (``mtp_hidden`` is empty): for main-head-only passes."""
        layout = make_layout(input_ids, attention_mask, position_ids)
        decoder = decoder_of(self.base)
        impl = self.base.config._attn_implementation
        flat = impl == "flash_attention_2"
        batch, length = input_ids.shape

        def run(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(1, batch * length, *x.shape[2:]) if flat else x

        def back(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, length, *x.shape[2:]) if flat else x

        attn = attention_inputs(layout, impl, self.base.dtype)
        pre_norm: list[torch.Tensor] = []  # the final norm's input, when the format feeds it to depth 1
        hook = None
        if with_mtp and self.mtp and HIDDEN_INPUT[self.naming] == "pre_norm":
            hook = decoder.norm.register_forward_pre_hook(lambda _, args: pre_norm.append(args[0]))
        # One embedding call feeds the trunk and the MTP inputs: under FSDP2 the embedding is a unit of
        # its own, all-gathered once per forward (and once in backward, when its gradient is due).
        embeds = self.base.get_input_embeddings()(input_ids)
        try:
            hidden = decoder(
                inputs_embeds=run(embeds), position_ids=run(layout.position_ids), use_cache=False, **attn
            ).last_hidden_state
        finally:
            if hook is not None:
                hook.remove()
        hidden = back(hidden)

        previous = back(pre_norm[-1]) if pre_norm else hidden
        previous = previous.detach() if self.detach_trunk else previous
        if self.detach_trunk or self.detach_lm_head:
            embeds = embeds.detach()
        mtp_hidden = []
        for k, layer in enumerate(self.mtp if with_mtp else [], start=1):
            # Row i reads token i+k, at position i+k; rows whose token i+k lies in another
            # sequence (or past the row) get a zero embedding and are never scored. Depth 1 also
            # zeroes the sequence's first row (trunk position 0), as vLLM's MTP drafters do.
            ahead = layout.same_sequence_ahead(k)
            if k == 1:
                ahead = ahead & (layout.position_ids != 0)
            token_embeds = shift_left(embeds, k) * ahead[..., None].to(embeds.dtype)
            positions = layout.position_ids + k
            rotary = decoder.rotary_emb(previous, run(positions))
            out = layer(run(previous), run(token_embeds), rotary, run(positions), **attn)
            previous = back(out)
            mtp_hidden.append(previous)

        weight = self.base.get_output_embeddings().weight
        mtp_weight = weight.detach() if self.detach_lm_head else weight
        return MTPForwardOutput(hidden, mtp_hidden, weight, mtp_weight, layout)


def decoder_of(base: PreTrainedModel) -> nn.Module:
    """The inner decoder (``base.model`` for Llama/Qwen), checked for what the MTP path needs."""
    decoder = base.get_decoder()
    for attr in ("layers", "norm", "rotary_emb", "embed_tokens"):
        if not hasattr(decoder, attr):
            raise TypeError(
                f"{type(base).__name__}: decoder {type(decoder).__name__} has no '{attr}'; MTP needs a "
                "Llama-style decoder (Llama, Qwen2/Qwen3, MiMo)"
            )
    types = set(getattr(base.config, "layer_types", None) or ["full_attention"])
    if types != {"full_attention"}:
        raise NotImplementedError(
            f"{type(base).__name__}: layer types {sorted(types)} are not supported; only full attention "
            "(sliding-window layers would need a windowed block-diagonal mask)"
        )
    return decoder


def new_mtp_layer(base: PreTrainedModel) -> MTPLayer:
    """An uninitialised MTP depth built from the base's own decoder-layer and norm classes."""
    decoder = decoder_of(base)
    layer = MTPLayer(base.config, type(decoder.layers[-1]), type(decoder.norm))
    return layer.to(device=base.device, dtype=base.dtype)
