"""Stages 5-6 of the RL step: whole groups into mini-batches and micro-batches, the old log-probs,
and one optimizer step per mini-batch (forward, loss, backward, clip, step)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
import torch.distributed as dist

from occ_fast.algorithm import compute_loss, padded_response_entries
from occ_fast.algorithm.sequences import sequence_index
from occ_fast.distributed.collectives import global_sum
from occ_fast.distributed.data_parallel import pad_micro_batches
from occ_fast.distributed.fsdp import clip_grad_norm
from occ_fast.monitoring.cross_fit import oracle_coefficient
from occ_fast.monitoring.spec_forecast import draft_counts
from occ_fast.policy.batching import MicroBatch, Sample, make_micro_batches
from occ_fast.policy.forward import policy_logprobs
from occ_fast.training.master_weights import fp32_weights
from occ_fast.training.setup import Run
from occ_fast.training.update_stats import UpdateStats

logger = logging.getLogger(__name__)


def mini_batches(
    run: Run, samples: list[Sample], chunks: list[int]
) -> list[tuple[list[Sample], list[tuple[MicroBatch, bool]]]]:
    """Split the step's samples into ``optim.mini_batches`` chunks of whole groups, group g going to
    chunk ``chunks[g]``, then into micro-batches, each flagged real or padding
    (:func:`pad_micro_batches`: equal counts on every rank).

    ``chunks[g]`` is the group's position in the step's draw order over all ranks, mod M, so that
    data parallelism does not change the mini-batches: a rank's chunk i is exactly its share of the
    single-process chunk i (the micro-batches differ: each rank packs its own, which changes OCC's
    per-micro-batch coefficient and nothing else), also when dynamic sampling refills groups in later rounds (a rank's
    groups are then not a contiguous block of the step's, and a chunk may be empty on one rank: it
    then only joins the other ranks' collectives, with padding micro-batches)."""
    cfg, n = run.cfg, run.cfg.rollout.n
    groups = [samples[j : j + n] for j in range(0, len(samples), n)]

    def micro_batches(chunk: list[Sample]) -> list[MicroBatch]:
        micros = make_micro_batches(
            chunk,
            token_budget=cfg.optim.micro_batch_tokens,
            batch_size=cfg.optim.micro_batch_size,
            pad_id=run.tokenizer.pad_token_id,
        )
        return [m.to(run.device) for m in micros]

    filler = micro_batches(groups[0])[0]
    out = []
    for i in range(cfg.optim.mini_batches):
        chunk = [s for group, c in zip(groups, chunks, strict=True) if c == i for s in group]
        out.append((chunk, pad_micro_batches(micro_batches(chunk) if chunk else [], filler)))
    return out


@torch.no_grad()
def old_main_logprobs(run: Run, micro: MicroBatch) -> torch.Tensor:
    """``lp_old``: the main head's log-probs under the weights that generated the rollouts."""
    out = policy_logprobs(
        run.model,
        micro,
        temperature=run.cfg.rollout.temperature,
        with_mtp=False,  # lp_old is the main head's alone (method.md section 3): skip the MTP depths
        autocast_dtype=run.autocast_dtype,
    )
    return out.heads[0].logprob


def response_tokens(samples: list[Sample]) -> float:
    """The main loss's token-mean normaliser: every response token of the mini-batch."""
    return float(sum(len(s.response_ids) for s in samples))


def mtp_row_counts(samples: list[Sample], depths: int) -> list[float]:
    """Each MTP depth's normaliser: the response tokens it has a row for."""
    return [float(sum(s.mtp_rows(k) for s in samples)) for k in range(1, depths + 1)]


def normaliser(count: float) -> float | torch.Tensor:
    """A token count as a loss normaliser: summed over data-parallel ranks, and at least 1 (a
    count of 0 means an all-zero loss term, which must not become 0/0)."""
    if dist.is_initialized():
        return global_sum(count).clamp(min=1.0)
    return max(count, 1.0)


def update_mini_batch(
    run: Run,
    samples: list[Sample],
    micros: list[tuple[MicroBatch, bool]],
    old_logprobs: list[torch.Tensor] | None,
    stats: UpdateStats,
    on_micro: Callable[[], None] | None = None,
) -> None:
    """Forward every micro-batch, backward its share of the mini-batch loss, then one optimizer step.

    ``old_logprobs`` None: the weights are the rollout weights, so ``lp_old`` is this forward's own
    main-head log-prob, detached (the ratio is exactly 1, OCC's ``d_rl`` exactly 0).
    The loss divides by the mini-batch's token counts over all ranks; a padding micro-batch (a
    repeat that only keeps FSDP's collectives in step) backpropagates zero and adds no metrics."""
    cfg, model = run.cfg, run.model
    oracle_lam = (
        oracle_step(run, micros, old_logprobs, stats) if run.loss_cfg.mtp_regime == "oracle" else None
    )
    num_tokens = normaliser(response_tokens(samples))
    mtp_tokens = [normaliser(n) for n in mtp_row_counts(samples, model.num_mtp)]
    real_micros = sum(real for _, real in micros)
    model.train()
    run.optimizer.zero_grad(set_to_none=True)
    for j, (micro, real) in enumerate(micros):
        out = policy_logprobs(
            model,
            micro,
            temperature=cfg.rollout.temperature,
            with_entropy=True,
            autocast_dtype=run.autocast_dtype,
        )
        main = out.heads[0]
        lp_old = old_logprobs[j] if old_logprobs is not None else main.logprob.detach()
        lp_rollout = out.gather(micro.rollout_logprobs)
        sequence_ids = out.gather(sequence_index(micro.position_ids))
        loss, metrics = compute_loss(
            run.loss_cfg,
            lp_old,
            main.logprob,
            out.gather(micro.advantages),
            torch.ones_like(lp_old),
            lp_mtp=[h.logprob for h in out.heads[1:]],
            mtp_masks=[out.mtp_mask(k) for k in range(1, model.num_mtp + 1)],
            num_tokens=num_tokens,
            mtp_num_tokens=mtp_tokens if model.num_mtp else None,
            lp_rollout=lp_rollout,
            occ_entries=padded_response_entries(micro.num_samples, cfg.rollout.max_new_tokens),
            sequence_ids=sequence_ids,
            num_sequences=micro.num_samples,
            oracle_lam=oracle_lam,
        )
        if not real:
            (loss * 0.0).backward()
            stats.padding_micro_batches += 1
            continue
        loss.backward()
        for key, value in metrics.items():
            if key.rsplit("/", 1)[-1] in ("lam", "c_hat", "v2_hat", "coef"):
                continue  # per micro-batch, not token-normalised: aggregated below
            stats.add(key, value)
            stats.loss_keys.add(key)
        stats.add("policy/entropy_sum", main.entropy.detach().sum())
        stats.mismatch.add(lp_old, lp_rollout, sequence_ids, micro.num_samples)
        stats.add("count/tokens", torch.tensor(float(lp_old.numel())))
        if model.num_mtp:
            # MTP depth 1: how often its argmax is the sampled token (speculative-acceptance proxy),
            # and the OCC proxy of this micro-batch.
            valid = out.mtp_mask(1)
            hit = (out.heads[1].logprob >= out.heads[1].max_logprob - 1e-6) & valid
            stats.add("mtp/hits", hit.sum())
            stats.add("count/mtp_rows", valid.sum())
            for key, value in draft_counts(out).items():  # the speculative-decoding forecast
                stats.add(key, value)
            stats.add("mtp/c_hat", metrics["mtp1/c_hat"] / real_micros)
            stats.add("mtp/v2_hat", metrics["mtp1/v2_hat"] / real_micros)
            first = stats.optimizer_steps + stats.nan_skipped == 0  # the rollout weights: lam is 0
            stats.lams.add(metrics["mtp1/lam"], first_mini_batch=first)
        if on_micro is not None:
            on_micro()
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
    with fp32_weights(run.optimizer):  # a bf16 model's gradients are on its fp32 masters
        grad_norm = clip_grad_norm(model, max_norm)  # the global norm: every rank steps or skips alike
    finite = bool(torch.isfinite(grad_norm))  # one host sync per optimizer step: never apply NaN/inf
    stats.finite.append(finite)
    if finite:
        run.optimizer.step()
        stats.optimizer_steps += 1
        stats.grad_norms.append(grad_norm.detach())
    else:
        logger.warning("non-finite gradient norm (%s): optimizer step skipped", float(grad_norm))
        stats.nan_skipped += 1
        stats.bad_grad_norm = float(grad_norm)
    run.optimizer.zero_grad(set_to_none=True)


def oracle_step(
    run: Run,
    micros: list[tuple[MicroBatch, bool]],
    old_logprobs: list[torch.Tensor] | None,
    stats: UpdateStats,
) -> float:
    """The ``oracle`` regime's coefficient for this mini-batch (a diagnostic regime: exact gradients,
    about four extra backward passes per micro-batch), logged as ``oracle/{lam, c_cross, v2, v2_cross}``
    (means over the step's mini-batches)."""
    real = [micro for micro, is_real in micros if is_real]
    olds = old_logprobs if old_logprobs is not None else [old_main_logprobs(run, micro) for micro in real]
    lam, measured = oracle_coefficient(
        run.model,
        real,
        olds,
        loss_cfg=run.loss_cfg,
        temperature=run.cfg.rollout.temperature,
        autocast_dtype=run.autocast_dtype,
    )
    stats.add("oracle/lam", torch.tensor(lam))
    for key in ("c_cross", "v2", "v2_cross"):
        stats.add(f"oracle/{key}", torch.tensor(measured[key]))
    return lam
