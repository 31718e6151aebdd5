"""The rules that tie several fields together; each field's own range is declared on the field (``tree``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from occ_fast.config.tree import Config


def problems(cfg: Config) -> list[str]:
    """Every combination of fields in ``cfg`` that cannot work, each message naming the fields.

    Runs also when single fields are out of range, so that all problems are reported at once: the
    divisibility checks skip counts below 1 (reported by their fields).
    """
    m, tiny, mtp, alg, ro = cfg.model, cfg.model.tiny, cfg.mtp, cfg.algorithm, cfg.rollout
    data, opt, tr, run = cfg.data, cfg.optim, cfg.train, cfg.run
    cpu = tr.device == "cpu"
    tiny_heads = m.name_or_path is None and tiny.num_heads >= 1 and tiny.num_kv_heads >= 1
    longest = ro.max_new_tokens + (data.max_prompt_tokens or 1)
    rules = [
        (
            not tiny_heads
            or (tiny.hidden_size % tiny.num_heads == 0 and (tiny.hidden_size // tiny.num_heads) % 2 == 0),
            f"model.tiny.num_heads={tiny.num_heads} must divide model.tiny.hidden_size={tiny.hidden_size} "
            "into an even head dimension (RoPE)",
        ),
        (
            not tiny_heads or tiny.num_heads % tiny.num_kv_heads == 0,
            f"model.tiny.num_kv_heads={tiny.num_kv_heads} must divide model.tiny.num_heads={tiny.num_heads}",
        ),
        (
            m.name_or_path is not None or m.mtp_init != "checkpoint",
            "model.mtp_init='checkpoint' needs model.name_or_path (the tiny random model has no MTP weights)",
        ),
        (not (m.use_liger and cpu), "model.use_liger needs a CUDA device, but train.device='cpu'"),
        (
            not (m.attn_implementation == "flash_attention_2" and cpu),
            "model.attn_implementation='flash_attention_2' needs a CUDA device, but train.device='cpu'",
        ),
        (
            mtp.regime == "none" or m.mtp_heads >= 1,
            f"mtp.regime={mtp.regime!r} needs model.mtp_heads >= 1 (or use mtp.regime='none')",
        ),
        (mtp.exact_every == 0 or m.mtp_heads >= 1, "mtp.exact_every > 0 needs model.mtp_heads >= 1"),
        (
            mtp.head_ce_coef == 0 or mtp.regime in ("policy", "occ"),
            f"mtp.head_ce_coef > 0 adds an MTP cross-entropy to the policy/occ regimes; mtp.regime={mtp.regime!r} "
            "has its own (mtp.coef)",
        ),
        (
            not (mtp.exact_every and mtp.regime == "none"),
            "mtp.exact_every > 0 needs an MTP term: mtp.regime must not be 'none'",
        ),
        (
            alg.tis_level == "token" or alg.tis_cap is not None,
            "algorithm.tis_level='sequence' needs algorithm.tis_cap (the cap it truncates the sequence ratio at)",
        ),
        (
            not cfg.reward.overlong_penalty or 0 < alg.overlong_buffer <= ro.max_new_tokens,
            f"reward.overlong_penalty needs 0 < algorithm.overlong_buffer <= rollout.max_new_tokens, "
            f"got {alg.overlong_buffer} and {ro.max_new_tokens}",
        ),
        (
            not (ro.speculative == "mtp" and ro.engine != "vllm"),
            "rollout.speculative='mtp' needs rollout.engine='vllm'",
        ),
        (
            not (ro.speculative == "mtp" and m.mtp_heads < 1),
            "rollout.speculative='mtp' needs model.mtp_heads >= 1",
        ),
        (data.source != "file" or bool(data.path), "data.path is required when data.source='file'"),
        (
            data.source == "file" or data.path is None,
            f"data.path={data.path!r} is set but data.source='synthetic' (use --data.source file)",
        ),
        (
            data.solution != "carries" or tuple(data.ops) == ("+",),
            f"data.solution='carries' is defined for data.ops ['+'] only, got {list(data.ops)}",
        ),
        (
            not (mtp.regime == "occ" and opt.mini_batches == 1),
            "mtp.regime='occ' with optim.mini_batches=1 never trains the MTP head: OCC's coefficient is 0 on "
            "the first mini-batch of an RL step (its weights are the rollout weights, so d_rl = 0); set "
            "optim.mini_batches >= 2 (the paper uses 4), or another mtp.regime",
        ),
        (
            opt.mini_batches < 1
            or data.prompts_per_step < 1
            or data.prompts_per_step % opt.mini_batches == 0,
            f"optim.mini_batches={opt.mini_batches} must divide the number of prompts per step "
            f"(data.prompts_per_step={data.prompts_per_step})",
        ),
        (
            opt.micro_batch_tokens >= longest,
            f"optim.micro_batch_tokens={opt.micro_batch_tokens} cannot hold one whole sequence "
            f"(data.max_prompt_tokens + rollout.max_new_tokens = {longest})",
        ),
        (
            tr.warmup_sft_steps == 0 or data.source == "synthetic" or m.name_or_path is None,
            "train.warmup_sft_steps > 0 needs data.source='synthetic' or the tiny model (model.name_or_path "
            "unset): the warm start teaches the synthetic task, not a file's problems",
        ),
        (
            not (run.resume in ("auto", "must") and run.name is None),
            f"run.resume={run.resume!r} needs run.name (the run directory under run.output_dir to continue)",
        ),
        (
            not (cfg.eval.every > 0 and data.source == "file" and cfg.eval.path is None),
            "eval.every > 0 with data.source='file' needs eval.path (there is no held-out split of a file)",
        ),
    ]
    return [message for ok, message in rules if not ok]
