"""Packed and padded micro-batches give the same per-token log-probs, losses and gradients, and
carry every sample's own per-token fields (advantage, rollout log-probs) to its scored tokens."""

from __future__ import annotations

import pytest
import torch
from model_helpers import small_qwen2_mtp

from occ_fast.algorithm import LossConfig, compute_loss
from occ_fast.model import MTPModel
from occ_fast.policy.batching import Sample, make_micro_batches
from occ_fast.policy.forward import policy_logprobs

VOCAB = 61


def tiny_model(seed: int = 0) -> MTPModel:
    return small_qwen2_mtp(vocab=VOCAB, num_mtp=2, seed=seed)


def random_samples(n: int, seed: int = 0) -> list[Sample]:
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        prompt = torch.randint(3, VOCAB, (int(torch.randint(1, 7, (1,), generator=gen)),), generator=gen)
        response = torch.randint(3, VOCAB, (int(torch.randint(1, 9, (1,), generator=gen)),), generator=gen)
        samples.append(
            Sample(
                prompt.tolist(),
                response.tolist(),
                -torch.rand(len(response), generator=gen),
                float(i % 3 - 1),
            )
        )
    samples[0] = Sample([5], [2], torch.tensor([-0.1]), 1.0)  # a one-token prompt, an EOS-only response
    return samples


def per_sample_logprobs(model, samples, micros):
    """Log-probs of every head keyed by (prompt, response) so layouts can be compared."""
    out = {}
    for micro in micros:
        heads = policy_logprobs(model, micro, temperature=0.9)
        flat_ids = micro.input_ids.reshape(-1)
        order = heads.rows.token_index
        values = torch.stack([h.logprob for h in heads.heads], 1)
        masks = torch.stack([heads.rows.valid(k) for k in range(len(heads.heads))], 1)
        for s in samples:
            key = (tuple(s.prompt_ids), tuple(s.response_ids))
            if key in out:
                continue
            # find this sample's scored tokens: contiguous response tokens following its prompt
            ids = s.prompt_ids + s.response_ids
            for start in range(flat_ids.numel() - len(ids) + 1):
                if flat_ids[start : start + len(ids)].tolist() == ids:
                    positions = torch.arange(start + len(s.prompt_ids), start + len(ids))
                    picked = torch.nonzero(order[:, None] == positions[None, :])[:, 0]
                    if picked.numel() == len(s.response_ids):
                        out[key] = (values[picked].detach(), masks[picked])
                        break
    return out


def test_packed_and_padded_layouts_agree():
    model = tiny_model()
    samples = random_samples(9)
    packed = make_micro_batches(samples, token_budget=40)
    padded = make_micro_batches(samples, token_budget=40, batch_size=4)
    assert len(packed) > 1 and all(m.input_ids.shape[0] == 1 for m in packed)
    assert all(m.input_ids.shape[1] <= 40 for m in packed)
    a = per_sample_logprobs(model, samples, packed)
    b = per_sample_logprobs(model, samples, padded)
    assert len(a) == len(b) == len(samples)
    for key in a:
        torch.testing.assert_close(a[key][0], b[key][0], rtol=1e-5, atol=1e-5)
        assert torch.equal(a[key][1], b[key][1])
    eos_only = a[((5,), (2,))]
    assert eos_only[1].tolist() == [[True, False, False]]  # a token right after a 1-token prompt: no MTP row


@pytest.mark.parametrize("batch_size", [None, 3], ids=["packed", "padded"])
def test_per_token_fields_reach_their_own_tokens(batch_size):
    """Gathered at the scored tokens through the model's ``token_index`` (what the trainer does),
    each sample's advantage and rollout log-probs come back in order, token for token. Every sample
    has its own advantage and distinct log-probs, so a field shifted by one token shows at the
    boundary between two samples."""
    model = tiny_model()
    samples = random_samples(9, seed=7)
    samples = [
        Sample(s.prompt_ids, s.response_ids, s.rollout_logprobs - i, float(i) + 0.5)
        for i, s in enumerate(samples)
    ]
    found = 0
    for micro in make_micro_batches(samples, token_budget=40, batch_size=batch_size):
        heads = policy_logprobs(model, micro, temperature=1.0)
        advantages = heads.gather(micro.advantages)
        rollout = heads.gather(micro.rollout_logprobs)
        flat_ids = micro.input_ids.reshape(-1)
        order = heads.rows.token_index
        width = micro.input_ids.shape[1]
        for s in samples:
            ids = torch.tensor(s.prompt_ids + s.response_ids)
            for start in range(flat_ids.numel() - len(ids) + 1):
                if start % width + len(ids) > width or not torch.equal(
                    flat_ids[start : start + len(ids)], ids
                ):
                    continue
                positions = torch.arange(start + len(s.prompt_ids), start + len(ids))
                picked = torch.nonzero(order[:, None] == positions[None, :])[:, 0]
                assert picked.numel() == len(s.response_ids)
                assert advantages[picked].tolist() == [s.advantage] * len(s.response_ids)
                assert torch.equal(rollout[picked], s.rollout_logprobs)
                found += 1
                break
    assert found == len(samples)


