"""A single process computing in bf16 keeps fp32 master weights and AdamW state (as FSDP2 does):
at the paper's learning rate, 1e-6, a bf16 AdamW rounds most updates away and the run does not learn.
"""

from __future__ import annotations

import copy

import torch
from model_helpers import VOCAB, tiny_mtp_model
from safetensors import safe_open
from safetensors.torch import load_file
from test_train import fast_config, read_metrics

from occ_fast.checkpointing.files import find_latest
from occ_fast.checkpointing.single_process import MODEL_FILE, load_checkpoint, save_checkpoint
from occ_fast.config import OptimConfig
from occ_fast.model import build_head_rows, head_logprobs
from occ_fast.train import train
from occ_fast.training.master_weights import fp32_weights
from occ_fast.training.optim import build_optimizer

LR, STEPS = 1e-6, 10


def _loss(model, batch: torch.Tensor) -> torch.Tensor:
    out = model(batch)
    rows = build_head_rows(out, batch, torch.ones_like(batch))
    return -sum(h.logprob.mean() for h in head_logprobs(out, rows))


def _trained(optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _half_ulp(x: torch.Tensor) -> torch.Tensor:
    """Half the spacing of bf16 numbers around ``x`` (8 significant bits)."""
    return torch.ldexp(torch.ones_like(x), torch.frexp(x).exponent - 9)


def _stored_dtypes(path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        names = list(f.keys())
        return {f.get_slice(name).get_dtype() for name in names}


def _steps(model, optimizer, batch, on_step=None) -> None:
    for step in range(STEPS):
        _loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step(step)


def test_bf16_compute_at_lr_1e6_trains_fp32_masters_like_an_fp32_run():
    """10 AdamW steps at lr 1e-6: the bf16 run's fp32 master weights move as the fp32 run's do
    (the same weights, mean |update| within 5%, cosine > 0.98, < 2% of the weights more than 1e-6
    apart), and the bf16 copy the forward uses is the master rounded to nearest: an element moves
    exactly once its accumulated change passes half a bf16 ulp (1.8% of them here). In pure bf16
    (the old single-process path) 0.6% of the weights moved, by a mean 135x smaller than fp32's."""
    batch = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    bf16 = tiny_mtp_model().to(torch.bfloat16).train()
    fp32 = copy.deepcopy(bf16).float()  # the same starting values, exactly
    cfg = OptimConfig(lr=LR)
    opt16, opt32 = build_optimizer(bf16, cfg), build_optimizer(fp32, cfg)
    start = [p.detach().clone() for p in _trained(opt32)]
    copies = [p for p in bf16.parameters() if p.requires_grad]
    copies_start = [p.detach().clone() for p in copies]

    def check_copy(step: int) -> None:
        with fp32_weights(opt16):
            masters = [p.detach().clone() for p in bf16.parameters() if p.requires_grad]
        for p, p0, m in zip(copies, copies_start, masters, strict=True):
            assert p.dtype == torch.bfloat16 and m.dtype == torch.float32
            assert torch.equal(p, m.to(torch.bfloat16)), (
                f"step {step}: the bf16 copy is not the rounded master"
            )
            moved = p != p0
            passed = (m - p0.float()).abs() > _half_ulp(p0.float())
            # At a power of 2 the spacing below halves; 0 (a fresh bias) moves by any change.
            exact = (torch.frexp(p0.float()).mantissa.abs() != 0.5) & (p0 != 0)
            assert torch.equal(moved[exact], passed[exact]), f"step {step}: a copy moved before half an ulp"

    _steps(bf16, opt16, batch, check_copy)
    _steps(fp32, opt32, batch)
    with torch.no_grad():
        d16 = torch.cat([(m.float() - s).flatten() for m, s in zip(_trained(opt16), start, strict=True)])
        d32 = torch.cat([(m - s).flatten() for m, s in zip(_trained(opt32), start, strict=True)])
    moved16, moved32 = (d16 != 0).float().mean(), (d32 != 0).float().mean()
    assert moved16 > 0.99 * moved32, f"weights changed: bf16 run {moved16:.1%}, fp32 run {moved32:.1%}"
    ratio = d16.abs().mean() / d32.abs().mean()
    assert 0.95 < ratio < 1.05, f"mean |update| bf16/fp32 = {ratio:.3f}"
    # bf16 forward/backward flips the sign of a few tiny gradients (0.8% of the weights then differ
    # by more than a tenth of the fp32 run's 10-step update, lr x 10 = 1e-5); the rest agree to 1e-7.
    assert ((d16 - d32).abs() > 0.1 * STEPS * LR).float().mean() < 0.02
    assert torch.dot(d16, d32) / (d16.norm() * d32.norm()) > 0.98
    moved_copy = sum(int((p != p0).sum()) for p, p0 in zip(copies, copies_start))
    total = sum(p.numel() for p in copies)
    assert 0 < moved_copy < total  # small weights' copies moved, large ones' not yet


def test_checkpoints_hold_the_fp32_masters_and_resume_them(tmp_path):
    """The checkpoint's model file holds the fp32 masters (what FSDP2's checkpoints hold too); a
    resumed bf16 run gets them back bit for bit, with AdamW's state, and its bf16 copy is their rounding."""
    batch = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4))
    model = tiny_mtp_model().to(torch.bfloat16).train()
    optimizer = build_optimizer(model, OptimConfig(lr=LR))
    _steps(model, optimizer, batch)
    with fp32_weights(optimizer):
        path = save_checkpoint(tmp_path, 9, model, optimizer)
        saved = {k: v.clone() for k, v in model.state_dict().items()}
    assert _stored_dtypes(path / MODEL_FILE) == {"F32"}

    fresh = tiny_mtp_model(seed=5).to(torch.bfloat16).train()
    fresh_optimizer = build_optimizer(fresh, OptimConfig(lr=LR))
    with fp32_weights(fresh_optimizer):
        load_checkpoint(path, fresh, fresh_optimizer, restore_rng=False)
        for key, value in fresh.state_dict().items():
            assert torch.equal(value, saved[key]), key
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert p.dtype == torch.bfloat16 and torch.equal(p, q)
    for a, b in zip(optimizer.state.values(), fresh_optimizer.state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq"))


def test_fp32_models_get_a_plain_adamw():
    """An fp32 model (CPU runs, FSDP2's sharded fp32 masters) is its own master: no second copy."""
    model = tiny_mtp_model()
    optimizer = build_optimizer(model, OptimConfig())
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in _trained(optimizer)} == trainable


