"""The rollout engine a run samples from: transformers (in process) or vLLM (started from disk)."""

from __future__ import annotations

import os

import torch
from transformers import PreTrainedTokenizerBase

from occ_fast.checkpointing.sharded import export_hf
from occ_fast.config import Config, ConfigError
from occ_fast.model import MTPModel, save_mtp_model
from occ_fast.rollout import RolloutEngine, TransformersEngine
from occ_fast.rollout.vllm_rules import V2_RUNNER_ENV, engine_problem, installed_vllm
from occ_fast.training.build import model_dtype


def build_engine(
    cfg: Config,
    model: MTPModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    replica: torch.nn.Module | None = None,
    sharded: bool = False,
) -> RolloutEngine:
    """The rollout engine, starting from the model's current weights (initial, warm-started or resumed).

    ``replica``: a full, unsharded copy of the trunk for the transformers engine of an FSDP2 run
    (its weights are gathered in here); otherwise that engine samples from ``model.base`` itself."""
    if cfg.rollout.engine == "transformers":
        engine = TransformersEngine(
            replica if replica is not None else model.base, max_batch_size=cfg.rollout.batch_size
        )
        engine.sync_weights(model)  # a no-op without a replica
        return engine
    from occ_fast.rollout.vllm_engine import VLLMEngine

    start = cfg.run_dir / "rollout-init"  # vLLM loads from disk once; later syncs go through memory
    if sharded:
        export_hf(model, start, tokenizer=tokenizer)  # gathered, written by rank 0, read by every rank
    else:
        save_mtp_model(model, start, tokenizer=tokenizer)
    ro = cfg.rollout
    return VLLMEngine(
        start,
        dtype=engine_dtype(cfg, next(model.parameters()).device),
        enforce_eager=ro.enforce_eager,
        kv_cache_bytes=None if ro.kv_cache_gib is None else int(ro.kv_cache_gib * 2**30),
        gpu_memory_utilization=ro.gpu_memory_utilization,
        max_model_len=ro.max_model_len,
        seed=cfg.train.seed,
        speculative=ro.speculative,
        num_speculative_tokens=ro.num_speculative_tokens,
        sleep_level=ro.sleep_level,
        check_threshold=ro.sync_check_threshold,
    )


def engine_dtype(cfg: Config, device: torch.device) -> str:
    """``rollout.dtype``, with 'auto' the trainer's compute dtype: ``model.dtype`` as resolved on
    ``device``, or bfloat16 under ``train.bf16_autocast`` on CUDA (as setup resolves them)."""
    if cfg.rollout.dtype != "auto":
        return cfg.rollout.dtype
    autocast = cfg.train.bf16_autocast and device.type == "cuda"
    return "bfloat16" if autocast or model_dtype(cfg, device) == torch.bfloat16 else "float32"


def check_rollout_engine(cfg: Config) -> None:
    """What the installed vLLM cannot run (:func:`engine_problem`), refused in one line at start,
    before the warm start and the engine's start-up."""
    if cfg.rollout.engine != "vllm":
        return
    ro = cfg.rollout
    problem = engine_problem(installed_vllm(), ro.speculative, ro.temperature, os.environ.get(V2_RUNNER_ENV))
    if problem is not None:
        raise ConfigError(problem)
