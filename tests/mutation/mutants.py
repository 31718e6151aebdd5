"""The curated mutants: each a bug a person could plausibly write in the core, and the tests that
must catch it. Snippets are short and must occur exactly once in their file (else ``stale``).

``Mutant.edits``: ``(path, original, replacement)``, applied in order; ``tests``: pytest targets
(run with ``-x``); ``equivalent``: why the mutant cannot change any observable result (then it is
listed, not run).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    id: str
    what: str
    edits: tuple[tuple[str, str, str], ...]
    tests: tuple[str, ...] = ()
    equivalent: str | None = None


TRITON = "kernels/src/logprob_triton.py"
TORCH = "kernels/src/logprob_torch.py"
KT = "tests/test_linear_logprob.py"
TRAIN = "occ_fast/train.py"
STEP = "occ_fast/training/step.py"
UPDATE = "occ_fast/training/update.py"
SETUP = "occ_fast/training/setup.py"
LOOP = "tests/test_update_mini_batch.py"
BATCH = "tests/test_batching.py"
E2E = "tests/test_train.py"
DIST = "tests/test_train_distributed.py"
FSDP = "tests/test_distributed.py"
POLICY = "occ_fast/algorithm/policy_loss.py"
MISMATCH = "occ_fast/algorithm/rollout_mismatch.py"
MISMATCH_TESTS = "tests/test_rollout_mismatch.py"
HEALTH = "occ_fast/monitoring/health.py"
NONFINITE = "tests/test_faults_nonfinite.py"
RULES = "occ_fast/rollout/vllm_rules.py"
RULES_TESTS = "tests/test_rollout_vllm_rules.py"
VLLM_TESTS = "tests/test_rollout_vllm.py"
PROBE = "occ_fast/rollout/drafter_probe.py"
PROBE_TESTS = "tests/test_drafter_probe.py"
MASTERS = "occ_fast/training/master_weights.py"
MASTERS_TESTS = "tests/test_master_weights.py"
ENGINE_TESTS = "tests/test_engine_dtype.py"
CROSS_FIT = "occ_fast/monitoring/cross_fit.py"
CROSS_FIT_TESTS = "tests/test_cross_fit.py"
COLLECTIVES = "occ_fast/distributed/collectives.py"
GATHER_TESTS = "tests/test_token_weighted_metrics.py"
PAIRED = "occ_fast/experiments/paired.py"
PAIRED_TESTS = "tests/test_experiments_headroom.py"


def m(id, what, path, old, new, *tests, equivalent=None):  # noqa: A002
    return Mutant(id, what, ((path, old, new),), tuple(tests), equivalent)


ALL = [
    # ---- kernels/src/ ----
    m(
        "K1",
        "forward kernel: vocab mask off by one (reads one column past its slice)",
        TRITON,
        "col_ok = offs_v < v_end",
        "col_ok = offs_v <= v_end",
        f"{KT}::test_matches_fp64_reference",
    ),
    m(
        "K2",
        "dlogits kernel: last vocab column never written",
        TRITON,
        "col_ok = offs_v < V\n",
        "col_ok = offs_v < V - 1\n",
        f"{KT}::test_matches_fp64_reference",
    ),
    m(
        "K3",
        "dlogits kernel: temperature missing from the backward",
        TRITON,
        "    grad = grad * inv_temp[:, None]\n",
        "",
        f"{KT}::test_per_row_and_scalar_temperature",
    ),
    m(
        "K4",
        "Triton forward: entropy sign flipped",
        TRITON,
        "return row_max, log_sumexp, logprob, log_sumexp - shifted",
        "return row_max, log_sumexp, logprob, shifted - log_sumexp",
        f"{KT}::test_matches_fp64_reference",
    ),
    m(
        "K5",
        "split combine of the log-sum-exp without rescaling each slice to the row max",
        TRITON,
        "scale = torch.exp(run_max - row_max)",
        "scale = torch.ones_like(run_max)",
        f"{KT}::test_matches_fp64_reference",
    ),
    m(
        "K6",
        "dW accumulated in the input dtype (bf16) across backward chunks",
        TRITON,
        "torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w",
        "torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device) if need_w",
        f"{KT}::test_bf16_weight_gradient_is_accumulated_in_fp32_across_chunks",
    ),
    m(
        "K7",
        "dlogits kernel: entropy gradient with the wrong sign of the entropy term",
        TRITON,
        "(logp + entropy[:, None])",
        "(logp - entropy[:, None])",
        f"{KT}::test_matches_fp64_reference",
    ),
    m(
        "K8",
        "dlogits kernel: target column subtracts the upstream gradient",
        TRITON,
        "grad + g1[:, None], grad)",
        "grad - g1[:, None], grad)",
        f"{KT}::test_matches_fp64_reference",
    ),
    m(
        "K9",
        "row statistics: cancellation-prone entropy lse - E_p[z]",
        "kernels/src/rowwise.py",
        "entropy = -_row_dot(logp.exp(), logp)",
        "entropy = (row_max + log_sumexp) - (logp.exp() * z).sum(-1)",
        f"{KT}::test_large_logits_no_worse_than_torch_fp32",
    ),
    m(
        "K10",
        "chunked backward: temperature missing from dlogits",
        TORCH,
        "            dlogits.mul_(inv_temperature[rows, None])\n",
        "",
        f"{KT}::test_per_row_and_scalar_temperature",
    ),
    m(
        "K11",
        "ignore mask: any negative target is ignored (ignore_index disregarded)",
        "kernels/src/logprob.py",
        "valid = targets != ignore_index",
        "valid = targets >= 0",
        f"{KT}::test_custom_ignore_index",
    ),
    m(
        "K12",
        "max_logprob: the row max left in (logit of the argmax, not its log-prob)",
        TRITON,
        "max_logprob = torch.where(valid, -log_sumexp, zero)",
        "max_logprob = torch.where(valid, row_max - log_sumexp, zero)",
        f"{KT}::test_max_logprob_marks_argmax_targets",
    ),
    m(
        "K13",
        "chunked backward: dW from every chunk but the first",
        TORCH,
        "grad_weight.addmm_(dlogits.t(), h)",
        "grad_weight.addmm_(dlogits.t(), h) if start else None",
        f"{KT}::test_matches_fp64_reference",
    ),
    # ---- occ_fast/algorithm/ ----
    m(
        "A1",
        "clip bounds swapped inside the surrogate",
        POLICY,
        "torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)",
        "torch.clamp(ratio, 1.0 - eps_high, 1.0 + eps_low)",
        "tests/test_algorithm_policy_loss.py",
    ),
    m(
        "A2",
        "dual clip applied to positive advantages too",
        POLICY,
        "loss = torch.where(negative, torch.minimum(loss_max, dual_bound), loss_max)",
        "loss = torch.minimum(loss_max, dual_bound)",
        "tests/test_algorithm_policy_loss.py",
    ),
    m(
        "A3",
        "OCC ratio inverted (v2 / c)",
        "occ_fast/algorithm/occ.py",
        "lam = lam_plus * cross.sum() / (sq.sum() + OCC_EPS)",
        "lam = lam_plus * sq.sum() / (cross.sum() + OCC_EPS)",
        "tests/test_algorithm_occ.py",
    ),
    m(
        "A4",
        "OCC forms swapped (advantage form used for form=loss)",
        "occ_fast/algorithm/loss.py",
        'cfg.occ_form == "advantage"',
        'cfg.occ_form == "loss"',
        "tests/test_algorithm_occ.py",
    ),
    m(
        "A5",
        "GRPO advantages with the biased std",
        "occ_fast/algorithm/advantages.py",
        "std = groups.std(dim=1, keepdim=True)",
        "std = groups.std(dim=1, keepdim=True, unbiased=False)",
        "tests/test_algorithm_advantages.py",
    ),
    m(
        "A6",
        "TIS weight inverted (rollout over old)",
        POLICY,
        "log_ratio = (lp_old - lp_rollout).detach()",
        "log_ratio = (lp_rollout - lp_old).detach()",
        "tests/test_algorithm_policy_loss.py",
    ),
    m(
        "A7",
        "overlong penalty ramps over the whole length, not the buffer",
        "occ_fast/algorithm/dapo.py",
        "penalty = (threshold - lengths) / cache_length",
        "penalty = (threshold - lengths) / max_length",
        "tests/test_algorithm_advantages.py",
    ),
    m(
        "A8",
        "OCC code / code_masked denominators swapped",
        "occ_fast/algorithm/occ.py",
        "denom = n\n            else:\n                denom = ratio.numel() if padded_entries is None else padded_entries",
        "denom = ratio.numel() if padded_entries is None else padded_entries\n            else:\n                denom = n",
        "tests/test_algorithm_occ.py",
    ),
    m(
        "A9",
        "TIS weight left off the MTP policy term",
        "occ_fast/algorithm/loss.py",
        "num_tokens=head_tokens, is_weights=is_weights",
        "num_tokens=head_tokens, is_weights=None",
        "tests/test_algorithm_occ.py",
    ),
    m(
        "A10",
        "zero-variance groups keep their NaN/huge advantages",
        "occ_fast/algorithm/advantages.py",
        "adv = torch.where(zero_std[:, None], torch.zeros_like(adv), adv)",
        "adv = adv",
        "tests/test_algorithm_advantages.py",
    ),
    m(
        "A11",
        "importance-weight mask band with exclusive edges (a ratio of exactly low or high is dropped)",
        MISMATCH,
        "inside = (seq_log >= math.log(low)) & (seq_log <= math.log(high))",
        "inside = (seq_log > math.log(low)) & (seq_log < math.log(high))",
        f"{MISMATCH_TESTS}::test_the_band_is_closed_and_judges_the_ratio_before_the_cap",
        f"{MISMATCH_TESTS}::test_training_run_logs_mismatch_every_step_with_sequence_level_correction",
    ),
    m(
        "A12",
        "mask band judges the sequence ratio after the sequence-level cap",
        MISMATCH,
        "        weights = torch.exp(torch.clamp(seq_log, max=math.log(cap)))\n",
        "        seq_log = torch.clamp(seq_log, max=math.log(cap))\n        weights = torch.exp(seq_log)\n",
        f"{MISMATCH_TESTS}::test_the_band_is_closed_and_judges_the_ratio_before_the_cap",
    ),
    m(
        "A13",
        "mismatch KL k1 in the wrong direction (KL(old || rollout) estimated from rollout samples)",
        MISMATCH,
        'self._add("k1", diff.sum())',
        'self._add("k1", -diff.sum())',
        f"{MISMATCH_TESTS}::test_training_run_logs_mismatch_every_step_with_sequence_level_correction",
    ),
    # ---- occ_fast/model/ ----
    m(
        "M1",
        "MTP row alignment: depth k reads row j - k",
        "occ_fast/model/rows.py",
        "row = token_index - 1 - k",
        "row = token_index - k",
        "tests/test_model_forward.py",
    ),
    m(
        "M2",
        "MTP row existence off by one",
        "occ_fast/model/rows.py",
        "has_row = position >= 1 + k",
        "has_row = position >= k",
        "tests/test_model_forward.py",
    ),
    m(
        "M3",
        "MTP embedding alignment: depth k embeds token i + k - 1",
        "occ_fast/model/wrapper.py",
        "shift_left(embeds, k) *",
        "shift_left(embeds, k - 1) *",
        "tests/test_model_forward.py",
    ),
    m(
        "M4",
        "detach_trunk switch ignored",
        "occ_fast/model/wrapper.py",
        "previous = previous.detach() if self.detach_trunk else previous",
        "previous = previous",
        "tests/test_model_grad.py",
    ),
    m(
        "M5",
        "detach_lm_head switch ignored",
        "occ_fast/model/wrapper.py",
        "mtp_weight = weight.detach() if self.detach_lm_head else weight",
        "mtp_weight = weight",
        "tests/test_model_grad.py",
    ),
    m(
        "M7",
        "MTP rows may read a packed neighbour sequence",
        "occ_fast/model/rows.py",
        "has_row = has_row & (seg[row] == seg[token_index])",
        "has_row = has_row",
        "tests/test_model_forward.py",
    ),
    m(
        "M8",
        "every MTP depth reads the trunk, not the previous depth",
        "occ_fast/model/wrapper.py",
        "previous = back(out)",
        "previous = previous",
        "tests/test_model_forward.py",
    ),
    # ---- occ_fast/batching.py ----
    m(
        "B1",
        "packed rollout log-probs shifted by one token",
        "occ_fast/policy/batching.py",
        "rollout_logprobs=row(lps, torch.float32)",
        "rollout_logprobs=row([0.0] + lps[:-1], torch.float32)",
        f"{BATCH}::test_per_token_fields_reach_their_own_tokens",
    ),
    m(
        "B2",
        "packed advantages shifted by one token (each sample's last token gets the next one's)",
        "occ_fast/policy/batching.py",
        "advantages=row(adv, torch.float32)",
        "advantages=row(adv[1:] + [0.0], torch.float32)",
        f"{BATCH}::test_per_token_fields_reach_their_own_tokens",
    ),
    m(
        "B3",
        "packed position ids do not restart at each sequence",
        "occ_fast/policy/batching.py",
        "pos += list(range(s.length))",
        "pos += list(range(len(pos), len(pos) + s.length))",
        f"{BATCH}::test_packed_and_padded_layouts_agree",
    ),
    m(
        "B4",
        "padded rollout log-probs one column early",
        "occ_fast/policy/batching.py",
        "batch.rollout_logprobs[b, p:n] = s.rollout_logprobs",
        "batch.rollout_logprobs[b, p - 1 : n - 1] = s.rollout_logprobs",
        f"{BATCH}::test_per_token_fields_reach_their_own_tokens",
    ),
    m(
        "B5",
        "MTP row count off by one (normaliser)",
        "occ_fast/policy/batching.py",
        "if j >= depth + 1)",
        "if j >= depth)",
        f"{BATCH}::test_mtp_rows_count_matches_the_model",
    ),
    m(
        "B6",
        "packing with a strict budget comparison (a micro-batch never fills its token budget)",
        "occ_fast/policy/batching.py",
        "if load + sample.length <= token_budget:",
        "if load + sample.length < token_budget:",
        f"{BATCH}::test_a_micro_batch_fills_its_token_budget_exactly_and_one_token_more_starts_another",
    ),
    # ---- the RL step and its update (occ_fast/training/step.py, update.py) ----
    Mutant(
        "T1",
        "old log-probs of later mini-batches computed after the earlier updates",
        (
            (
                STEP,
                "        if diagnose and i == len(minis) - 1:\n",
                "        if i > 0:\n            olds = [old_main_logprobs(run, m) for m, _ in micros]\n"
                "        if diagnose and i == len(minis) - 1:\n",
            ),
        ),
        (f"{LOOP}::test_old_logprobs_of_every_mini_batch_come_from_the_rollout_weights",),
    ),
    m(
        "T2",
        "second mini-batch treated as the first (lp_old from its own, updated, forward)",
        STEP,
        "if i > 0 or (diagnose",
        "if i > 1 or (diagnose",
        f"{LOOP}::test_old_logprobs_of_every_mini_batch_come_from_the_rollout_weights",
    ),
    Mutant(
        "T3",
        "LR scheduler stepped once per mini-batch instead of once per RL step",
        (
            (STEP, "    run.scheduler.step()\n", ""),
            (
                UPDATE,
                "        run.optimizer.step()\n",
                "        run.optimizer.step()\n        run.scheduler.step()\n",
            ),
        ),
        (f"{LOOP}::test_learning_rate_schedule_advances_once_per_rl_step",),
    ),
    Mutant(
        "T4",
        "gradients never cleared between mini-batches",
        (
            (
                UPDATE,
                "    model.train()\n    run.optimizer.zero_grad(set_to_none=True)\n",
                "    model.train()\n",
            ),
            (
                UPDATE,
                "        stats.bad_grad_norm = float(grad_norm)\n    run.optimizer.zero_grad(set_to_none=True)\n",
                "        stats.bad_grad_norm = float(grad_norm)\n",
            ),
        ),
        (f"{LOOP}::test_gradients_are_cleared_between_mini_batches",),
    ),
    m(
        "T5",
        "each micro-batch normalised by its own token count",
        UPDATE,
        "            num_tokens=num_tokens,\n",
        "            num_tokens=float(lp_old.numel()),\n",
        f"{LOOP}::test_every_micro_batch_divides_by_its_mini_batch_token_count",
    ),
    m(
        "T6",
        "first mini-batch's lp_old not detached",
        UPDATE,
        "else main.logprob.detach()",
        "else main.logprob",
        f"{LOOP}::test_first_mini_batch_old_logprobs_come_from_the_training_forward",
    ),
    m(
        "T7",
        "a non-finite gradient norm still applies the update",
        UPDATE,
        "finite = bool(torch.isfinite(grad_norm))",
        "finite = True",
        f"{E2E}::test_nan_loss_is_skipped_counted_and_never_applied",
    ),
    m(
        "T8",
        "rollout log-probs handed to the loss from the advantages tensor",
        UPDATE,
        "lp_rollout = out.gather(micro.rollout_logprobs)",
        "lp_rollout = out.gather(micro.advantages)",
        f"{LOOP}::test_rollout_logprobs_reach_the_loss_aligned_with_the_scored_tokens",
    ),
    m(
        "T9",
        "a padding micro-batch backpropagates its loss",
        UPDATE,
        "(loss * 0.0).backward()",
        "loss.backward()",
        f"{DIST}::test_two_ranks_train_like_one_process",
    ),
    m(
        "T10",
        "mini-batches contiguous, not strided (data parallelism changes the algorithm)",
        STEP,
        "[p % cfg.optim.mini_batches for p in positions]",
        "[i * cfg.optim.mini_batches // len(positions) for i in range(len(positions))]",
        f"{DIST}::test_two_ranks_train_like_one_process",
    ),
    m(
        "T11",
        "micro-batch loss given no token count (each normalises by its own tokens)",
        UPDATE,
        "            num_tokens=num_tokens,\n",
        "            num_tokens=None,\n",
        f"{LOOP}::test_every_micro_batch_divides_by_its_mini_batch_token_count",
    ),
    # ---- checkpointing and resume ----
    m(
        "C1",
        "RNG state not restored on resume",
        "occ_fast/checkpointing/single_process.py",
        "restore_rng_state(load_torch(path / RNG_FILE))",
        "None",
        f"{E2E}::test_resume_continues_exactly",
    ),
    m(
        "C2",
        "prompt sampler not restored in the distributed resume path",
        SETUP,
        '        sampler.load_state_dict(state.extra["sampler"])\n',
        '        if not sharded:\n            sampler.load_state_dict(state.extra["sampler"])\n',
        f"{DIST}::test_two_rank_checkpoint_resumes_on_two_ranks_or_one",
    ),
    m(
        "C3",
        "prompt sampler not restored at all",
        SETUP,
        '        sampler.load_state_dict(state.extra["sampler"])\n',
        "",
        f"{E2E}::test_resume_continues_exactly",
    ),
    m(
        "C4",
        "resume repeats the saved step",
        TRAIN,
        'extra={"next_step": step + 1,',
        'extra={"next_step": step,',
        f"{E2E}::test_resume_continues_exactly",
    ),
    m(
        "C5",
        "scheduler not restored on resume",
        "occ_fast/checkpointing/single_process.py",
        "    for obj, name in ((optimizer, OPTIMIZER_FILE), (scheduler, SCHEDULER_FILE)):\n        if obj is None:",
        "    for obj, name in ((optimizer, OPTIMIZER_FILE),):\n        if obj is None:",
        f"{E2E}::test_resume_continues_exactly",
    ),
    m(
        "C6",
        "sampler resumes at the start of its epoch",
        "occ_fast/data/sampler.py",
        'int(state["epoch"]), int(state["position"])',
        'int(state["epoch"]), 0',
        "tests/test_data_synthetic_sampler.py::test_sampler_resume_gives_the_same_continuation",
    ),
    m(
        "C7",
        "sharded checkpoint: RNG of rank 0 restored on every rank",
        "occ_fast/checkpointing/sharded.py",
        "load_torch(path / _rng_file(process_rank()))",
        "load_torch(path / _rng_file(0))",
        f"{FSDP}::test_sharded_checkpoint_gives_every_rank_its_own_rng_back",
    ),
    # ---- stops: signals, resume's regime rule, non-finite updates ----
    m(
        "S1",
        "a second signal within the grace window (torchrun's copy of one Ctrl-C) exits unsaved",
        "occ_fast/monitoring/interrupt.py",
        "        elif now - self._first_at >= REPEAT_GRACE_S:\n",
        "        else:\n",
        "tests/test_faults_signals.py::test_two_sigints_in_quick_succession_stop_like_one",
    ),
    m(
        "R1",
        "--run.allow-regime-change also lets a resume switch to or from regime 'none'",
        "occ_fast/checkpointing/resume.py",
        '        if "none" in (old, new):\n',
        '        if "none" in (old, new) and not requested.run.allow_regime_change:\n',
        "tests/test_faults_resume.py::test_allow_regime_change_still_refuses_regime_none",
        "tests/test_faults_resume_safety.py::test_regime_none_is_refused_even_with_allow_regime_change",
    ),
    m(
        "H1",
        "an applied update does not end a streak of non-finite ones (skipped updates counted over the run)",
        HEALTH,
        "            if ok:\n                self.streak, self.streak_start = 0, None\n",
        "            if ok:\n                continue\n",
        f"{NONFINITE}::test_only_updates_skipped_in_a_row_stop_the_run_across_steps",
    ),
    m(
        "H2",
        "the non-finite streak restarts at every RL step",
        HEALTH,
        "        for ok in finite:\n",
        "        self.streak = 0\n        for ok in finite:\n",
        f"{NONFINITE}::test_only_updates_skipped_in_a_row_stop_the_run_across_steps",
    ),
    m(
        "H3",
        "the non-finite stop names the streak's last step as its first",
        HEALTH,
        "self.streak_start = step if self.streak == 0 else self.streak_start",
        "self.streak_start = step",
        f"{NONFINITE}::test_only_updates_skipped_in_a_row_stop_the_run_across_steps",
    ),
    m(
        "H4",
        "optim.max_nonfinite_updates 0 stops the run instead of never stopping it",
        HEALTH,
        "if not self.limit or self.streak < self.limit:",
        "if self.streak < self.limit:",
        f"{NONFINITE}::test_max_nonfinite_updates_0_never_stops",
    ),
    # ---- clip defaults ----
    Mutant(
        "D1",
        "clip defaults swapped in the configuration (the tiny preset uses them)",
        (
            (
                "occ_fast/config/tree.py",
                "eps_low: Annotated[float, Field(ge=0, lt=1)] = 0.2\n",
                "eps_low: Annotated[float, Field(ge=0, lt=1)] = 0.28\n",
            ),
            (
                "occ_fast/config/tree.py",
                "eps_high: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.28\n",
                "eps_high: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.2\n",
            ),
        ),
        (f"{LOOP}::test_clip_defaults_are_dapo_clip_higher",),
    ),
    Mutant(
        "D2",
        "clip defaults swapped in LossConfig",
        (
            ("occ_fast/algorithm/config.py", "    eps_low: float = 0.2\n", "    eps_low: float = 0.28\n"),
            ("occ_fast/algorithm/config.py", "    eps_high: float = 0.28\n", "    eps_high: float = 0.2\n"),
        ),
        (f"{LOOP}::test_clip_defaults_are_dapo_clip_higher",),
    ),
    m(
        "D3",
        "clip defaults swapped in the surrogate's signature",
        POLICY,
        "    eps_low: float = 0.2,\n    eps_high: float = 0.28,\n    dual_clip_c: float = 10.0,\n) -> tuple",
        "    eps_low: float = 0.28,\n    eps_high: float = 0.2,\n    dual_clip_c: float = 10.0,\n) -> tuple",
        f"{LOOP}::test_clip_defaults_are_dapo_clip_higher",
    ),
    # ---- vLLM rules and probes (issue 21; the parts that run without vLLM) ----
    m(
        "V1",
        "vLLM version floor exclusive (the oldest supported release, 0.10.2, is refused)",
        RULES,
        "if release < Version(need).release:",
        "if release <= Version(need).release:",
        f"{VLLM_TESTS}::test_vllm_version_floors",
    ),
    m(
        "V2",
        "MTP speculative rollouts held to the plain floor (vLLM 0.11-0.12 accepted for drafts)",
        RULES,
        'need = MIN_MTP_VERSION if speculative == "mtp" else MIN_VERSION',
        "need = MIN_VERSION",
        f"{VLLM_TESTS}::test_vllm_version_floors",
    ),
    m(
        "V3",
        "V2-runner rule applied to every release from 0.25 on (0.26's drafter runs on V1 only)",
        RULES,
        "release[:2] == (0, 25)",
        "release[:2] >= (0, 25)",
        f"{VLLM_TESTS}::test_vllm_025_drafts_on_its_v1_runner_the_v2_one_has_no_drafter_handle",
    ),
    m(
        "V4",
        "VLLM_USE_V2_MODEL_RUNNER read case-sensitively (=True slips through to a drafter with no handle)",
        RULES,
        "v2_runner.strip().lower() in",
        "v2_runner in",
        f"{RULES_TESTS}",
    ),
    m(
        "V5",
        "greedy MTP drafting refused on a CPU engine (the probes' own mode)",
        RULES,
        'speculative == "mtp" and temperature > 0:',
        'speculative == "mtp" and temperature >= 0:',
        f"{RULES_TESTS}::test_plain_rollouts_run_on_a_cpu_engine_sampled_drafts_do_not",
    ),
    m(
        "V6",
        "a GPU build of vLLM on a machine without CUDA counted as a GPU engine",
        RULES,
        "cpu_build or not torch.cuda.is_available()",
        "cpu_build",
        f"{RULES_TESTS}",
    ),
    m(
        "V7",
        "weight-sync probe passes non-finite engine log-probs (NaN mean compares False)",
        "occ_fast/rollout/vllm_engine.py",
        "if not torch.isfinite(diff).all() or mean > threshold:",
        "if mean > threshold:",
        f"{VLLM_TESTS}::test_check_raises_on_non_finite_log_probs",
    ),
    m(
        "V8",
        "drafter probe: a drafter accepting fewer drafts than the replay (a stale one) passes",
        PROBE,
        'if abs(rates["measured"] - rates["replayed"]) > tolerance:',
        'if rates["measured"] - rates["replayed"] > tolerance:',
        PROBE_TESTS,
    ),
    m(
        "V9",
        "drafter probe: vLLM drafting nothing is not refused (a division by zero instead)",
        PROBE,
        'if not measured.get("draft_tokens") or not replayed["draft_tokens"]:',
        'if not replayed["draft_tokens"]:',
        PROBE_TESTS,
    ),
    m(
        "V10",
        "drafter replay: the last completion token never confirms a draft",
        PROBE,
        "while a < n and t + a + 1 <= last and",
        "while a < n and t + a + 1 < last and",
        PROBE_TESTS,
    ),
    m(
        "V11",
        "drafter replay: the next draft starts after the last accepted token, not after the token vLLM adds",
        PROBE,
        "drafts, accepted, t = drafts + 1, accepted + a, t + a + 1",
        "drafts, accepted, t = drafts + 1, accepted + a, t + max(a, 1)",
        PROBE_TESTS,
    ),
    # ---- fp32 master weights and the engine dtype (issue 22) ----
    m(
        "W1",
        "fp16 models get no fp32 masters (only bf16 counted as half precision)",
        MASTERS,
        "HALF_PRECISION = (torch.bfloat16, torch.float16)",
        "HALF_PRECISION = (torch.bfloat16,)",
        MASTERS_TESTS,
    ),
    m(
        "W2",
        "masters keep only the last micro-batch's gradient (no accumulation across backward calls)",
        MASTERS,
        "            master.grad.add_(param.grad)\n",
        "            master.grad = param.grad.to(torch.float32)\n",
        MASTERS_TESTS,
    ),
    m(
        "W3",
        "16-bit gradient kept after it is added to the master (added again by the next backward)",
        MASTERS,
        "        param.grad = None\n",
        "",
        MASTERS_TESTS,
    ),
    m(
        "W4",
        "compute copy not refreshed after leaving fp32_weights (a loaded checkpoint never reaches the forward)",
        MASTERS,
        "                module._parameters[name] = param\n            self.publish()\n",
        "                module._parameters[name] = param\n",
        MASTERS_TESTS,
    ),
    m(
        "W5",
        "AdamW steps the 16-bit compute copies, not the masters",
        "occ_fast/training/optim.py",
        "decay, no_decay = ({n: masters.master(p) for n, p in d.items()} for d in (decay, no_decay))",
        "pass",
        MASTERS_TESTS,
    ),
    m(
        "W6",
        "rollout.dtype auto: bf16 autocast on a CPU run gives a bfloat16 engine (the trainer computes fp32)",
        "occ_fast/training/engine.py",
        '    autocast = cfg.train.bf16_autocast and device.type == "cuda"\n',
        "    autocast = cfg.train.bf16_autocast\n",
        ENGINE_TESTS,
    ),
    m(
        "W7",
        "an explicit rollout.dtype overridden by the trainer's dtype",
        "occ_fast/training/engine.py",
        '    if cfg.rollout.dtype != "auto":\n        return cfg.rollout.dtype\n',
        "",
        ENGINE_TESTS,
    ),
    # ---- cross-fitted diagnostics, the oracle regime (issue 23) ----
    m(
        "X1",
        "cross-fitted c from one half against itself (the same-sample bias back in)",
        CROSS_FIT,
        'cross = (_dot(half["rl_a"], half[f"{kind}_b"]) + _dot(half["rl_b"], half[f"{kind}_a"])) / 2',
        'cross = (_dot(half["rl_a"], half[f"{kind}_a"]) + _dot(half["rl_b"], half[f"{kind}_b"])) / 2',
        CROSS_FIT_TESTS,
    ),
    m(
        "X2",
        "oracle coefficient over the cross-fitted v2 (explodes where the halves barely agree)",
        CROSS_FIT,
        'stats["c_cross"] / stats["v2"] if stats["v2"] > 0',
        'stats["c_cross"] / stats["v2_cross"] if stats["v2_cross"] > 0',
        CROSS_FIT_TESTS,
    ),
    m(
        "X3",
        "oracle coefficient from the same-sample c",
        CROSS_FIT,
        'lam = loss_cfg.occ_lam_plus * stats["c_cross"]',
        'lam = loss_cfg.occ_lam_plus * stats["c"]',
        CROSS_FIT_TESTS,
    ),
    m(
        "X4",
        "lam_star_cross kept where v2_cross <= 0 (a negative or infinite coefficient)",
        CROSS_FIT,
        'out["c_cross"] / out["v2_cross"] if out["v2_cross"] > 0 else 0.0',
        'out["c_cross"] / out["v2_cross"] if out["v2_cross"] != 0 else 0.0',
        CROSS_FIT_TESTS,
    ),
    m(
        "X5",
        "one-step gain with the wrong sign (with minus without)",
        CROSS_FIT,
        "gains.append(held_out[0] - held_out[1])",
        "gains.append(held_out[1] - held_out[0])",
        CROSS_FIT_TESTS,
    ),
    m(
        "X6",
        "one-step gain judged on the half it trained on",
        CROSS_FIT,
        "halves, not train_a, loss_cfg,",
        "halves, train_a, loss_cfg,",
        CROSS_FIT_TESTS,
    ),
    m(
        "X7",
        "prompt halves by token position, not by prompt (a GRPO group straddles both halves)",
        CROSS_FIT,
        "halves.append(in_a[seq] & micro.response_mask)",
        "halves.append((torch.arange(seq.shape[-1], device=seq.device) % 2 == 0) & micro.response_mask)",
        CROSS_FIT_TESTS,
    ),
    # ---- the mismatch k3, the code aggregation's divisor (issue 23 fixes) ----
    m(
        "A14",
        "mismatch k3 as exp(-d) - 1 + d (cancels to 0 or below for small differences)",
        MISMATCH,
        "return torch.expm1(-d) + d",
        "return torch.exp(-d) - 1 + d",
        f"{MISMATCH_TESTS}::test_mismatch_log_k3_matches_fp64_for_small_and_large_differences",
    ),
    m(
        "A15",
        "mismatch k3 of the reverse ratio (exp(d) - 1 - d)",
        MISMATCH,
        "return torch.expm1(-d) + d",
        "return torch.expm1(d) - d",
        f"{MISMATCH_TESTS}::test_mismatch_log_k3_matches_fp64_for_small_and_large_differences",
    ),
    m(
        "A16",
        "OCC code aggregation divides by the scored entries, not B x max_new_tokens",
        "occ_fast/algorithm/occ.py",
        "denom = ratio.numel() if padded_entries is None else padded_entries",
        "denom = ratio.numel()",
        "tests/test_occ_code_aggregation.py",
    ),
    m(
        "A17",
        "training's code divisor from the micro-batch's longest response, not rollout.max_new_tokens",
        UPDATE,
        "occ_entries=padded_response_entries(micro.num_samples, cfg.rollout.max_new_tokens),",
        "occ_entries=None,",
        "tests/test_occ_code_aggregation.py::test_training_applies_the_reference_code_coefficient",
    ),
    # ---- token-weighted metrics across ranks ----
    m(
        "G1",
        "a rank with no tokens enters the token-weighted mean (its NaN or 0 mean is averaged in)",
        COLLECTIVES,
        "if w.get(key, 0.0) > 0]  # skip empty ranks",
        "if key in w]  # skip empty ranks",
        GATHER_TESTS,
    ),
    m(
        "G2",
        "token means combined as a plain mean over ranks (rank weights ignored)",
        COLLECTIVES,
        "out[key] = sum(v * w for v, w in weighted) / sum(w for _, w in weighted)",
        "out[key] = sum(v for v, _ in weighted) / len(weighted)",
        GATHER_TESTS,
    ),
    m(
        "G3",
        "MTP accuracy weighted by the rank's tokens, not its MTP rows",
        "occ_fast/training/update_stats.py",
        '"mtp/accuracy": counts.get("count/mtp_rows", 0.0),',
        '"mtp/accuracy": counts.get("count/tokens", 0.0),',
        GATHER_TESTS,
    ),
    # ---- paired comparisons of seeds ----
    m(
        "P1",
        "sign test p-value not capped at 1 (an even split reads p > 1)",
        PAIRED,
        "return min(1.0, 2 * sum(",
        "return (2 * sum(",
        PAIRED_TESTS,
    ),
    m(
        "P2",
        "sign test counts a tie (difference exactly 0) as a seed below",
        PAIRED,
        'out["below"] = sum(d < 0 for d in differences)',
        'out["below"] = sum(d <= 0 for d in differences)',
        PAIRED_TESTS,
    ),
    m(
        "P3",
        "MDD with the power quantile on the wrong side (t(0.2) for t(0.8))",
        PAIRED,
        "+ t_quantile(POWER, n - 1)) * se",
        "+ t_quantile(1 - POWER, n - 1)) * se",
        PAIRED_TESTS,
    ),
    m(
        "P4",
        "paired differences over every arm row, not the seeds the reference has",
        PAIRED,
        'r.get(key) is not None and r["seed"] in base\n',
        "r.get(key) is not None\n",
        PAIRED_TESTS,
    ),
    # ---- prompts, the halt on a rank's write error, kernels ----
    m(
        "Q1",
        "chat template output taken as token ids only when it is a dict (transformers 5's BatchEncoding is not)",
        "occ_fast/prompts.py",
        "if isinstance(ids, Mapping):",
        "if isinstance(ids, dict):",
        "tests/test_chat_prompts.py::test_chat_messages_encode_to_the_template_token_ids",
    ),
    m(
        "S2",
        "a halt on a write error skips the checkpoint of a step that was not saved anyway",
        TRAIN,
        "    if not saved:\n        save(run, step)\n    checkpoint = find_latest",
        "    checkpoint = find_latest",
        "tests/test_faults_output.py::test_full_disk_while_logging_metrics_stops_at_a_checkpoint_it_names",
    ),
    m(
        "S3",
        "a single process ignores its own write error (the run goes on without metrics)",
        "occ_fast/monitoring/interrupt.py",
        "            return self.signum, halted\n",
        "            return self.signum, False\n",
        "tests/test_faults_output.py::test_full_disk_while_logging_metrics_stops_at_a_checkpoint_it_names",
    ),
    m(
        "K14",
        "kernel variant rule: a TMA variant chosen for inputs TMA cannot load",
        "kernels/src/variants.py",
        "usable = [v for v in found if tma_ok or not v.tma]",
        "usable = found",
        "tests/test_kernel_variants.py::test_rule_keeps_the_pointer_kernel_where_no_hopper_variant_applies",
        "tests/test_kernel_variants.py::test_forced_variant_on_inputs_tma_cannot_load_is_an_error",
    ),
    m(
        "K15",
        "fp32-output addmm probe on fp32 operands (always passes; the bf16 call then fails on CPU)",
        TRITON,
        "a = torch.zeros(16, 16, device=device_type, dtype=torch.bfloat16)",
        "a = torch.zeros(16, 16, device=device_type)",
        "tests/test_kernel_weight_grad.py",
    ),
    m(
        "K16",
        "fp32-output addmm probe: a RuntimeError (CPU torch's answer) escapes instead of reading 'absent'",
        TRITON,
        "except (TypeError, RuntimeError, NotImplementedError):\n        return False",
        "except (TypeError, NotImplementedError):\n        return False",
        "tests/test_kernel_weight_grad.py",
    ),
    # ---- equivalent: listed with the reason, not run ----
    m(
        "E1",
        "high-clip flag on A >= 0 instead of A > 0",
        POLICY,
        "clipped_high = clip_active & (advantages > 0)",
        "clipped_high = clip_active & (advantages >= 0)",
        equivalent="with A = 0 both the clipped and unclipped losses are 0, so clip_active is False there",
    ),
    m(
        "E3",
        "gradients cleared only at the end of each update",
        UPDATE,
        "    model.train()\n    run.optimizer.zero_grad(set_to_none=True)\n",
        "    model.train()\n",
        equivalent="every update and the SFT warm-start end with zero_grad(set_to_none=True), and the "
        "exact diagnostics use torch.autograd.grad, which never writes .grad",
    ),
    m(
        "X8",
        "a finished torchrun rank exits through the interpreter's teardown (sys.exit)",
        "occ_fast/distributed/process_group.py",
        "    os._exit(code)",
        "    sys.exit(code)",
        "tests/test_train_distributed.py::test_finished_ranks_leave_without_the_interpreters_teardown",
    ),
    m(
        "X9",
        "one_step_gain restores the compute copies, not the fp32 masters",
        "occ_fast/monitoring/cross_fit.py",
        "    with torch.no_grad(), fp32_weights(optimizer):",
        "    with torch.no_grad():",
        "tests/test_cross_fit.py::test_one_step_gain_restores_the_fp32_master_weights_of_a_bf16_model",
    ),
    m(
        "M6",
        "MTP depth k at the trunk's positions (no + k)",
        "occ_fast/model/wrapper.py",
        "positions = layout.position_ids + k",
        "positions = layout.position_ids",
        equivalent="RoPE attention depends only on position differences, and every row of a sequence "
        "shifts by the same k, so no attention score changes (up to rounding)",
    ),
    m(
        "E5",
        "packed advantages shifted right by one token",
        "occ_fast/policy/batching.py",
        "advantages=row(adv, torch.float32)",
        "advantages=row([0.0] + adv[:-1], torch.float32)",
        equivalent="an advantage is constant over its whole sample, prompt included, and every prompt has "
        "at least one token: the shifted value lands on an unscored prompt token",
    ),
    m(
        "E6",
        "packed position ids start at 1",
        "occ_fast/policy/batching.py",
        "pos += list(range(s.length))",
        "pos += list(range(1, s.length + 1))",
        equivalent="sequences still break where positions restart, and RoPE attention depends only on "
        "position differences",
    ),
]

MUTANTS = [x for x in ALL if x.equivalent is None]
EQUIVALENT = [x for x in ALL if x.equivalent is not None]