def test_a_bf16_run_resumes_exactly_from_its_fp32_masters(tmp_path):
    """End to end (``train``): 2 steps in one go equal 1 step + resume + 1 step, in bf16 with fp32
    masters; checkpoints and the exported model hold the masters (fp32)."""
    common = ["--model.dtype", "bf16", "--run.save-every", "1", "--optim.lr", "1e-6", "--eval.every", "0"]
    whole = fast_config(tmp_path, *common, "--train.steps", "2", name="whole")
    train(whole)
    train(fast_config(tmp_path, *common, "--train.steps", "1", name="split"))
    split = fast_config(tmp_path, *common, "--train.steps", "2", "--run.resume", "auto", name="split")
    train(split)

    def comparable(run_dir):
        return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in read_metrics(run_dir)]

    assert comparable(whole.run_dir) == comparable(split.run_dir)
    for weights in (find_latest(whole.run_dir), whole.run_dir / "model"):
        assert _stored_dtypes(sorted(weights.glob("*.safetensors"))[0]) == {"F32"}
    whole_w = load_file(find_latest(whole.run_dir) / MODEL_FILE)
    split_w = load_file(find_latest(split.run_dir) / MODEL_FILE)
    assert all(torch.equal(whole_w[k], split_w[k]) for k in whole_w)


def test_fp16_compute_gets_fp32_masters_too():
    """fp16's ulp is smaller than bf16's but still rounds lr 1e-6 away from most weights: one AdamW
    step moves every fp32 master by lr (Adam's first step is lr x sign(g), weight decay aside) while
    the fp16 copy is that master rounded, so weights above ~0.002 in size do not move yet."""
    batch = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    model = tiny_mtp_model().to(torch.float16).train()
    optimizer = build_optimizer(model, OptimConfig(lr=LR, weight_decay=0.0))
    assert all(p.dtype == torch.float32 for p in _trained(optimizer))
    copies = [p for p in model.parameters() if p.requires_grad]
    with fp32_weights(optimizer):  # the masters, in the model's order
        masters = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in masters]
    _loss(model, batch).backward()
    grads = [p.grad.clone() for p in masters]
    optimizer.step()
    for m, m0, g, copy16 in zip(masters, start, grads, copies, strict=True):
        big = g.abs() > 1e-5  # Adam's eps (1e-8) shrinks the step of a near-zero gradient
        want = (m0.double() - LR * g.sign()).float()
        ulp = (torch.nextafter(m0, torch.full_like(m0, float("inf"))) - m0).abs()
        assert ((m - want).abs() <= ulp + 2e-9)[big].all(), "a master did not step by lr"
        assert copy16.dtype == torch.float16 and torch.equal(copy16, m.to(torch.float16))


def test_micro_batch_gradients_add_up_in_fp32_on_the_masters():
    """Two backward passes before a step (two micro-batches): each master's gradient is the fp32 sum
    of the two 16-bit gradients, each counted once, as one fp32 accumulation would give."""
    gen = torch.Generator().manual_seed(5)
    halves = [torch.randint(0, VOCAB, (1, 12), generator=gen) for _ in range(2)]
    model = tiny_mtp_model().to(torch.bfloat16).train()
    reference = copy.deepcopy(model)  # no masters: its .grad is each micro-batch's bf16 gradient
    want = []
    for batch in halves:
        reference.zero_grad(set_to_none=True)
        (_loss(reference, batch) / 2).backward()
        want.append([p.grad.float() for p in reference.parameters() if p.requires_grad])
    optimizer = build_optimizer(model, OptimConfig(lr=LR))
    for batch in halves:
        (_loss(model, batch) / 2).backward()
    copies = [p for p in model.parameters() if p.requires_grad]
    with fp32_weights(optimizer):  # the masters, in the model's order
        masters = [p for p in model.parameters() if p.requires_grad]
    for master, copy16, g1, g2 in zip(masters, copies, *want, strict=True):
        assert copy16.grad is None  # freed once added to the master
        assert torch.allclose(master.grad, g1 + g2, rtol=1e-6, atol=1e-12)
