"""The transformers rollout engine against full forwards of the same tiny model."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from occ_fast.rollout import RolloutEngine, RolloutResult, SamplingParams, TransformersEngine

VOCAB = 97
PROMPTS = [[5, 17, 3, 40, 8, 9, 11], [22, 4], [60, 61, 62, 63], [7]]


def tiny_model(seed: int = 0, layers: int = 2) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        initializer_range=0.3,  # peaked distributions, so top-k/top-p actually truncate
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model() -> Qwen2ForCausalLM:
    return tiny_model()


def full_forward_logits(model: Qwen2ForCausalLM, result: RolloutResult) -> torch.Tensor:
    """fp32 logits that predicted each completion token, from one unpadded, uncached forward."""
    ids = torch.tensor([result.prompt_token_ids + result.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    start = len(result.prompt_token_ids) - 1
    return logits[start : start + len(result.token_ids)]


def gathered(logprobs: torch.Tensor, result: RolloutResult) -> torch.Tensor:
    return logprobs.gather(-1, torch.tensor(result.token_ids)[:, None]).squeeze(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_logprobs_match_full_forward(model, temperature):
    params = SamplingParams(max_new_tokens=12, temperature=temperature, n=3, seed=1)
    results = TransformersEngine(model).generate(PROMPTS, params)
    assert len(results) == len(PROMPTS) * 3
    assert [(r.prompt_index, r.sample_index) for r in results] == [(p, s) for p in range(4) for s in range(3)]
    for r in results:
        assert r.logprobs.dtype == torch.float32 and len(r.logprobs) == len(r.token_ids) == 12
        assert r.finish_reason == "length"
        expected = gathered((full_forward_logits(model, r) / temperature).log_softmax(-1), r)
        torch.testing.assert_close(r.logprobs, expected, atol=2e-5, rtol=0)


def test_top_k_logprobs_are_renormalised_over_the_kept_tokens(model):
    params = SamplingParams(max_new_tokens=10, temperature=0.8, top_k=5, n=2, seed=2)
    for r in TransformersEngine(model).generate(PROMPTS, params):
        scaled = full_forward_logits(model, r) / 0.8
        top = scaled.topk(5, dim=-1)
        assert all(t in row for t, row in zip(r.token_ids, top.indices.tolist()))
        kept_lse = top.values.logsumexp(-1)
        expected = gathered(scaled, r) - kept_lse
        torch.testing.assert_close(r.logprobs, expected, atol=2e-5, rtol=0)
        assert (r.logprobs >= gathered(scaled.log_softmax(-1), r) - 1e-6).all()


def test_top_p_keeps_the_smallest_prefix_reaching_p(model):
    top_p = 0.6
    params = SamplingParams(max_new_tokens=10, top_p=top_p, n=2, seed=3)
    for r in TransformersEngine(model).generate(PROMPTS, params):
        probs = full_forward_logits(model, r).double().softmax(-1)
        for step, token in enumerate(r.token_ids):
            sorted_probs, order = probs[step].sort(descending=True)
            kept = int((sorted_probs.cumsum(0) - sorted_probs < top_p).sum())
            kept_ids = order[:kept].tolist()
            assert token in kept_ids
            expected = torch.log(probs[step, token] / sorted_probs[:kept].sum()).float()
            torch.testing.assert_close(r.logprobs[step], expected, atol=2e-5, rtol=0)


def test_top_k_1_and_temperature_0_equal_greedy(model):
    engine = TransformersEngine(model)
    top1 = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, top_k=1, seed=4))
    zero_t = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0.0, seed=5))
    for r1, r0, prompt in zip(top1, zero_t, PROMPTS):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(8):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        assert r1.token_ids == r0.token_ids == ids[len(prompt) :]
        assert torch.equal(r1.logprobs, torch.zeros(8))


def test_eos_stops_generation_and_is_kept_in_the_completion(model):
    engine = TransformersEngine(model)
    free = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=16, seed=6))[0]
    eos = free.token_ids[4]
    first = free.token_ids.index(eos)
    stopped = engine.generate([PROMPTS[0]], SamplingParams(max_new_tokens=16, seed=6, eos_token_ids=(eos,)))[
        0
    ]
    assert stopped.finish_reason == "eos"
    assert stopped.token_ids == free.token_ids[: first + 1]
    assert stopped.content_ids == free.token_ids[:first]
    torch.testing.assert_close(stopped.logprobs, free.logprobs[: first + 1], atol=1e-6, rtol=0)


def test_eos_as_first_token_gives_empty_content(model):
    engine = TransformersEngine(model)
    greedy_first = engine.generate([PROMPTS[1]], SamplingParams(max_new_tokens=4, temperature=0))[
        0
    ].token_ids[0]
    params = SamplingParams(max_new_tokens=4, temperature=0, n=2, eos_token_ids=(greedy_first, 96))
    for r in engine.generate([PROMPTS[1]], params):
        assert r.finish_reason == "eos"
        assert r.token_ids == [greedy_first] and r.content_ids == []
        assert r.logprobs.shape == (1,)


def test_seed_reproduces_and_global_torch_seed_controls_unseeded_runs(model):
    engine = TransformersEngine(model)
    params = SamplingParams(max_new_tokens=10, n=2, seed=7)
    a, b = engine.generate(PROMPTS, params), engine.generate(PROMPTS, params)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    other = engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, n=2, seed=8))
    assert [r.token_ids for r in a] != [r.token_ids for r in other]

    unseeded = SamplingParams(max_new_tokens=10, n=2)
    torch.manual_seed(123)
    c = engine.generate(PROMPTS, unseeded)
    torch.manual_seed(123)
    d = engine.generate(PROMPTS, unseeded)
    assert [r.token_ids for r in c] == [r.token_ids for r in d]


def test_left_padded_batch_equals_one_at_a_time(model):
    params = SamplingParams(max_new_tokens=10, temperature=0.9, n=2, seed=9)
    calls = []
    batched = TransformersEngine(model, max_batch_size=64).generate(PROMPTS, params)
    single = TransformersEngine(model, max_batch_size=1).generate(
        PROMPTS, params, progress=lambda done, total: calls.append((done, total))
    )
    assert calls == [(i, 8) for i in range(1, 9)]
    for rb, rs in zip(batched, single):
        assert rb.token_ids == rs.token_ids
        torch.testing.assert_close(rb.logprobs, rs.logprobs, atol=2e-5, rtol=0)


def test_sync_weights_copies_trainer_weights_and_restores_train_mode(model):
    trainer_model = tiny_model(seed=1).train()
    engine = TransformersEngine(copy.deepcopy(model))
    assert isinstance(engine, RolloutEngine)
    params = SamplingParams(max_new_tokens=6, n=2, seed=10)
    engine.sync_weights(trainer_model)
    colocated = TransformersEngine(trainer_model).generate(PROMPTS, params)
    assert trainer_model.training
    synced = engine.generate(PROMPTS, params)
    assert [r.token_ids for r in synced] == [r.token_ids for r in colocated]


def test_bad_inputs_are_named(model):
    engine = TransformersEngine(model)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[1, 2], []], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match=r"prompt 0 has token ids outside \[0, 97\): \[97\]"):
        engine.generate([[1, 97]], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(max_new_tokens=2, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(KeyError, match="lacks"):
        TransformersEngine(model).sync_weights(tiny_model(layers=1))


def test_finished_rows_leave_the_batch_without_changing_any_result(model, monkeypatch):
    """Rows that hit EOS are dropped from the KV cache mid-batch; every completion, log-prob and
    finish reason stays what it is when each prompt runs alone."""
    free = TransformersEngine(model).generate(PROMPTS, SamplingParams(max_new_tokens=24, n=4, seed=3))
    eos = tuple({r.token_ids[2] for r in free[::2]})  # half the rows (at least) stop by their 3rd token
    params = SamplingParams(max_new_tokens=24, n=4, seed=3, eos_token_ids=eos)
    selections = []
    cache_cls = type(model(torch.tensor([[1, 2]]), use_cache=True).past_key_values)
    original = cache_cls.batch_select_indices
    monkeypatch.setattr(
        cache_cls,
        "batch_select_indices",
        lambda self, idx: (selections.append(len(idx)), original(self, idx)),
    )
    batched = TransformersEngine(model, max_batch_size=64).generate(PROMPTS, params)
    assert selections and selections == sorted(selections, reverse=True)  # the batch shrank
    single = TransformersEngine(model, max_batch_size=1).generate(PROMPTS, params)
    reasons = {r.finish_reason for r in batched}
    assert reasons == {"eos", "length"}, reasons  # some rows stop early, others run on
    for rb, rs in zip(batched, single):
        assert (rb.token_ids, rb.finish_reason) == (rs.token_ids, rs.finish_reason)
        torch.testing.assert_close(rb.logprobs, rs.logprobs, atol=2e-5, rtol=0)
