"""The SFT warm start's learning-rate schedule and AdamW betas (train.sft_warmup_steps, train.sft_schedule,
train.sft_betas), against a hand-written loop with hand-computed learning rates."""

import random

import pytest
import torch

from occ_fast.config import ConfigError, parse_config
from occ_fast.policy.batching import make_micro_batches
from occ_fast.policy.forward import policy_logprobs
from occ_fast.training.build import build_model, build_tokenizer, synthetic_records
from occ_fast.training.warm_start import supervised_samples, warm_start

LR = 2e-3
TOKEN_BUDGET = 512


def _setup():
    cfg = parse_config(
        ["--preset", "addition", "--model.tiny.hidden-size", "32", "--model.tiny.num-layers", "1"]
    )
    tokenizer = build_tokenizer(cfg)
    records = synthetic_records(cfg, "train", 4, "records")
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer, torch.device("cpu"))
    return model, tokenizer, records


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _by_hand(model, tokenizer, records, lrs, betas):
    """AdamW steps on every record (the batch is all of them, in the seeded order the warm start draws),
    the learning rate set by hand each step."""
    samples = supervised_samples(tokenizer, records)
    num_tokens = sum(len(s.response_ids) for s in samples)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=betas, weight_decay=0.0)
    rng = random.Random(0)
    for lr in lrs:
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        batch = rng.sample(samples, len(samples))
        for micro in make_micro_batches(batch, token_budget=TOKEN_BUDGET, pad_id=tokenizer.pad_token_id):
            out = policy_logprobs(model, micro, temperature=1.0)
            sum(-h.logprob.sum() / num_tokens for h in out.heads).backward()
        optimizer.step()


@pytest.mark.parametrize(
    ("warmup", "schedule", "betas", "factors"),
    [
        (0, "constant", (0.9, 0.999), [1.0, 1.0, 1.0]),
        (2, "constant", (0.9, 0.98), [0.5, 1.0, 1.0]),  # linear warm-up: (step + 1) / warmup
        (0, "cosine", (0.9, 0.98), [1.0, 0.75, 0.25]),  # (1 + cos(pi * step / 3)) / 2, to 0 at step 3
        (1, "cosine", (0.8, 0.95), [1.0, 1.0, 0.5]),  # cosine over the 2 steps after warm-up
    ],
)
def test_warm_start_follows_the_hand_computed_schedule(warmup, schedule, betas, factors):
    model, tokenizer, records = _setup()
    reference = _setup()[0]
    warm_start(
        model,
        tokenizer,
        records,
        steps=3,
        lr=LR,
        batch_size=len(records),
        seed=0,
        token_budget=TOKEN_BUDGET,
        warmup_steps=warmup,
        schedule=schedule,
        betas=betas,
    )
    _by_hand(reference, tokenizer, records, [LR * f for f in factors], betas)
    got, want = _params(model), _params(reference)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


def test_first_update_moves_each_weight_by_the_warmed_up_learning_rate():
    """Adam's first update is lr * g / (|g| + eps): the largest weight change is the step's learning rate."""
    model, tokenizer, records = _setup()
    before = _params(model)
    warm_start(
        model,
        tokenizer,
        records,
        steps=1,
        lr=LR,
        batch_size=4,
        seed=0,
        token_budget=TOKEN_BUDGET,
        warmup_steps=8,
    )
    moved = max((p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters())
    assert moved == pytest.approx(LR / 8, rel=1e-3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--train.sft-warmup-steps", "-1"], "train.sft_warmup_steps: expected a value >= 0, got -1"),
        (["--train.sft-betas", "0.9", "1.0"], "train.sft_betas[1]: expected a value < 1.0, got 1.0"),
    ],
)
def test_bad_sft_schedule_values_name_the_field(argv, message):
    with pytest.raises(ConfigError) as e:
        parse_config(argv)
    assert f"command line: {message}" in str(e.value)


def test_sft_schedule_defaults_keep_the_constant_rate_and_the_addition_preset_decays():
    cfg = parse_config([])
    assert (cfg.train.sft_warmup_steps, cfg.train.sft_schedule, cfg.train.sft_betas) == (
        0,
        "constant",
        (0.9, 0.999),
    )
    cfg = parse_config(["--preset", "addition"])
    assert cfg.train.sft_schedule == "cosine" and cfg.train.sft_warmup_steps > 0
