"""AdamW parameter groups and the warm-up + constant/cosine schedule, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from occ_fast.config import OptimConfig
from occ_fast.training.optim import build_optimizer, build_scheduler, decay_split, lr_factor


def _tiny_qwen2(tied: bool) -> nn.Module:
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tied,
    )
    return Qwen2ForCausalLM(config)


def test_decay_split_on_a_qwen2_model():
    decay, no_decay = decay_split(_tiny_qwen2(tied=False))
    layer = "model.layers.0"
    assert set(decay) == {
        *(f"{layer}.self_attn.{p}_proj.weight" for p in "qkvo"),
        *(f"{layer}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")),
        "lm_head.weight",  # untied: a matrix like any other
    }
    assert set(no_decay) == {
        "model.embed_tokens.weight",
        *(f"{layer}.self_attn.{p}_proj.bias" for p in "qkv"),
        f"{layer}.input_layernorm.weight",
        f"{layer}.post_attention_layernorm.weight",
        "model.norm.weight",
    }


def test_tied_head_counts_once_as_an_embedding_and_frozen_params_are_left_out():
    model = _tiny_qwen2(tied=True)
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    decay, no_decay = decay_split(model)
    assert "lm_head.weight" not in decay and "model.embed_tokens.weight" in no_decay
    assert "model.layers.0.mlp.up_proj.weight" not in {**decay, **no_decay}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in (*decay.values(), *no_decay.values())} == trainable


def test_optimizer_groups_carry_the_config():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    cfg = OptimConfig(lr=3e-4, weight_decay=0.05, betas=(0.8, 0.95), eps=1e-6)
    opt = build_optimizer(model, cfg)
    decayed, plain = opt.param_groups
    assert decayed["params"] == [model[1].weight] and decayed["weight_decay"] == 0.05
    assert {id(p) for p in plain["params"]} == {
        id(model[0].weight),
        id(model[1].bias),
        id(model[2].weight),
        id(model[2].bias),
    }
    assert plain["weight_decay"] == 0.0
    assert all(g["lr"] == 3e-4 and g["betas"] == (0.8, 0.95) and g["eps"] == 1e-6 for g in opt.param_groups)


def test_optimizer_needs_trainable_parameters():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, OptimConfig())


def _factor(step: int, schedule: str, warmup: int = 4, total: int = 10, min_ratio: float = 0.1) -> float:
    return lr_factor(step, warmup_steps=warmup, total_steps=total, schedule=schedule, min_lr_ratio=min_ratio)


def test_warmup_then_constant():
    assert [_factor(s, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert _factor(100, "constant") == 1.0
    assert _factor(0, "constant", warmup=0) == 1.0  # no warm-up: the first update runs at the peak


def test_warmup_then_cosine_to_the_floor():
    # warm-up 4 of 10 steps, floor 0.1: the cosine spans steps 4 .. 10.
    assert _factor(3, "cosine") == 1.0
    assert _factor(4, "cosine") == pytest.approx(1.0)
    assert _factor(7, "cosine") == pytest.approx(0.1 + 0.9 * 0.5)  # half way
    assert _factor(5, "cosine") == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 6)))
    assert _factor(10, "cosine") == pytest.approx(0.1)
    assert _factor(25, "cosine") == pytest.approx(0.1)  # stays at the floor past the end


def test_scheduler_drives_the_optimizer_and_resumes_from_state_dict():
    cfg = OptimConfig(lr=1e-3, warmup_steps=2, schedule="cosine", min_lr_ratio=0.0)

    def make() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        opt = build_optimizer(nn.Linear(3, 3), cfg)
        return opt, build_scheduler(opt, cfg, total_steps=6)

    opt, sched = make()
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3 * 0.5 * (1 + math.cos(math.pi / 4))])

    opt2, sched2 = make()
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)  # step 4: half way down the cosine
    sched2.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_scheduler_rejects_bad_arguments():
    opt = build_optimizer(nn.Linear(2, 2), OptimConfig())
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        build_scheduler(opt, OptimConfig(), total_steps=0)
    with pytest.raises(ValueError, match="optim.schedule"):
        build_scheduler(opt, OptimConfig(schedule="linear"), total_steps=5)  # type: ignore[arg-type]
