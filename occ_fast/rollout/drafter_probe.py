"""The drafter probe: does vLLM's MTP drafter predict what the trainer's MTP heads predict?

The trunk probe cannot see a stale drafter (its weights play no part in what is sampled). After a
sync, the engine decodes a fixed probe batch greedily with drafts; greedy speculative decoding is
then replayed on the same tokens with the trainer's own depth-k argmax (a draft after token t
proposes t+1..t+n, a leading run of a hits is accepted and the next draft follows token t+a+1). A
drafter holding the trainer's heads gives vLLM's draft and accept counts (exactly, in fp32); a stale
one does not. Greedy, so that it also runs where sampling with drafts does not (vLLM's CPU build).
"""

from __future__ import annotations

import torch

from occ_fast.policy.batching import Sample, make_micro_batches
from occ_fast.policy.forward import policy_logprobs

# Largest |vLLM's acceptance rate - the replay's| on the probe, by engine dtype: in fp32 they agree to
# the draft; in lower precision an argmax near a tie can flip.
DRAFTER_TOLERANCES = {"float32": 0.05, "float16": 0.15, "bfloat16": 0.15}
PROBE_TOKENS = 24


class DrafterSyncError(RuntimeError):
    """vLLM's MTP drafter does not predict what the trainer's MTP heads predict."""


def probe_prompts(vocab: int) -> list[list[int]]:
    """The fixed probe batch: four prompts of different lengths, the same on every rank and sync."""
    return [[(p * 31 + 11 * i + 5) % vocab for i in range(4 + 3 * p)] for p in range(4)]


@torch.no_grad()
def replay_greedy_drafts(
    model: torch.nn.Module, prompts: list[list[int]], completions: list[list[int]], n: int
) -> dict[str, int]:
    """vLLM's counts (``drafts``, ``draft_tokens``, ``accepted_tokens``) for greedy decoding of
    ``completions`` after ``prompts`` with ``n`` draft tokens from ``model``'s MTP heads (an
    :class:`~occ_fast.model.MTPModel`). vLLM drafts after every token it produces except the last."""
    samples = [Sample(p, c, torch.zeros(len(c)), 0.0) for p, c in zip(prompts, completions, strict=True)]
    (micro,) = make_micro_batches(samples, token_budget=10**9, batch_size=len(samples))
    device = next(model.parameters()).device
    out = policy_logprobs(model, micro.to(device), temperature=1.0)
    hits = []
    for k in range(1, n + 1):
        head = out.heads[k]
        hit = (head.logprob >= head.max_logprob - 1e-6) & out.rows.valid(k)
        hits.append(out.rows.to_dense(hit.float()).bool().cpu())
    drafts = accepted = 0
    for b, (prompt, completion) in enumerate(zip(prompts, completions)):
        t, last = len(prompt), len(prompt) + len(completion) - 1
        while t < last:
            a = 0
            while a < n and t + a + 1 <= last and hits[a][b, t + a + 1]:
                a += 1
            drafts, accepted, t = drafts + 1, accepted + a, t + a + 1
    return {"drafts": drafts, "draft_tokens": n * drafts, "accepted_tokens": accepted}


def check_drafter(
    measured: dict[str, int], replayed: dict[str, int], *, tolerance: float, context: str
) -> dict[str, float]:
    """The probe's acceptance rates, vLLM's and the replay's; raises :class:`DrafterSyncError` when
    they differ by more than ``tolerance`` (or vLLM drafted nothing)."""
    if not measured.get("draft_tokens") or not replayed["draft_tokens"]:
        raise DrafterSyncError(f"vLLM drafted no tokens in the drafter probe{context}: {measured}")
    rates = {
        "measured": measured["accepted_tokens"] / measured["draft_tokens"],
        "replayed": replayed["accepted_tokens"] / replayed["draft_tokens"],
    }
    if abs(rates["measured"] - rates["replayed"]) > tolerance:
        raise DrafterSyncError(
            f"vLLM's MTP drafter disagrees with the trainer's MTP heads{context}: acceptance "
            f"{rates['measured']:.3f} measured vs {rates['replayed']:.3f} replayed on the probe "
            f"(tolerance {tolerance}); the drafter's weight sync failed or was skipped"
        )
    return rates
