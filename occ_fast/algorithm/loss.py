"""The total training loss: main DAPO policy loss plus the MTP term of the configured regime.

One function takes the per-token tensors of a micro-batch and returns the scalar to backward and
detached metric tensors; it reads like the table in method.md section 5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from occ_fast.algorithm.config import LossConfig
from occ_fast.algorithm.occ import occ_coefficient
from occ_fast.algorithm.policy_loss import policy_loss, token_mean
from occ_fast.algorithm.rollout_mismatch import rollout_is_weights


def compute_loss(
    cfg: LossConfig,
    lp_old: Tensor,
    lp_main: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    lp_mtp: Sequence[Tensor] = (),
    mtp_masks: Sequence[Tensor] = (),
    num_tokens: Tensor | float | None = None,
    mtp_num_tokens: Sequence[Tensor | float] | None = None,
    lp_rollout: Tensor | None = None,
    occ_entries: Tensor | float | None = None,
    sequence_ids: Tensor | None = None,
    num_sequences: int | None = None,
    oracle_lam: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss of one micro-batch; all tensors are per response token and share one shape.

    Args:
        lp_old: main-head log-probs of the rollout policy (no grad).
        lp_main: main-head log-probs under the current weights (grad).
        advantages: token advantages A.
        mask: 1 on real response tokens.
        lp_mtp, mtp_masks: one log-prob tensor (grad) and mask per MTP head, head k = depth k + 1;
            a token whose MTP row does not exist has mask 0. Needed for every regime but ``none``.
        num_tokens: mini-batch valid-token count for the main loss (see ``token_mean``);
        mtp_num_tokens: the same per MTP head; required when ``num_tokens`` is given.
        lp_rollout: rollout-engine log-probs; required when ``cfg.tis_cap`` or ``cfg.is_mask_band``
            is set. The importance weight multiplies the main and the MTP policy terms (both are
            measured against ``lp_old``).
        occ_entries: ``B * R`` of the micro-batch (:func:`padded_response_entries`), the denominator
            of the ``code`` aggregation when the tensors hold the scored tokens only; None: their
            own number of entries (right when they are the padded ``[B, R]`` response tensor).
        sequence_ids, num_sequences: the sequence of each token (``0 .. num_sequences - 1``), for
            sequence-level importance weights and the mask band.
        oracle_lam: the ``oracle`` regime's coefficient, measured outside the loss (required there).

    Returns ``(loss, metrics)``. Metrics: ``loss``; ``policy/{loss,clip_low,clip_high,clip_dual}``;
    per head ``mtp{d}/loss`` (its weighted contribution to the loss), ``mtp{d}/coef`` (the weight
    applied), ``mtp{d}/{lam,c_hat,v2_hat}`` (OCC proxy, logged in every MTP regime) and for the
    policy-type regimes ``mtp{d}/clip_*``. Token-normalised metrics add up over micro-batches;
    ``lam``, ``c_hat``, ``v2_hat`` are per micro-batch (average them).
    """
    num_heads = _check_inputs(cfg, lp_mtp, mtp_masks, num_tokens, mtp_num_tokens, lp_rollout, oracle_lam)
    is_weights = None
    if lp_rollout is not None:
        is_weights = rollout_is_weights(
            lp_old,
            lp_rollout,
            mask,
            cap=cfg.tis_cap,
            level=cfg.tis_level,
            mask_band=cfg.is_mask_band,
            sequence_ids=sequence_ids,
            num_sequences=num_sequences,
        )
    clip = {"eps_low": cfg.eps_low, "eps_high": cfg.eps_high, "dual_clip_c": cfg.dual_clip_c}

    loss, main_metrics = policy_loss(
        lp_old, lp_main, advantages, mask, num_tokens=num_tokens, is_weights=is_weights, **clip
    )
    metrics = {f"policy/{k}": v for k, v in main_metrics.items()}
    if is_weights is not None:
        metrics["tis/weight"] = token_mean(is_weights, mask, num_tokens)
    if is_weights is not None and cfg.is_mask_band is not None:
        metrics["tis/masked"] = token_mean((is_weights == 0).float(), mask, num_tokens)

    for k in range(num_heads):
        head_tokens = None if mtp_num_tokens is None else mtp_num_tokens[k]
        head_mask = mtp_masks[k]
        prefix = f"mtp{k + 1}/"
        occ = occ_coefficient(
            lp_old,
            lp_main,
            lp_mtp[k],
            head_mask,
            lam_plus=cfg.occ_lam_plus,
            aggregation=cfg.occ_aggregation,
            num_heads=num_heads,
            padded_entries=occ_entries,
        )
        if cfg.mtp_regime in ("detach", "ce"):
            coef = _scalar(cfg.mtp_coef / num_heads, loss)
            term, head_metrics = coef * -token_mean(lp_mtp[k], head_mask, head_tokens), {}
        else:
            if cfg.mtp_regime == "policy":
                coef = _scalar(cfg.mtp_coef / num_heads, loss)
            else:
                coef = occ.lam if cfg.mtp_regime == "occ" else _scalar(float(oracle_lam), loss)
            scale_advantages = cfg.mtp_regime in ("occ", "oracle") and cfg.occ_form == "advantage"
            head_adv = advantages * coef if scale_advantages else advantages
            head_loss, head_metrics = policy_loss(
                lp_old, lp_mtp[k], head_adv, head_mask, num_tokens=head_tokens, is_weights=is_weights, **clip
            )
            term = head_loss if scale_advantages else coef * head_loss
            del head_metrics["loss"]
            if cfg.mtp_head_ce_coef:
                ce = -token_mean(lp_mtp[k], head_mask, head_tokens)
                term = term + (cfg.mtp_head_ce_coef / num_heads) * ce
                head_metrics["ce"] = ce.detach()
        loss = loss + term
        metrics[prefix + "loss"] = term.detach()
        metrics[prefix + "coef"] = coef
        metrics.update({prefix + name: v for name, v in head_metrics.items()})
        metrics.update({prefix + "lam": occ.lam, prefix + "c_hat": occ.c_hat, prefix + "v2_hat": occ.v2_hat})
    metrics["loss"] = loss.detach()
    return loss, metrics


