"""Build the run's tokenizer, model and datasets from the config.

``model.name_or_path`` unset means the offline tiny setting: a byte-level BPE trained on the
synthetic task's text and a random-init model of ``model.tiny`` sizes with fresh MTP heads.
"""

from __future__ import annotations

import logging

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from occ_fast.config import Config, ConfigError
from occ_fast.data import ArithmeticTask, DatasetError, PromptRecord, load_prompt_file
from occ_fast.data.length import drop_long_prompts
from occ_fast.model import (
    MTPModel,
    apply_liger,
    check_model_dir,
    describe_liger,
    liger_counts,
    load_config,
    load_mtp_model,
)
from occ_fast.prompts import encode_prompt
from occ_fast.tokenizer import load_tokenizer, train_bpe_tokenizer

logger = logging.getLogger(__name__)

TINY_CONTEXT = 4096  # max_position_embeddings of the tiny model


def resolve_device(cfg: Config) -> torch.device:
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device='cuda' but no CUDA device is available")
    if cfg.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.train.device)


def model_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    if cfg.model.dtype == "bf16":
        return torch.bfloat16
    if cfg.model.dtype == "fp32":
        return torch.float32
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def synthetic_task(cfg: Config) -> ArithmeticTask:
    return ArithmeticTask(
        digits=cfg.data.digits,
        ops=tuple(cfg.data.ops),
        eval_fraction=cfg.data.eval_fraction,
        solution=cfg.data.solution,
    )


def check_model(cfg: Config) -> None:
    """``model.name_or_path``: a Hub id, a data directory or pickled weights end here in one line
    (:class:`~occ_fast.model.ModelDirError`), before anything heavy starts."""
    if cfg.model.name_or_path:
        check_model_dir(cfg.model.name_or_path)


def synthetic_records(cfg: Config, split: str, n: int, field: str) -> list[PromptRecord]:
    """``n`` problems of the synthetic task's ``split``; a task with fewer (``data.digits 1``) is bad
    input named by the field that asked for them, not a traceback."""
    try:
        return synthetic_task(cfg).sample(split, n, seed=cfg.data.seed)
    except ValueError as err:
        raise DatasetError(f"{field} {n}: {err}") from None


def build_tokenizer(cfg: Config) -> PreTrainedTokenizerBase:
    if cfg.model.name_or_path:
        return load_tokenizer(cfg.model.name_or_path)
    # The first 512 training problems (the draw is sequential: the same for any larger n) are enough
    # for the digit-level BPE.
    samples = synthetic_records(cfg, "train", cfg.data.train_problems, "data.train_problems")[:512]
    corpus = [f"{r.prompt} {r.reference_completion}" for r in samples]
    return train_bpe_tokenizer(corpus, vocab_size=cfg.model.tiny.vocab_size, split_digits=True)


def build_model(
    cfg: Config, tokenizer: PreTrainedTokenizerBase, device: torch.device, dtype: torch.dtype | None = None
) -> MTPModel:
    """The MTP model in ``model.dtype``, or in ``dtype`` when given (fp32 master weights under FSDP2
    mixed precision), with the trunk's activation checkpointing on when ``model.gradient_checkpointing``."""
    model = _build_mtp_model(cfg, tokenizer, device, dtype)
    if cfg.model.use_liger:
        logger.info(
            "Liger kernels in the model (trunk and MTP layers): %s", describe_liger(liger_counts(model))
        )
    if cfg.model.gradient_checkpointing:
        # Non-reentrant, per decoder layer: under FSDP2 the layer's own hooks stay outside the
        # recomputed region (transformers checkpoints each layer's forward).
        model.base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _build_mtp_model(
    cfg: Config, tokenizer: PreTrainedTokenizerBase, device: torch.device, dtype: torch.dtype | None
) -> MTPModel:
    dtype = dtype or model_dtype(cfg, device)
    detach = {"detach_trunk": cfg.mtp.detach_trunk, "detach_lm_head": cfg.mtp.detach_lm_head}
    heads = cfg.model.mtp_heads if cfg.mtp.regime != "none" else 0
    if cfg.model.name_or_path:
        return load_mtp_model(
            cfg.model.name_or_path,
            num_mtp=heads or None,
            mtp_init=cfg.model.mtp_init,
            dtype=dtype,
            device=device,
            attn_implementation=cfg.model.attn_implementation,
            use_liger=cfg.model.use_liger,
            **detach,
        )
    tiny = cfg.model.tiny
    config_cls, model_cls = (
        (Qwen2Config, Qwen2ForCausalLM) if tiny.arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    )
    hf_config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads,
        num_key_value_heads=tiny.num_kv_heads,
        max_position_embeddings=TINY_CONTEXT,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(cfg.train.seed)
    base = model_cls(hf_config).to(device=device, dtype=dtype)
    logger.info("built a random-init %s model: %.2fM parameters", tiny.arch, base.num_parameters() / 1e6)
    if cfg.model.use_liger:
        apply_liger(base)
    return MTPModel.from_base(base, heads, attn_implementation=cfg.model.attn_implementation, **detach)