def total_loss_and_grads(model, samples, micros):
    """The mini-batch loss under the fixed-coefficient regime (OCC's coefficient is computed per
    micro-batch, as in the reference code, so it depends on how tokens are grouped)."""
    model.zero_grad(set_to_none=True)
    cfg = LossConfig(mtp_regime="policy", mtp_coef=0.5)
    num_tokens = float(sum(len(s.response_ids) for s in samples))
    mtp_tokens = [float(sum(s.mtp_rows(k) for s in samples)) for k in (1, 2)]
    total = 0.0
    for micro in micros:
        heads = policy_logprobs(model, micro, temperature=1.0)
        lp = heads.heads[0].logprob
        lp_old = (lp.detach() - 0.05 * heads.gather(micro.advantages)).detach()
        loss, _ = compute_loss(
            cfg,
            lp_old,
            lp,
            heads.gather(micro.advantages),
            torch.ones_like(lp),
            lp_mtp=[h.logprob for h in heads.heads[1:]],
            mtp_masks=[heads.mtp_mask(k) for k in (1, 2)],
            num_tokens=num_tokens,
            mtp_num_tokens=mtp_tokens,
        )
        loss.backward()
        total += float(loss.detach())
    return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_and_padded_losses_and_gradients_agree():
    model = tiny_model(1)
    samples = random_samples(7, seed=3)
    loss_packed, grads_packed = total_loss_and_grads(
        model, samples, make_micro_batches(samples, token_budget=30)
    )
    loss_padded, grads_padded = total_loss_and_grads(
        model, samples, make_micro_batches(samples, token_budget=30, batch_size=3)
    )
    assert loss_packed == pytest.approx(loss_padded, rel=1e-5, abs=1e-6)
    assert grads_packed.keys() == grads_padded.keys()
    for name in grads_packed:
        torch.testing.assert_close(grads_packed[name], grads_padded[name], rtol=1e-4, atol=1e-6, msg=name)


def test_mtp_rows_count_matches_the_model():
    model = tiny_model()
    samples = random_samples(6, seed=5)
    for micro in make_micro_batches(samples, token_budget=1000):
        heads = policy_logprobs(model, micro, temperature=1.0)
        for k in (1, 2):
            assert int(heads.mtp_mask(k).sum()) == sum(s.mtp_rows(k) for s in samples)


def test_a_micro_batch_fills_its_token_budget_exactly_and_one_token_more_starts_another():
    """``optim.micro_batch_tokens`` is the most tokens a packed micro-batch holds: sequences fill it
    exactly, and a sequence that would make it budget + 1 goes to another (first-fit decreasing)."""

    def widths(lengths: list[int], budget: int) -> list[int]:
        samples = [Sample([7, 8], [9] * (n - 2), torch.zeros(n - 2), 1.0) for n in lengths]
        micros = make_micro_batches(samples, token_budget=budget)
        assert sum(m.num_samples for m in micros) == len(lengths)
        return [m.input_ids.shape[1] for m in micros]

    assert widths([5, 3], 8) == [8]
    assert widths([5, 4], 8) == [5, 4]
    assert widths([5, 4], 9) == [9]
    assert widths([3, 5, 4, 4], 8) == [8, 8]  # 5 + 3 and 4 + 4
    assert widths([3, 5, 4, 4], 7) == [5, 7, 4]  # 5, 4 + 3, 4


def test_long_sequence_gets_its_own_row_and_bad_arguments_fail():
    samples = random_samples(4)
    micros = make_micro_batches(samples, token_budget=3)
    assert sum(m.num_samples for m in micros) == 4
    with pytest.raises(ValueError, match="no samples"):
        make_micro_batches([], token_budget=10)
    with pytest.raises(ValueError, match="token_budget"):
        make_micro_batches(samples, token_budget=0)
    with pytest.raises(ValueError, match="batch_size"):
        make_micro_batches(samples, token_budget=10, batch_size=0)
