"""Liger (the real liger-kernel package; patching needs no GPU): the log says what was patched, the
random-init path applies it too, and a model type Liger does not know is refused, not skipped."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from model_helpers import tiny_base
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.models.llama import modeling_llama
from transformers.models.qwen2 import modeling_qwen2

from occ_fast.config import ConfigError, parse_config
from occ_fast.model import apply_liger, liger_counts
from occ_fast.training.build import build_model, build_tokenizer


@pytest.fixture(autouse=True)
def restore_modeling_modules(monkeypatch):
    """Liger swaps RoPE, RMSNorm and MLP classes module-wide: every later model in this process would
    get them. Put the modules back after each test."""
    for module in (modeling_qwen2, modeling_llama):
        prefix = "Qwen2" if module is modeling_qwen2 else "Llama"
        for name in ("apply_rotary_pos_emb", f"{prefix}RMSNorm", f"{prefix}MLP"):
            monkeypatch.setattr(module, name, getattr(module, name))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_the_random_init_path_applies_liger_and_logs_what_it_patched(tmp_path, caplog, arch):
    cfg = parse_config(
        ["--run.output-dir", str(tmp_path), "--model.tiny.arch", arch, "--model.tiny.num-layers", "2"]
    )
    # The config refuses Liger on CPU (its kernels need CUDA); patching itself does not.
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, use_liger=True))
    with caplog.at_level(logging.INFO):
        model = build_model(cfg, build_tokenizer(cfg), torch.device("cpu"))
    trunk = liger_counts(model.base)  # 2 layers' norms and MLPs, and the final norm
    assert trunk == {"RMSNorm": (5, 5), "MLP": (2, 2), "RoPE": (1, 1)}
    # The MTP layer copies a patched trunk layer; its own input/output norms stay PyTorch's: said so.
    counts = liger_counts(model)
    assert counts == {"RMSNorm": (7, 10), "MLP": (3, 3), "RoPE": (1, 1)}
    (line,) = [r.getMessage() for r in caplog.records if "Liger kernels in the model" in r.getMessage()]
    assert line.endswith("RMSNorm 7/10, MLP 3/3, RoPE 1/1")


def test_a_model_type_liger_does_not_know_is_refused_naming_it():
    config = GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    with pytest.raises(ConfigError, match=r"model.use_liger: .*'gpt2'.*nothing was patched"):
        apply_liger(GPT2LMHeadModel(config))


def test_without_liger_the_counts_say_nothing_is_patched():
    counts = liger_counts(tiny_base("qwen2"))
    assert counts["RMSNorm"] == (0, 5) and counts["MLP"] == (0, 2) and counts["RoPE"] == (0, 1)