def train_records(cfg: Config) -> list[PromptRecord]:
    if cfg.data.source == "synthetic":
        return synthetic_records(cfg, "train", cfg.data.train_problems, "data.train_problems")
    try:
        dataset = load_prompt_file(
            cfg.data.path,
            prompt_field=cfg.data.prompt_field,
            answer_field=cfg.data.answer_field,
            on_error=cfg.data.on_error,
        )
    except (OSError, ValueError) as e:  # missing/unreadable file, bad row, no usable rows
        raise DatasetError(f"training data (data.path): {e}") from e
    if dataset.num_skipped:
        logger.warning("%s: skipped %d malformed rows", cfg.data.path, dataset.num_skipped)
    return list(dataset.records)


def limit_prompt_length(
    cfg: Config, records: list[PromptRecord], tokenizer: PreTrainedTokenizerBase, *, warn: bool = True
) -> list[PromptRecord]:
    """Drop the training prompts longer than ``data.max_prompt_tokens`` or than the model's context
    leaves room for (``max_position_embeddings`` less ``rollout.max_new_tokens``: a longer prompt
    runs past the positions the model was trained on, and so slowly that the run looks hung), with
    one warning (when ``warn``: rank 0 of a data-parallel run) that counts them. A limit that drops
    every prompt is a :class:`ConfigError` naming its numbers."""
    limits = []  # (tokens, how the messages name the limit, what to do when it drops every prompt)
    if (most := cfg.data.max_prompt_tokens) is not None:
        limits.append((most, f"data.max_prompt_tokens={most}", "raise the limit"))
    context = (
        getattr(load_config(cfg.model.name_or_path), "max_position_embeddings", None)
        if cfg.model.name_or_path
        else TINY_CONTEXT
    )
    if context is not None:
        new, room = cfg.rollout.max_new_tokens, context - cfg.rollout.max_new_tokens
        name = f"max_position_embeddings {context} - rollout.max_new_tokens {new} = {room} prompt tokens"
        limits.append((room, name, "lower rollout.max_new_tokens"))
    if not limits:
        return records
    limit, name, fix = min(limits, key=lambda item: item[0])
    filtered = drop_long_prompts(records, lambda r: encode_prompt(tokenizer, r), limit)
    if not filtered.records:
        raise ConfigError(
            f"{name} drops all {len(records)} prompts (the longest has {filtered.longest} tokens): {fix}"
        )
    if filtered.num_dropped and warn:
        logger.warning(
            "%s: dropped %d of %d prompts (the longest had %d tokens)",
            name, filtered.num_dropped, len(records), filtered.longest,
        )  # fmt: skip
    return filtered.records


def eval_records(cfg: Config) -> list[PromptRecord]:
    """The held-out problems for periodic evaluation (the synthetic eval split, or ``eval.path``)."""
    if cfg.eval.path:
        dataset = load_prompt_file(
            cfg.eval.path, prompt_field=cfg.data.prompt_field, answer_field=cfg.data.answer_field
        )
        return list(dataset.records)[: cfg.eval.num_problems]
    return synthetic_records(cfg, "eval", cfg.eval.num_problems, "eval.num_problems")
