"""Exact-gradient diagnostics (``mtp.exact_every``): how well the OCC proxy tracks ``lam*``.

method.md section 6: the lam-dependent part of the one-step gain is maximised at
``lam* = lam_plus * c / v2`` with ``c = <g_RL, g_MTP>`` and ``v2 = ||g_MTP||^2`` on the parameters
both terms reach. OCC (section 7) estimates that ratio for free from log-prob displacements; this
module measures the real ratio every N steps (one forward and two backwards per micro-batch, the
cost the paper quotes as 45 s against 8 s per step) so that a run can show how close the proxy is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from occ_fast.algorithm import (
    LossConfig,
    compute_loss,
    padded_response_entries,
)
from occ_fast.algorithm.occ import gap_form
from occ_fast.algorithm.sequences import sequence_index
from occ_fast.model import MTPModel
from occ_fast.monitoring.cross_fit import (
    ScoredMicroBatch,
    accumulate_gradients,
    cross_fitted_stats,
    one_step_gain,
)
from occ_fast.policy.batching import MicroBatch
from occ_fast.policy.forward import policy_logprobs

T = TypeVar("T")


def exact_gradient_stats(
    model: MTPModel,
    micros: Sequence[MicroBatch],
    old_logprobs: Sequence[Tensor],
    *,
    loss_cfg: LossConfig,
    num_tokens: Tensor | float,
    mtp_num_tokens: Sequence[Tensor | float],
    temperature: float,
    max_response_length: int,
    shared_params: Iterable[nn.Parameter] | None = None,
    autocast_dtype: torch.dtype | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, float]:
    """Exact ``c``, ``v2``, ``lam* / lam_plus`` on the shared parameters next to the OCC proxy on the same data.

    The arguments are those of one mini-batch as ``train.update_mini_batch`` uses them: its
    micro-batches, their main-head ``lp_old`` (scored-token order), the mini-batch token counts
    (``num_tokens`` for the main loss, ``mtp_num_tokens`` per MTP head), the rollout temperature and
    its maximum response length (``rollout.max_new_tokens``, the ``code`` aggregation's R).

    ``g_RL`` is the gradient of the main ``PolicyLoss(lp_old, lp_main, A)``; ``g_MTP`` that of the
    MTP depth-1 term with unit coefficient, ``PolicyLoss(lp_old, lp_mtp1, A)`` (the term whose weight
    OCC calibrates; deeper heads each get their own coefficient and are not measured). Both use the
    training normalisers and TIS weights and are summed over the micro-batches, i.e. they are the
    mini-batch gradients. ``shared_params`` defaults to every trainable parameter of ``model.base``
    (embedding, decoder layers, final norm, lm_head): what both terms can reach.

    Returns ``exact/{c, v2, cosine}``; ``exact/lam_star = c / v2`` (without ``lam_plus``, which
    ``lam_proxy`` includes: compare ``lam_proxy`` with ``lam_plus * lam_star``), reported as 0 when
    ``v2 = 0`` (detach with ``detach_lm_head``: the MTP term does not reach the shared weights; or
    a mini-batch whose advantages are all 0): every weight is then optimal and 0 changes nothing; ``exact/{lam_proxy, c_hat, v2_hat}``: what training
    logs as ``mtp/lam``, ``mtp/c_hat``, ``mtp/v2_hat`` for these micro-batches at these weights;
    ``exact/{corr, rms_d_rl, rms_gap, gap_form}``: ``occ_fast.algorithm.occ.gap_form`` of their
    ``d_rl = lp_main - lp_old`` and ``gap = lp_mtp - lp_main`` (what the proxy reduces to);
    ``exact/{c_cross, v2_cross, lam_star_cross, c_ce, c_ce_cross, v2_ce, v2_ce_cross}``: the
    cross-fitted values and the CE gradient's (``occ_fast.monitoring.cross_fit``; the same-sample
    ``c`` is biased upward); ``exact/gain`` with ``optimizer``: the held-out loss change the MTP
    term makes in one step of it (:func:`~occ_fast.monitoring.cross_fit.one_step_gain`);
    ``exact/time_s`` (the exact and cross-fitted passes) and ``exact/time_ratio`` (over one normal training
    forward+backward of the same micro-batches, which this function also runs and times; it runs
    first, so it also pays any one-off kernel warm-up).

    ``lam*`` is the optimum of the loss form (``lam * PolicyLoss``); the advantage form applies the
    same gradient for ``lam >= 0`` only. Gradients, parameters, the train/eval mode and the CPU and
    device RNGs are left as they were. Extra memory: two fp32 sums of the shared gradients plus one
    transient gradient set. Single process only (under FSDP the dot products would need the shards
    reduced).
    """
    _check_inputs(model, micros, old_logprobs, loss_cfg, mtp_num_tokens)
    source = model.base.parameters() if shared_params is None else shared_params
    params = [p for p in source if p.requires_grad]
    if not params:
        raise ValueError("exact_gradient_stats: no trainable shared parameters to measure gradients on")
    device = micros[0].input_ids.device
    was_training = model.training
    model.train()  # the mode update_mini_batch trains in
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            baseline_s, (proxy, gap) = _timed(
                device,
                lambda: _training_pass(
                    model,
                    micros,
                    old_logprobs,
                    loss_cfg,
                    num_tokens,
                    mtp_num_tokens,
                    temperature,
                    max_response_length,
                    autocast_dtype,
                ),
            )
            exact_s, ((c, v2, rl2), cross) = _timed(
                device,
                lambda: (
                    _exact_pass(
                        model,
                        micros,
                        old_logprobs,
                        params,
                        loss_cfg,
                        num_tokens,
                        mtp_num_tokens[0],
                        temperature,
                        autocast_dtype,
                    ),
                    _cross_fitted(
                        model,
                        optimizer,
                        micros,
                        old_logprobs,
                        params,
                        loss_cfg,
                        temperature,
                        max_response_length,
                        autocast_dtype,
                    ),  # fmt: skip
                ),
            )
    finally:
        model.train(was_training)
    c, v2, rl2 = float(c), float(v2), float(rl2)
    lam_proxy, c_hat, v2_hat = (float(x) for x in proxy)
    return {
        "exact/c": c,
        "exact/v2": v2,
        "exact/lam_star": c / v2 if v2 > 0 else 0.0,
        "exact/cosine": c / math.sqrt(rl2 * v2) if rl2 > 0 and v2 > 0 else 0.0,
        "exact/lam_proxy": lam_proxy,
        "exact/c_hat": c_hat,
        "exact/v2_hat": v2_hat,
        **{f"exact/{name}": float(value) for name, value in gap.items()},
        **cross,
        "exact/time_s": exact_s,
        "exact/time_ratio": exact_s / baseline_s,
    }


def _cross_fitted(
    model, optimizer, micros, old_logprobs, params, loss_cfg, temperature, max_response_length, autocast_dtype
) -> dict[str, float]:
    """The cross-fitted values (without the same-sample ones, logged already) and, with an optimizer,
    the measured one-step gain; ``exact/``-prefixed."""
    cross = cross_fitted_stats(
        model,
        micros,
        old_logprobs,
        params,
        loss_cfg=loss_cfg,
        temperature=temperature,
        autocast_dtype=autocast_dtype,
    )
    out = {f"exact/{k}": v for k, v in cross.items() if k not in ("c", "v2")}
    if optimizer is not None:
        out["exact/gain"] = one_step_gain(
            model, optimizer, micros, old_logprobs, loss_cfg=loss_cfg, temperature=temperature,
            max_response_length=max_response_length, autocast_dtype=autocast_dtype,
        )  # fmt: skip
    return out


def proxy_exact_correlation(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """How well the proxy's ``lam`` follows the exact ``lam*`` over a run's logged rows (metrics.jsonl).

    Rows without both ``exact/lam_star`` and ``exact/lam_proxy`` (steps without diagnostics), with a
    non-finite value, or with ``exact/v2 == 0`` are skipped: in the last ``lam*`` is undefined (MTP
    gradient off the shared weights, or a mini-batch whose advantages are all 0) and its logged 0
    would only dilute the comparison. Returns ``exact/rows`` (rows used),
    ``exact/proxy_pearson`` (Pearson correlation; NaN under 2 rows or when either series is
    constant) and ``exact/proxy_sign_agreement`` (share of rows where both have the same sign, 0
    counting as its own sign; NaN without rows). Both are invariant to ``lam_plus > 0``.
    """
    pairs = [
        (float(row["exact/lam_star"]), float(row["exact/lam_proxy"]))
        for row in rows
        if "exact/lam_star" in row and "exact/lam_proxy" in row and row.get("exact/v2") != 0
    ]
    pairs = [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
    n = len(pairs)
    pearson = sign_agreement = math.nan
    if n:
        sign_agreement = sum(_sign(x) == _sign(y) for x, y in pairs) / n
    if n >= 2:
        mean_x = sum(x for x, _ in pairs) / n
        mean_y = sum(y for _, y in pairs) / n
        sxy = sum((x - mean_x) * (y - mean_y) for x, y in pairs)
        sxx = sum((x - mean_x) ** 2 for x, _ in pairs)
        syy = sum((y - mean_y) ** 2 for _, y in pairs)
        if sxx > 0 and syy > 0:
            pearson = sxy / math.sqrt(sxx * syy)
    return {"exact/rows": n, "exact/proxy_pearson": pearson, "exact/proxy_sign_agreement": sign_agreement}


def _training_pass(
    model: MTPModel,
    micros: Sequence[MicroBatch],
    old_logprobs: Sequence[Tensor],
    loss_cfg: LossConfig,
    num_tokens: Tensor | float,
    mtp_num_tokens: Sequence[Tensor | float],
    temperature: float,
    max_response_length: int,
    autocast_dtype: torch.dtype | None,
) -> tuple[tuple[Tensor, Tensor, Tensor], dict[str, Tensor]]:
    """One forward+backward as ``update_mini_batch`` runs it, gradients discarded: the cost reference,
    the OCC proxy aggregated as training logs it (``lam`` averaged, ``c_hat``/``v2_hat`` summed / count),
    and :func:`gap_form` over the mini-batch's MTP depth-1 tokens."""
    params = [p for p in model.parameters() if p.requires_grad]
    lams, c_hats, v2_hats, d_rls, gaps = [], [], [], [], []
    for micro, lp_old in zip(micros, old_logprobs):
        out = policy_logprobs(
            model, micro, temperature=temperature, with_entropy=True, autocast_dtype=autocast_dtype
        )
        loss, metrics = compute_loss(
            loss_cfg,
            lp_old,
            out.heads[0].logprob,
            out.gather(micro.advantages),
            torch.ones_like(lp_old),
            lp_mtp=[h.logprob for h in out.heads[1:]],
            mtp_masks=[out.mtp_mask(k) for k in range(1, model.num_mtp + 1)],
            num_tokens=num_tokens,
            mtp_num_tokens=mtp_num_tokens,
            lp_rollout=out.gather(micro.rollout_logprobs),
            occ_entries=padded_response_entries(micro.num_samples, max_response_length),
            sequence_ids=out.gather(sequence_index(micro.position_ids)),
            num_sequences=micro.num_samples,
            oracle_lam=0.0 if loss_cfg.mtp_regime == "oracle" else None,  # its value changes no metric here
        )
        torch.autograd.grad(loss, params, allow_unused=True)
        lams.append(metrics["mtp1/lam"])
        c_hats.append(metrics["mtp1/c_hat"])
        v2_hats.append(metrics["mtp1/v2_hat"])
        valid = out.mtp_mask(1)
        d_rls.append((out.heads[0].logprob - lp_old)[valid].detach())
        gaps.append((out.heads[1].logprob - out.heads[0].logprob)[valid].detach())
    count = len(micros)
    proxy = (torch.stack(lams).mean(), torch.stack(c_hats).sum() / count, torch.stack(v2_hats).sum() / count)
    return proxy, gap_form(torch.cat(d_rls), torch.cat(gaps))


