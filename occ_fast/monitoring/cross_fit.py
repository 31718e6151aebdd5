"""Cross-fitted exact diagnostics: ``c``, ``v2`` and the CE gradient's ``c`` from disjoint halves.

``c = <g_RL, g_MTP>`` taken from one set of tokens is biased upward: every token contributes
``A_i^2 <grad lp_main(y_i), grad lp_mtp(y_i)>``, positive whatever the advantages mean, because both
heads predict the same token through shared weights. With ``g_RL`` from one half of the mini-batch
and ``g_MTP`` from the other (both ways, averaged), only pairs of different tokens remain, whose
expectation is ``<E g_RL, E g_MTP>``: in a null where the advantages are independent of the tokens it
centres on 0. ``v2`` likewise: ``<g_MTP^A, g_MTP^B>`` estimates ``||E g_MTP||^2`` without the noise
floor that ``||g_MTP||^2`` carries. The halves split by prompt, so a GRPO group (whose advantages sum
to 0) never straddles them.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from occ_fast.algorithm import LossConfig, compute_loss, policy_loss
from occ_fast.algorithm.rollout_mismatch import rollout_is_weights
from occ_fast.algorithm.sequences import sequence_index
from occ_fast.model import MTPModel
from occ_fast.policy.batching import MicroBatch
from occ_fast.policy.forward import HeadOutputs, policy_logprobs
from occ_fast.training.master_weights import fp32_weights

GRADIENTS = ("rl_a", "rl_b", "mtp_a", "mtp_b", "ce_a", "ce_b")


def prompt_halves(micros: Sequence[MicroBatch]) -> list[Tensor]:
    """Per micro-batch, ``[rows, T]`` bool: the response positions of half A. Distinct prompts,
    sorted, alternate between the halves, so that all completions of a prompt share one."""
    found = []
    for micro in micros:
        seq = sequence_index(micro.position_ids).reshape(micro.input_ids.shape)
        prompt = ~micro.response_mask & micro.attention_mask.bool()
        keys = [tuple(micro.input_ids[(seq == s) & prompt].tolist()) for s in range(micro.num_samples)]
        found.append((seq, keys))
    order = {key: i for i, key in enumerate(sorted({k for _, keys in found for k in keys}))}
    halves = []
    for micro, (seq, keys) in zip(micros, found):
        in_a = torch.tensor([order[k] % 2 == 0 for k in keys], device=seq.device)
        halves.append(in_a[seq] & micro.response_mask)
    return halves


def cross_fitted_stats(
    model: MTPModel,
    micros: Sequence[MicroBatch],
    old_logprobs: Sequence[Tensor],
    params: list[nn.Parameter],
    *,
    loss_cfg: LossConfig,
    temperature: float,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Same-sample and cross-fitted inner products of the mini-batch gradients on ``params`` (fp64).

    ``g_RL``: the main ``PolicyLoss``; ``g_MTP``: the MTP depth-1 ``PolicyLoss`` with unit weight;
    ``g_CE``: the MTP depth-1 cross-entropy (the ``ce`` regime's term); each a token mean over its
    half (or over the whole mini-batch for the same-sample values). Returns ``c``, ``v2`` (same
    sample), ``c_cross``, ``v2_cross``, ``lam_star_cross = c_cross / v2_cross`` (0 when
    ``v2_cross <= 0``: the halves do not agree on any MTP direction), ``c_ce``, ``c_ce_cross``,
    ``v2_ce``, ``v2_ce_cross``."""
    sums, counts = _half_gradients(model, micros, old_logprobs, params, loss_cfg, temperature, autocast_dtype)
    half = {name: _scaled(sums[name], 1.0 / max(counts[name], 1.0)) for name in GRADIENTS}
    whole = {
        kind: _scaled(
            [_add(a, b) for a, b in zip(sums[f"{kind}_a"], sums[f"{kind}_b"])],
            1.0 / max(counts[f"{kind}_a"] + counts[f"{kind}_b"], 1.0),
        )
        for kind in ("rl", "mtp", "ce")
    }
    out = {"c": _dot(whole["rl"], whole["mtp"]), "v2": _dot(whole["mtp"], whole["mtp"])}
    out["c_ce"], out["v2_ce"] = _dot(whole["rl"], whole["ce"]), _dot(whole["ce"], whole["ce"])
    for kind in ("mtp", "ce"):
        cross = (_dot(half["rl_a"], half[f"{kind}_b"]) + _dot(half["rl_b"], half[f"{kind}_a"])) / 2
        suffix = "" if kind == "mtp" else "_ce"
        out[f"c{suffix}_cross"] = cross
        out[f"v2{suffix}_cross"] = _dot(half[f"{kind}_a"], half[f"{kind}_b"])
    out["lam_star_cross"] = out["c_cross"] / out["v2_cross"] if out["v2_cross"] > 0 else 0.0
    return out


