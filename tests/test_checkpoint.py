"""Checkpoint round trips, bit-exact continuation, and crashes mid-save."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from occ_fast.checkpointing.files import CheckpointError, checkpoint_dir, find_latest
from occ_fast.checkpointing.single_process import load_checkpoint, save_checkpoint

VOCAB = 64


def tiny_model(seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=VOCAB,
        tie_word_embeddings=True,  # shared tensors must survive safetensors
        attention_dropout=0.1,  # training consumes torch RNG inside the model too
    )
    return Qwen2ForCausalLM(config).train()


def make_training(seed: int):
    model = tiny_model(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 4))
    return model, optimizer, scheduler


def train_steps(model, optimizer, scheduler, steps: int) -> None:
    """Each step draws data from python, numpy and torch RNGs, so all three must be restored."""
    for _ in range(steps):
        length = random.randint(4, 9)
        offset = int(np.random.randint(0, 8))
        ids = (torch.randint(0, VOCAB - 8, (2, length)) + offset) % VOCAB
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_resumed_training_is_bit_exact(tmp_path):
    seed_all(0)
    model, optimizer, scheduler = make_training(seed=0)
    train_steps(model, optimizer, scheduler, 3)
    saved = save_checkpoint(
        tmp_path, 3, model, optimizer, scheduler, extra={"sampler": {"epoch": 1, "index": 17}, "lam": 0.25}
    )
    train_steps(model, optimizer, scheduler, 3)
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    seed_all(999)  # scramble every RNG, and start from different weights
    resumed, resumed_opt, resumed_sched = make_training(seed=1)
    assert find_latest(tmp_path) == saved
    state = load_checkpoint(saved, resumed, resumed_opt, resumed_sched)
    assert state.step == 3 and state.extra == {"sampler": {"epoch": 1, "index": 17}, "lam": 0.25}
    assert resumed.lm_head.weight.data_ptr() == resumed.model.embed_tokens.weight.data_ptr()
    train_steps(resumed, resumed_opt, resumed_sched, 3)
    for name, tensor in resumed.state_dict().items():
        assert torch.equal(tensor, uninterrupted[name]), name
    assert resumed_sched.get_last_lr() == scheduler.get_last_lr()


class CrashingScheduler:
    """A real object whose state cannot be serialised: the save fails after the model file is written."""

    def state_dict(self):
        raise RuntimeError("disk full")


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path):
    model, optimizer, scheduler = make_training(seed=0)
    good = save_checkpoint(tmp_path, 5, model, optimizer, scheduler)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, optimizer, scheduler, 1)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path, 6, model, optimizer, CrashingScheduler())
    assert find_latest(tmp_path) == good
    assert [p.name for p in good.parent.iterdir()] == [good.name]  # nothing half-written left behind

    fresh, fresh_opt, fresh_sched = make_training(seed=2)
    assert load_checkpoint(good, fresh, fresh_opt, fresh_sched).step == 5
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_killed_save_leftovers_are_invisible_and_cleaned(tmp_path):
    model = tiny_model(0)
    good = save_checkpoint(tmp_path, 1, model)
    leftover = good.parent / ".tmp-step_000000002"  # what a SIGKILL mid-save leaves
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    assert find_latest(tmp_path) == good
    save_checkpoint(tmp_path, 2, model)
    assert not leftover.exists()
    assert find_latest(tmp_path) == checkpoint_dir(tmp_path, 2)

    # Killed while re-saving step 2, after moving the old copy aside: the old copy comes back.
    checkpoint_dir(tmp_path, 2).rename(good.parent / ".trash-step_000000002")
    save_checkpoint(tmp_path, 3, model, keep_last=None)
    assert sorted(p.name for p in good.parent.iterdir()) == [
        "step_000000001",
        "step_000000002",
        "step_000000003",
    ]


def test_keep_last_prunes_oldest_and_resave_replaces(tmp_path):
    model = tiny_model(0)
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model, keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_000000003",
        "step_000000004",
    ]
    save_checkpoint(tmp_path, 4, model, extra={"again": True}, keep_last=2)
    assert load_checkpoint(find_latest(tmp_path), model).extra == {"again": True}
    assert find_latest(tmp_path / "elsewhere") is None


def test_missing_and_corrupt_checkpoints_name_the_path(tmp_path):
    model = tiny_model(0)
    with pytest.raises(CheckpointError, match="not found: .*nowhere"):
        load_checkpoint(tmp_path / "nowhere", model)

    path = save_checkpoint(tmp_path, 7, model)
    (path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"cannot load model weights from .*step_000000007"):
        load_checkpoint(path, model)

    path = save_checkpoint(tmp_path, 8, model)
    with pytest.raises(CheckpointError, match="has no optimizer.pt"):
        load_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1))
    (path / "rng.pt").unlink()
    with pytest.raises(CheckpointError, match="incomplete: rng.pt is missing"):
        load_checkpoint(path, model)
    (path / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="step_000000008 is not a complete checkpoint"):
        load_checkpoint(path, model)

    with pytest.raises(TypeError, match=r"extra\['sampler'\] is a Generator"):
        save_checkpoint(tmp_path, 9, model, extra={"sampler": torch.Generator()})