def _exact_pass(
    model: MTPModel,
    micros: Sequence[MicroBatch],
    old_logprobs: Sequence[Tensor],
    params: list[nn.Parameter],
    loss_cfg: LossConfig,
    num_tokens: Tensor | float,
    mtp1_num_tokens: Tensor | float,
    temperature: float,
    autocast_dtype: torch.dtype | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(<g_RL, g_MTP>, ||g_MTP||^2, ||g_RL||^2)`` (fp64) of the mini-batch gradients on ``params``."""
    g_rl: list[Tensor | None] = [None] * len(params)
    g_mtp: list[Tensor | None] = [None] * len(params)
    for micro, lp_old in zip(micros, old_logprobs):
        scored = ScoredMicroBatch.forward(model, micro, lp_old, loss_cfg, temperature, autocast_dtype)
        main_loss, mtp_loss = scored.policy_losses(
            torch.ones_like(lp_old),
            scored.out.mtp_mask(1),
            num_tokens=num_tokens,
            mtp_num_tokens=mtp1_num_tokens,
        )
        accumulate_gradients(g_mtp, mtp_loss, params, retain_graph=True)
        accumulate_gradients(g_rl, main_loss, params, retain_graph=False)
    zero = torch.zeros((), dtype=torch.float64, device=params[0].device)
    c, v2, rl2 = zero, zero, zero
    for a, b in zip(g_rl, g_mtp):
        if a is not None:
            rl2 = rl2 + a.square().sum(dtype=torch.float64)
        if b is not None:
            v2 = v2 + b.square().sum(dtype=torch.float64)
        if a is not None and b is not None:
            c = c + (a * b).sum(dtype=torch.float64)
    return c, v2, rl2


def _timed(device: torch.device, fn: Callable[[], T]) -> tuple[float, T]:
    """Wall time of ``fn`` including its queued device work."""
    _synchronize(device)
    start = time.perf_counter()
    result = fn()
    _synchronize(device)
    return time.perf_counter() - start, result


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _check_inputs(
    model: MTPModel,
    micros: Sequence[MicroBatch],
    old_logprobs: Sequence[Tensor],
    loss_cfg: LossConfig,
    mtp_num_tokens: Sequence[Tensor | float],
) -> None:
    if not micros:
        raise ValueError("exact_gradient_stats: no micro-batches given (pass one mini-batch's micro-batches)")
    if len(old_logprobs) != len(micros):
        raise ValueError(
            f"exact_gradient_stats: {len(micros)} micro-batches but {len(old_logprobs)} old log-prob tensors"
        )
    if model.num_mtp == 0 or loss_cfg.mtp_regime == "none":
        raise ValueError(
            "exact_gradient_stats needs an MTP head and an MTP regime "
            f"(model has {model.num_mtp} heads, mtp_regime={loss_cfg.mtp_regime!r})"
        )
    if len(mtp_num_tokens) != model.num_mtp:
        raise ValueError(
            f"exact_gradient_stats: mtp_num_tokens needs one count per MTP head ({model.num_mtp}), "
            f"got {len(mtp_num_tokens)}"
        )
    # By world size, not by a process group existing: vLLM makes one of size 1 in a single process.
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise NotImplementedError(
            "exact_gradient_stats runs in a single process: under FSDP the gradient dot products "
            "would need the shards reduced across ranks"
        )