def _scalar(value: float, like: Tensor) -> Tensor:
    """A 0-dim tensor on ``like``'s device, made by a fill kernel (``new_tensor`` would copy from host)."""
    return torch.full((), value, dtype=torch.float32, device=like.device)


def _check_inputs(
    cfg: LossConfig,
    lp_mtp: Sequence[Tensor],
    mtp_masks: Sequence[Tensor],
    num_tokens: Tensor | float | None,
    mtp_num_tokens: Sequence[Tensor | float] | None,
    lp_rollout: Tensor | None,
    oracle_lam: float | None,
) -> int:
    """Shape-free argument checks (no host sync); returns the number of MTP heads."""
    num_heads = len(lp_mtp)
    if len(mtp_masks) != num_heads:
        raise ValueError(f"got {num_heads} lp_mtp tensors but {len(mtp_masks)} mtp_masks")
    if cfg.mtp_regime == "none" and num_heads:
        raise ValueError(f"mtp_regime='none' but {num_heads} MTP log-prob tensors were given")
    if (cfg.mtp_regime == "oracle") != (oracle_lam is not None):
        raise ValueError(
            "oracle_lam is the oracle regime's coefficient: give it with mtp_regime='oracle' only"
        )
    if cfg.mtp_regime != "none" and not num_heads:
        raise ValueError(f"mtp_regime={cfg.mtp_regime!r} needs lp_mtp for at least one MTP head")
    if num_tokens is not None and num_heads and (mtp_num_tokens is None or len(mtp_num_tokens) != num_heads):
        raise ValueError(
            f"num_tokens is given, so mtp_num_tokens needs one count per MTP head ({num_heads}), "
            f"got {mtp_num_tokens!r}"
        )
    if (cfg.tis_cap is not None or cfg.is_mask_band is not None) and lp_rollout is None:
        raise ValueError(
            f"LossConfig.tis_cap={cfg.tis_cap} / is_mask_band={cfg.is_mask_band} need lp_rollout "
            "(rollout-engine log-probs)"
        )
    return num_heads