def oracle_coefficient(
    model: MTPModel,
    micros: Sequence[MicroBatch],
    old_logprobs: Sequence[Tensor],
    *,
    loss_cfg: LossConfig,
    temperature: float,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[float, dict[str, float]]:
    """The ``oracle`` regime's coefficient on one mini-batch, ``lam_plus * c_cross / v2``, and the
    :func:`cross_fitted_stats` it comes from (on the trunk's parameters, what both terms reach).

    The numerator is cross-fitted: the same-sample ``c`` would weight the MTP term by its own noise.
    The denominator is the same-sample ``v2``: the step applies this mini-batch's ``g_MTP``, whose
    squared norm, noise included, is what the gain's penalty ``L eta^2 lam^2 ||g_MTP||^2 / 2``
    charges; ``v2_cross`` estimates the noise-free part only, and its near-zero or negative values
    would make the ratio explode. Single process only (the inner products need the whole gradient)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise NotImplementedError("the oracle regime measures exact gradients in a single process only")
    params = [p for p in model.base.parameters() if p.requires_grad]
    stats = cross_fitted_stats(
        model,
        micros,
        old_logprobs,
        params,
        loss_cfg=loss_cfg,
        temperature=temperature,
        autocast_dtype=autocast_dtype,
    )
    lam = loss_cfg.occ_lam_plus * stats["c_cross"] / stats["v2"] if stats["v2"] > 0 else 0.0
    return lam, stats


def one_step_gain(
    model: MTPModel,
    optimizer: torch.optim.Optimizer,
    micros: Sequence[MicroBatch],
    old_logprobs: Sequence[Tensor],
    *,
    loss_cfg: LossConfig,
    temperature: float,
    max_response_length: int,
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """The held-out RL loss change the MTP term makes in one optimizer step, measured.

    One optimizer step on half A with the training loss of ``loss_cfg``, and the same step without
    its MTP term (``mtp_regime='none'``); the main ``PolicyLoss`` of half B after each; their
    difference (without minus with), and the same with the halves swapped, averaged. Positive: the
    MTP term lowered the held-out loss. Parameters (the fp32 masters of a 16-bit model, which the
    optimizer steps) and optimizer state are restored afterwards."""
    halves = prompt_halves(micros)
    with fp32_weights(optimizer):
        saved_params = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    saved_state = copy.deepcopy(optimizer.state_dict())
    main_only = dataclasses.replace(loss_cfg, mtp_regime="none", mtp_head_ce_coef=0.0)
    oracle_lam = None
    if loss_cfg.mtp_regime == "oracle":
        oracle_lam, _ = oracle_coefficient(
            model,
            micros,
            old_logprobs,
            loss_cfg=loss_cfg,
            temperature=temperature,
            autocast_dtype=autocast_dtype,
        )
    gains = []
    try:
        for train_a in (True, False):
            held_out = []
            for cfg in (main_only, loss_cfg):
                lam = oracle_lam if cfg.mtp_regime == "oracle" else None
                _step(model, optimizer, micros, old_logprobs, halves, train_a, cfg, temperature,
                      max_response_length, autocast_dtype, lam)  # fmt: skip
                held_out.append(_held_out_loss(model, micros, old_logprobs, halves, not train_a, loss_cfg,
                                               temperature, autocast_dtype))  # fmt: skip
                _restore(model, saved_params, optimizer, saved_state)
            gains.append(held_out[0] - held_out[1])
    finally:
        _restore(model, saved_params, optimizer, saved_state)
    return sum(gains) / len(gains)


def _step(model, optimizer, micros, olds, halves, in_a, cfg, temperature, max_len, autocast_dtype, lam):
    """One optimizer step on one half's training loss (token means over that half)."""
    outs = [policy_logprobs(model, m, temperature=temperature, autocast_dtype=autocast_dtype) for m in micros]
    masks = [out.gather(h).bool() == in_a for out, h in zip(outs, halves)]
    mtp_masks = [out.mtp_mask(1) & mask for out, mask in zip(outs, masks)]
    tokens = max(float(sum(mask.sum() for mask in masks)), 1.0)
    rows = max(float(sum(mask.sum() for mask in mtp_masks)), 1.0)
    optimizer.zero_grad(set_to_none=True)
    for micro, out, lp_old, mask, mtp_mask in zip(micros, outs, olds, masks, mtp_masks):
        heads = cfg.mtp_regime != "none"
        loss, _ = compute_loss(
            cfg,
            lp_old,
            out.heads[0].logprob,
            out.gather(micro.advantages),
            mask.float(),
            lp_mtp=[out.heads[1].logprob] if heads else [],
            mtp_masks=[mtp_mask] if heads else [],
            num_tokens=tokens,
            mtp_num_tokens=[rows] if heads else None,
            lp_rollout=out.gather(micro.rollout_logprobs),
            occ_entries=float(micro.num_samples * max_len),
            sequence_ids=out.gather(sequence_index(micro.position_ids)),
            num_sequences=micro.num_samples,
            oracle_lam=lam,
        )
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def _held_out_loss(model, micros, olds, halves, in_a, cfg, temperature, autocast_dtype) -> float:
    """The main ``PolicyLoss`` over one half's tokens."""
    total, tokens = 0.0, 0.0
    clip = {"eps_low": cfg.eps_low, "eps_high": cfg.eps_high, "dual_clip_c": cfg.dual_clip_c}
    for micro, lp_old, half in zip(micros, olds, halves):
        out = policy_logprobs(model, micro, temperature=temperature, autocast_dtype=autocast_dtype)
        mask = out.gather(half).bool() == in_a
        loss, _ = policy_loss(lp_old, out.heads[0].logprob, out.gather(micro.advantages), mask.float(),
                              num_tokens=1.0, **clip)  # fmt: skip
        total, tokens = total + float(loss.double()), tokens + float(mask.sum())
    return total / max(tokens, 1.0)


def _restore(model, saved, optimizer, state) -> None:
    """Parameters and optimizer state back to ``saved`` and ``state``; leaving ``fp32_weights``
    rounds restored masters into the compute copies."""
    with torch.no_grad(), fp32_weights(optimizer):
        for p, value in zip([p for p in model.parameters() if p.requires_grad], saved, strict=True):
            p.copy_(value)
    optimizer.load_state_dict(copy.deepcopy(state))
    optimizer.zero_grad(set_to_none=True)


def _half_gradients(model, micros, olds, params, cfg, temperature, autocast_dtype):
    """Summed (not normalised) gradients of the six half terms, and each term's token count."""
    sums: dict[str, list[Tensor | None]] = {name: [None] * len(params) for name in GRADIENTS}
    counts = dict.fromkeys(GRADIENTS, 0.0)
    for micro, lp_old, half in zip(micros, olds, prompt_halves(micros)):
        scored = ScoredMicroBatch.forward(model, micro, lp_old, cfg, temperature, autocast_dtype)
        out = scored.out
        in_a = out.gather(half).bool()
        terms = []
        for name, mask in (("a", in_a), ("b", ~in_a)):
            mtp_mask = out.mtp_mask(1) & mask
            main, mtp = scored.policy_losses(mask.float(), mtp_mask, num_tokens=1.0, mtp_num_tokens=1.0)
            ce = -(out.heads[1].logprob * mtp_mask).sum()
            terms += [
                (f"rl_{name}", main, mask),
                (f"mtp_{name}", mtp, mtp_mask),
                (f"ce_{name}", ce, mtp_mask),
            ]
        for i, (name, loss, mask) in enumerate(terms):
            counts[name] += float(mask.sum())
            accumulate_gradients(
                sums[name], loss, params, retain_graph=i < len(terms) - 1, dtype=torch.float64
            )
    return sums, counts


@dataclasses.dataclass(frozen=True, eq=False)
class ScoredMicroBatch:
    """One micro-batch's forward with its advantages and TIS weights in scored-token order: the
    exact and the cross-fitted diagnostics build their ``PolicyLoss`` terms from it one way."""

    out: HeadOutputs
    lp_old: Tensor
    advantages: Tensor
    is_weights: Tensor
    cfg: LossConfig

    @classmethod
    def forward(
        cls,
        model: MTPModel,
        micro: MicroBatch,
        lp_old: Tensor,
        cfg: LossConfig,
        temperature: float,
        autocast_dtype: torch.dtype | None,
    ) -> ScoredMicroBatch:
        out = policy_logprobs(model, micro, temperature=temperature, autocast_dtype=autocast_dtype)
        advantages = out.gather(micro.advantages)
        is_weights = rollout_is_weights(
            lp_old,
            out.gather(micro.rollout_logprobs),
            torch.ones_like(lp_old),
            cap=cfg.tis_cap,
            level=cfg.tis_level,
            mask_band=cfg.is_mask_band,
            sequence_ids=out.gather(sequence_index(micro.position_ids)),
            num_sequences=micro.num_samples,
        )
        return cls(out, lp_old, advantages, is_weights, cfg)

    def policy_losses(
        self, mask: Tensor, mtp_mask: Tensor, *, num_tokens: Tensor | float, mtp_num_tokens: Tensor | float
    ) -> tuple[Tensor, Tensor]:
        """The main and the MTP depth-1 ``PolicyLoss`` (unit coefficient) over their masked tokens."""
        cfg = self.cfg
        clip = {"eps_low": cfg.eps_low, "eps_high": cfg.eps_high, "dual_clip_c": cfg.dual_clip_c}
        main, _ = policy_loss(self.lp_old, self.out.heads[0].logprob, self.advantages, mask,
                              num_tokens=num_tokens, is_weights=self.is_weights, **clip)  # fmt: skip
        mtp, _ = policy_loss(self.lp_old, self.out.heads[1].logprob, self.advantages, mtp_mask,
                             num_tokens=mtp_num_tokens, is_weights=self.is_weights, **clip)  # fmt: skip
        return main, mtp


def accumulate_gradients(
    sums: list[Tensor | None],
    loss: Tensor,
    params: list[nn.Parameter],
    *,
    retain_graph: bool,
    dtype: torch.dtype | None = None,
) -> None:
    """Add ``d loss / d params`` into ``sums``, in ``dtype`` (default fp32, or the gradient's if wider);
    parameters the loss does not reach stay None."""
    if not loss.requires_grad:  # nothing trainable upstream (e.g. a frozen, detached MTP head)
        return
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    for i, grad in enumerate(grads):
        if grad is None:
            continue
        if sums[i] is None:  # copy: autograd may hand the same tensor to two parameters
            sums[i] = grad.to(dtype or torch.promote_types(grad.dtype, torch.float32), copy=True)
        else:
            sums[i].add_(grad)


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return b if a is None else a if b is None else a + b


def _scaled(grads: list[Tensor | None], factor: float) -> list[Tensor | None]:
    return [None if g is None else g * factor for g in grads]


def _dot(a: list[Tensor | None], b: list[Tensor | None]) -> float:
    return float(sum(((x * y).sum() for x, y in zip(a, b) if x is not None and y is not None), 0.0))
