"""One MTP depth (DeepSeek-V3 / MiMo style), built from the base model's own layer classes.

``z_i = P [RMSNorm_h(h_i); RMSNorm_e(E[s_{i+k}])]``, ``o_i = RMSNorm_f(DecoderLayer(z)_i)``. The
projection ``P`` is stored hidden-first (MiMo's order); DeepSeek-named checkpoints are converted
at load and save (:mod:`occ_fast.model.naming`), so one forward serves both.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import PretrainedConfig


class MTPLayer(nn.Module):
    """Norms, the ``2H -> H`` projection, one decoder layer of the base architecture, a final norm."""

    def __init__(
        self, config: PretrainedConfig, decoder_layer_cls: type[nn.Module], norm_cls: type[nn.Module]
    ):
        super().__init__()
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.hidden_layernorm = norm_cls(hidden, eps=eps)
        self.token_layernorm = norm_cls(hidden, eps=eps)
        self.input_proj = nn.Linear(2 * hidden, hidden, bias=False)
        # The layer index only selects per-layer options (sliding window, cache slot); the last
        # trunk layer's index is always valid, and the MTP layers never use a cache.
        self.layer = decoder_layer_cls(config, layer_idx=config.num_hidden_layers - 1)
        self.final_layernorm = norm_cls(hidden, eps=eps)

    def forward(
        self,
        hidden: torch.Tensor,
        token_embeds: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        position_ids: torch.Tensor,
        **attention_kwargs,
    ) -> torch.Tensor:
        """``hidden``, ``token_embeds``: ``[B, T, H]``, row i holding ``h_i`` and ``E[s_{i+k}]``."""
        z = self.input_proj(
            torch.cat([self.hidden_layernorm(hidden), self.token_layernorm(token_embeds)], dim=-1)
        )
        u = self.layer(
            z,
            position_ids=position_ids,
            position_embeddings=position_embeddings,
            use_cache=False,
            **attention_kwargs,
        )
        return self.final_layernorm(u)

    @torch.no_grad()
    def init_fresh(self, trunk_layer: nn.Module) -> None:
        """Start close to the trunk's own prediction: copy the last trunk layer, norms at 1,
        ``P = [I, 0]`` so the projection passes the (normed) trunk hidden state through."""
        self.layer.load_state_dict(trunk_layer.state_dict())
        for norm in (self.hidden_layernorm, self.token_layernorm, self.final_layernorm):
            norm.weight.fill_(1.0)
        hidden = self.input_proj.out_features
        self.input_proj.weight.zero_()
        self.input_proj.weight[:, :hidden].copy_(torch.eye(hidden))
