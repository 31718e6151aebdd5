"""The rollout engine a run samples from: transformers (in process) or vLLM (started from disk)."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from occ_fast.checkpointing.sharded import export_hf
from occ_fast.config import Config
from occ_fast.model import MTPModel, save_mtp_model
from occ_fast.rollout import RolloutEngine, TransformersEngine


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
        gpu_memory_utilization=ro.gpu_memory_utilization,
        max_model_len=ro.max_model_len,
        seed=cfg.train.seed,
        speculative=ro.speculative,
        num_speculative_tokens=ro.num_speculative_tokens,
        sleep_level=ro.sleep_level,
        check_threshold=ro.sync_check_threshold,
    )
