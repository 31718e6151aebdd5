"""A forecast of MTP speculative decoding from what the training forward already computes.

A drafter proposes, after the last token ``t`` the target model has produced, tokens ``t+1 .. t+n``:
depth k predicts ``t+k`` from row ``t-1`` (the same row our depth-k head uses for token ``t+k``) and
the drafts are accepted while they equal the target's tokens. For greedy decoding, "depth k's argmax
is the sampled token" is exactly "depth k's draft is accepted"; for sampled rollouts it is an unbiased
draw of the acceptance probability (vLLM accepts an argmax draft ``d`` with probability ``p(d)``, and
the sampled token equals ``d`` with that probability). So, per draft position ``t`` (a response token
followed by another), the drafts accepted with ``n`` speculative tokens are the number of leading
depths ``k <= n`` whose argmax hits token ``t+k``; averaged over every position, that is the forecast.

vLLM drafts only at the positions its schedule visits (after ``a`` accepted drafts it moves ``a+1``
tokens on). Which positions those are matters: accepted drafts cluster (a predictable stretch of
text is predictable throughout), so the schedule, which skips the position after every accepted
draft, sees fewer of them than an average over every position. For one speculative token (MiMo's
case in vLLM) the forecast replays the schedule exactly; for more, it averages over every position.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import count

import torch

from occ_fast.model.layout import shift_left
from occ_fast.policy.forward import HeadOutputs


def draft_counts(out: HeadOutputs) -> dict[str, torch.Tensor]:
    """Sums over a micro-batch (``count/`` keys, added across micro-batches and ranks): per depth k,
    its argmax hits and rows; every draft position and those whose first k drafts are all accepted;
    and the draft positions one-token speculation visits (:func:`one_token_schedule`) with their
    accepted drafts. Empty without MTP heads."""
    rows, depths = out.rows, len(out.heads) - 1
    if depths < 1:
        return {}
    scored = rows.to_dense(torch.ones_like(out.heads[0].logprob)).bool()
    drafts = scored & shift_left(rows.to_dense(rows.valid(1).float()).bool(), 1, fill=False)
    counts = {"count/spec_drafts": drafts.sum()}
    accepted = drafts
    for k in range(1, depths + 1):
        head, valid = out.heads[k], rows.valid(k)
        hit = (head.logprob >= head.max_logprob - 1e-6) & valid
        accepted = accepted & shift_left(rows.to_dense(hit.float()).bool(), k, fill=False)
        counts[f"count/spec_hits_d{k}"] = hit.sum()
        counts[f"count/spec_rows_d{k}"] = valid.sum()
        counts[f"count/spec_accepted_d{k}"] = accepted.sum()
        if k == 1:
            visited = one_token_schedule(drafts, accepted)
            counts["count/spec_visited"] = visited.sum()
            counts["count/spec_visited_accepted"] = (visited & accepted).sum()
    return {key: value.detach().float() for key, value in counts.items()}


def one_token_schedule(drafts: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: the draft positions (``drafts``) one-token speculative decoding visits, given
    where its draft would be accepted (``accepted``, False off draft positions). A sequence's first
    draft position is visited; after a visited position the next is visited unless the draft there
    was accepted (the accepted token and the bonus token both come out, so the schedule skips one).
    So a position is visited iff the run of accepted positions just before it has even length."""
    length = accepted.shape[-1]
    index = torch.arange(length, device=accepted.device).expand_as(accepted)
    last_rejected = torch.where(accepted, -1, index).cummax(dim=-1).values  # last index <= t not accepted
    run = index - last_rejected  # accepted positions ending at t
    run_before = torch.nn.functional.pad(run[..., :-1], (1, 0))
    return drafts & (run_before % 2 == 0)


def forecast(sums: Mapping[str, float | torch.Tensor]) -> dict[str, float]:
    """From :func:`draft_counts` sums: ``mtp/top1_depth{k}`` (depth k's argmax hit rate) and, for
    ``n`` speculative tokens (every ``n`` up to the depth count), vLLM's two acceptance figures:
    ``spec/forecast_acceptance_rate_n{n}`` (accepted / drafted tokens) and
    ``spec/forecast_mean_acceptance_length_n{n}`` (1 + accepted tokens per draft). For ``n = 1`` they
    follow the decoding schedule (exact for greedy rollouts); for ``n >= 2`` they average over every
    draft position (the schedule there depends on each depth's hits in turn). With two depths or more,
    ``spec/forecast_acceptance_rate_pos{i}``: the share of draft positions whose first ``i + 1`` drafts
    are all accepted, vLLM's per-position figure (``rollout/spec_acceptance_rate_pos{i}``), averaged
    over every draft position."""
    out: dict[str, float] = {}
    accepted = 0.0
    drafts = float(sums.get("count/spec_drafts", 0.0))
    for k in count(1):
        if f"count/spec_rows_d{k}" not in sums:
            break
        rows = max(float(sums[f"count/spec_rows_d{k}"]), 1.0)
        out[f"mtp/top1_depth{k}"] = float(sums[f"count/spec_hits_d{k}"]) / rows
        accepted += float(sums[f"count/spec_accepted_d{k}"])
        per_draft = accepted / drafts if drafts > 0 else None
        if k == 1:
            visited = float(sums["count/spec_visited"])
            per_draft = float(sums["count/spec_visited_accepted"]) / visited if visited > 0 else None
        if per_draft is not None:
            out[f"spec/forecast_acceptance_rate_n{k}"] = per_draft / k
            out[f"spec/forecast_mean_acceptance_length_n{k}"] = 1.0 + per_draft
    depths = k - 1
    if drafts > 0 and depths > 1:  # beside vLLM's rollout/spec_acceptance_rate_pos{i}
        for d in range(1, depths + 1):
            out[f"spec/forecast_acceptance_rate_pos{d - 1}"] = (
                float(sums[f"count/spec_accepted_d{d}"]) / drafts
            )
    return out


def forecast_weights(sums: Mapping[str, float | torch.Tensor]) -> dict[str, float]:
    """What each :func:`forecast` figure is a mean over, to combine ranks by: depth k's rows for its
    hit rate, the visited positions for ``n = 1``, every draft position for ``n >= 2``."""
    out: dict[str, float] = {}
    for k in count(1):
        if f"count/spec_rows_d{k}" not in sums:
            break
        out[f"mtp/top1_depth{k}"] = float(sums[f"count/spec_rows_d{k}"])
        positions = float(sums["count/spec_visited" if k == 1 else "count/spec_drafts"])
        for name in ("acceptance_rate", "mean_acceptance_length"):
            out[f"spec/forecast_{name}_n{k}"] = positions
    return out
