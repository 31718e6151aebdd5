"""The SFT warm start of a bf16 model keeps fp32 master weights, as the RL update does: in pure bf16
an update below half an ulp of a weight is rounded away every step, and the warm start learns little."""

import copy

import torch
from test_warm_start_schedule import TOKEN_BUDGET, _setup

from occ_fast.config import OptimConfig
from occ_fast.policy.batching import make_micro_batches
from occ_fast.policy.forward import policy_logprobs
from occ_fast.training.optim import build_optimizer
from occ_fast.training.warm_start import supervised_samples, warm_start

LR, STEPS = 3e-5, 12


def _sft(model, tokenizer, records) -> None:
    warm_start(
        model,
        tokenizer,
        records,
        steps=STEPS,
        lr=LR,
        batch_size=len(records),
        seed=0,
        token_budget=TOKEN_BUDGET,
    )


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in model.parameters()])


def test_a_bf16_warm_start_moves_its_weights_as_an_fp32_one_does():
    """12 steps at lr 3e-5: many single updates are below half a bf16 ulp of the weight they update,
    their sum is not. With fp32 masters the bf16 model ends as the fp32 run's weights rounded (as
    many weights moved, within 5%, and the changes' cosine above 0.97); in pure bf16 (the old warm
    start) 31% of the weights moved against the fp32 run's 91%, cosine 0.58."""
    model, tokenizer, records = _setup()
    bf16 = model.to(torch.bfloat16)
    fp32 = copy.deepcopy(bf16).float()  # the same starting values, exactly
    start = _flat(fp32)
    _sft(bf16, tokenizer, records)
    _sft(fp32, tokenizer, records)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    d16, d32 = _flat(bf16) - start, _flat(fp32).bfloat16().float() - start
    moved16, moved32 = (d16 != 0).float().mean(), (d32 != 0).float().mean()
    assert moved16 > 0.95 * moved32, f"weights moved: bf16 {moved16:.1%}, fp32 rounded {moved32:.1%}"
    assert torch.dot(d16, d32) / (d16.norm() * d32.norm()) > 0.97


def test_the_rl_optimizer_takes_over_a_bf16_model_after_its_warm_start():
    """The warm start's masters let go of the model (their gradient hooks removed), so the RL
    optimizer's own masters receive every gradient: one RL step moves its masters."""
    model, tokenizer, records = _setup()
    model = model.to(torch.bfloat16)
    _sft(model, tokenizer, records)
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters())
    optimizer = build_optimizer(model, OptimConfig(lr=LR))
    masters = [p for group in optimizer.param_groups for p in group["params"]]
    before = [m.detach().clone() for m in masters]
    (micro,) = make_micro_batches(
        supervised_samples(tokenizer, records), token_budget=TOKEN_BUDGET, pad_id=tokenizer.pad_token_id
    )
    policy_logprobs(model, micro, temperature=1.0).heads[0].logprob.sum().backward()
    assert all(m.grad is not None for m in masters)
    optimizer.step()
    assert any(not torch.equal(m, b) for m, b in zip(masters, before, strict=True))
