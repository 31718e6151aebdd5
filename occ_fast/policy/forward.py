"""One forward pass of the policy on a micro-batch: per-token log-probs of every head.

The trunk and every MTP depth run once; their rows for the scored tokens go through one fused
``linear_logprob`` call (docs/method.md section 9), so ``lp_main`` and ``lp_mtp`` for the same
token come out of the same launch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from occ_fast.kernels import LinearLogprobOutput
from occ_fast.model import HeadRows, MTPModel, build_head_rows, head_logprobs
from occ_fast.policy.batching import MicroBatch


@dataclass
class HeadOutputs:
    rows: HeadRows
    heads: list[LinearLogprobOutput]  # [0] main head, [k] MTP depth k; each [N] over scored tokens

    def gather(self, per_token: torch.Tensor) -> torch.Tensor:
        """Values of a ``[rows, T]`` tensor at the scored tokens, in head-output order."""
        return per_token.reshape(-1)[self.rows.token_index]

    def mtp_mask(self, depth: int) -> torch.Tensor:
        return self.rows.valid(depth)


def policy_logprobs(
    model: MTPModel,
    batch: MicroBatch,
    *,
    temperature: float,
    with_entropy: bool = False,
    with_mtp: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> HeadOutputs:
    """Log-probs (at the rollout temperature, as the sampler used it) of every head on ``batch``;
    of the main head alone with ``with_mtp=False`` (the MTP depths are then not run at all). Under
    ``autocast_dtype`` the fused head runs in it too (:func:`head_logprobs`)."""
    with torch.autocast(
        batch.input_ids.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
    ):
        out = model(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            with_mtp=with_mtp,
        )
    rows = build_head_rows(out, batch.input_ids, batch.response_mask)
    heads = head_logprobs(
        out, rows, temperature=temperature, return_entropy=with_entropy, compute_dtype=autocast_dtype
    )
    return HeadOutputs(rows, heads)
