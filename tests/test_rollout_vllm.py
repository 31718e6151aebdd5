"""The vLLM rollout engine.

Everything that does not need vLLM runs everywhere: the weight-sync check, bucketing, the MTP names
handed to vLLM's drafter, the sampling/engine keywords, the conversion of vLLM outputs, acceptance
statistics and the missing-vLLM error. The real-engine tests at the bottom need vLLM and a CUDA
device and are skipped otherwise (vLLM cannot be installed on the CPU machines).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace as NS

import pytest
import torch
from model_helpers import tiny_mtp_model
from safetensors.torch import load_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from occ_fast.model import MTPModel, save_mtp_model
from occ_fast.rollout.base import RolloutEngine, SamplingParams
from occ_fast.rollout.vllm_engine import (
    INSTALL_HINT,
    VLLMEngine,
    WeightSyncError,
    acceptance_stats,
    bucketed,
    check_logprobs_agree,
    drafter_weights,
    llm_kwargs,
    sampling_kwargs,
    spec_counters,
    to_results,
)

# ---- the weight-sync check -------------------------------------------------------------------


def test_check_passes_on_numerical_noise_and_returns_the_mean_difference():
    gen = torch.Generator().manual_seed(0)
    trainer = -torch.rand(50, generator=gen) * 5
    engine = trainer + 0.01 * torch.randn(50, generator=gen)
    mean = check_logprobs_agree(engine, trainer, threshold=0.05)
    assert mean == pytest.approx((engine - trainer).abs().double().mean().item())


def test_check_accepts_per_sequence_lists():
    a, b = [torch.zeros(3), torch.full((2,), -1.0)], [torch.zeros(3), torch.full((2,), -1.1)]
    assert check_logprobs_agree(a, b, threshold=0.1) == pytest.approx(0.2 / 5)


def test_check_raises_when_weights_did_not_arrive():
    trainer = torch.tensor([-0.1, -2.0, -0.5, -3.0])
    stale = torch.tensor([-1.5, -0.2, -2.5, -0.4])
    with pytest.raises(WeightSyncError, match=r"after sync 3: mean \|diff\| = 1\.\d{4} over 4 tokens"):
        check_logprobs_agree(stale, trainer, threshold=0.1, context=" after sync 3")


def test_check_raises_on_non_finite_log_probs():
    with pytest.raises(WeightSyncError, match="nan"):
        check_logprobs_agree(torch.tensor([float("nan"), -1.0]), torch.tensor([-1.0, -1.0]), threshold=1.0)
    with pytest.raises(WeightSyncError):
        check_logprobs_agree(torch.tensor([-float("inf")]), torch.tensor([-1.0]), threshold=1e9)


def test_check_rejects_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="got 3 and 2"):
        check_logprobs_agree(torch.zeros(3), torch.zeros(2), threshold=1.0)
    with pytest.raises(ValueError, match="got 0 and 0"):
        check_logprobs_agree(torch.zeros(0), torch.zeros(0), threshold=1.0)


# ---- bucketing -------------------------------------------------------------------------------


def test_buckets_are_bounded_ordered_and_complete_with_an_oversized_tensor_alone():
    sizes = [10, 30, 60, 250, 5, 5, 90, 1]  # fp32 elements; a bucket holds 400 bytes = 100 elements
    named = [(f"t{i}", torch.zeros(n)) for i, n in enumerate(sizes)]
    buckets = list(bucketed(iter(named), max_bytes=400))
    assert [name for bucket in buckets for name, _ in bucket] == [name for name, _ in named]
    assert [[name for name, _ in b] for b in buckets] == [
        ["t0", "t1", "t2"],  # exactly full
        ["t3"],  # larger than a bucket: alone
        ["t4", "t5", "t6"],
        ["t7"],
    ]
    for bucket in buckets:
        nbytes = sum(t.numel() * t.element_size() for _, t in bucket)
        assert nbytes <= 400 or len(bucket) == 1


def test_buckets_count_bytes_of_the_dtype_and_reject_a_non_positive_size():
    named = [(f"b{i}", torch.zeros(100, dtype=torch.bfloat16)) for i in range(4)]
    assert [len(b) for b in bucketed(named, max_bytes=400)] == [2, 2]
    assert list(bucketed([], max_bytes=1)) == []
    with pytest.raises(ValueError, match="got 0"):
        next(bucketed(named, max_bytes=0))


# ---- MTP weights for vLLM's drafter ----------------------------------------------------------


@pytest.mark.parametrize("naming", ["mimo", "deepseek"])
@pytest.mark.parametrize("num_mtp", [1, 2])
def test_drafter_weights_are_the_checkpoint_tensors_save_mtp_model_writes(tmp_path, naming, num_mtp):
    model = tiny_mtp_model(num_mtp=num_mtp, naming=naming)
    save_mtp_model(model, tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    layers_n = model.base.config.num_hidden_layers
    mtp_prefixes = (
        ("model.mtp_layers.",)
        if naming == "mimo"
        else tuple(f"model.layers.{layers_n + d}." for d in range(num_mtp))
    )
    sent = dict(drafter_weights(model))
    assert len(sent) == len(list(drafter_weights(model)))  # no name twice
    expected = {k for k in saved if k.startswith(mtp_prefixes)}
    if naming == "mimo":  # MiMo's drafter takes the shared embedding/lm_head under the trunk's names
        expected |= {"model.embed_tokens.weight", "lm_head.weight"}
    assert set(sent) == expected
    for name, tensor in sent.items():
        torch.testing.assert_close(tensor, saved[name], atol=0, rtol=0, msg=name)


def test_drafter_weights_of_deepseek_naming_swap_the_projection_halves():
    model = tiny_mtp_model(naming="deepseek")
    ours = model.mtp[0].input_proj.weight
    layers_n = model.base.config.num_hidden_layers
    sent = dict(drafter_weights(model))[f"model.layers.{layers_n}.eh_proj.weight"]
    half = ours.shape[1] // 2
    torch.testing.assert_close(sent, torch.cat([ours[:, half:], ours[:, :half]], dim=1))


# ---- sampling parameters and engine keywords -------------------------------------------------


def test_sampling_keywords_stop_only_on_our_eos_and_return_the_sampled_log_prob():
    params = SamplingParams(max_new_tokens=7, temperature=0.7, top_p=0.9, top_k=0, n=4, eos_token_ids=(2, 5))
    kw = sampling_kwargs(params, seed=123)
    assert kw == dict(
        n=4,
        temperature=0.7,
        top_p=0.9,
        top_k=-1,
        max_tokens=7,
        seed=123,
        logprobs=0,
        ignore_eos=True,
        stop_token_ids=[2, 5],
        detokenize=False,
    )
    assert sampling_kwargs(SamplingParams(max_new_tokens=1, top_k=20), 0)["top_k"] == 20


@pytest.mark.parametrize("torchrun", [False, True])
@pytest.mark.parametrize("speculative", ["none", "mtp"])
def test_llm_keywords(torchrun, speculative):
    kw = llm_kwargs(
        "/m",
        gpu_memory_utilization=0.4,
        max_model_len=512,
        seed=3,
        speculative=speculative,
        num_speculative_tokens=2,
        torchrun=torchrun,
    )
    assert (
        kw["dtype"] == "bfloat16" and kw["enable_sleep_mode"] and kw["logprobs_mode"] == "processed_logprobs"
    )
    assert (kw["gpu_memory_utilization"], kw["max_model_len"], kw["seed"]) == (0.4, 512, 3)
    assert kw.get("distributed_executor_backend") == ("external_launcher" if torchrun else None)
    if speculative == "mtp":
        assert kw["speculative_config"] == {"method": "mtp", "num_speculative_tokens": 2}
        assert kw["disable_log_stats"] is False  # LLM.get_metrics() needs the stats
    else:
        assert "speculative_config" not in kw


# ---- vLLM outputs to RolloutResults ----------------------------------------------------------


def _completion(index, ids, finish, lps):
    logprobs = (
        None if lps is None else [{t: NS(logprob=lp), t + 1: NS(logprob=-9.0)} for t, lp in zip(ids, lps)]
    )
    return NS(index=index, token_ids=ids, finish_reason=finish, logprobs=logprobs)


def test_outputs_become_prompt_major_results_with_sampled_log_probs():
    params = SamplingParams(max_new_tokens=3, n=2, eos_token_ids=(9,))
    outputs = [
        NS(
            outputs=[
                _completion(1, [4, 9], "stop", [-0.5, -0.25]),
                _completion(0, [1, 2, 3], "length", [-1, -2, -3]),
            ]
        ),
        NS(
            outputs=[_completion(0, [9], "stop", [-0.125]), _completion(1, [7, 7, 7], "length", [-3, -2, -1])]
        ),
    ]
    results = to_results([[1], [2, 3]], outputs, params)
    assert [(r.prompt_index, r.sample_index) for r in results] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [r.token_ids for r in results] == [[1, 2, 3], [4, 9], [9], [7, 7, 7]]
    assert [r.finish_reason for r in results] == ["length", "eos", "eos", "length"]
    assert results[1].content_ids == [4] and results[2].content_ids == []
    assert results[2].prompt_token_ids == [2, 3]
    torch.testing.assert_close(results[1].logprobs, torch.tensor([-0.5, -0.25]))
    assert all(r.logprobs.dtype == torch.float32 for r in results)


def test_greedy_outputs_get_zero_log_probs():
    params = SamplingParams(max_new_tokens=2, temperature=0.0)
    (result,) = to_results([[1]], [NS(outputs=[_completion(0, [5, 6], "length", None)])], params)
    torch.testing.assert_close(result.logprobs, torch.zeros(2))


@pytest.mark.parametrize(
    ("completion", "match"),
    [
        (_completion(0, [4], "abort", [-1.0]), "'abort'"),
        (_completion(0, [4], "stop", [-1.0]), "'stop'"),  # stopped on a token that is not our EOS
        (_completion(0, [4, 5], "length", [-1.0]), "no log-prob"),
        (_completion(0, [4], "length", None), "no log-prob"),
    ],
)
def test_malformed_outputs_raise_naming_the_sample(completion, match):
    params = SamplingParams(max_new_tokens=2, eos_token_ids=(9,))
    with pytest.raises(RuntimeError, match=match):
        to_results([[1]], [NS(outputs=[completion])], params)
    with pytest.raises(RuntimeError, match="2 samples for prompt 0, expected n=1"):
        to_results([[1]], [NS(outputs=[completion, completion])], params)
    with pytest.raises(RuntimeError, match="1 outputs for 2 prompts"):
        to_results([[1], [2]], [NS(outputs=[completion])], params)


# ---- speculative-decoding acceptance ---------------------------------------------------------


def _metrics(drafts, draft_tokens, accepted, per_pos):
    return [
        NS(name="vllm:num_requests_running", value=3),
        NS(name="vllm:spec_decode_num_drafts", value=drafts),
        NS(name="vllm:spec_decode_num_draft_tokens", value=draft_tokens),
        NS(name="vllm:spec_decode_num_accepted_tokens", value=accepted),
        NS(name="vllm:spec_decode_num_accepted_tokens_per_pos", values=per_pos),
    ]


def test_acceptance_is_computed_from_counter_deltas():
    before = spec_counters(_metrics(10, 20, 12, [8, 4]))
    after = spec_counters(_metrics(110, 220, 162, [98, 64]))
    stats = acceptance_stats(before, after)
    assert stats == pytest.approx(
        {
            "acceptance_rate": 150 / 200,
            "mean_acceptance_length": 1 + 150 / 100,
            "acceptance_rate_pos0": 0.9,
            "acceptance_rate_pos1": 0.6,
        }
    )
    assert acceptance_stats(after, after) == {}
    assert acceptance_stats({}, {}) == {}


# ---- a missing vLLM --------------------------------------------------------------------------


def test_missing_vllm_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'occ-fast\[vllm\]'"):
        VLLMEngine(tmp_path)
    assert "occ-fast[vllm]" in INSTALL_HINT


def test_engine_fits_the_rollout_interface():
    assert issubclass(VLLMEngine, RolloutEngine)


def test_bad_arguments_are_named_before_vllm_is_needed(tmp_path):
    with pytest.raises(ValueError, match="gpu_memory_utilization=1.5"):
        VLLMEngine(tmp_path, gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="sleep_level=3"):
        VLLMEngine(tmp_path, sleep_level=3)


# ---- the real engine (vLLM + CUDA only) ------------------------------------------------------

GPU_CONFIG = dict(
    vocab_size=512,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=False,
    torch_dtype="bfloat16",
)


def _gpu_model(seed: int) -> MTPModel:
    torch.manual_seed(seed)
    base = Qwen2ForCausalLM(Qwen2Config(**GPU_CONFIG)).to(torch.bfloat16)
    model = MTPModel.from_base(base, 1, attn_implementation="sdpa", naming="mimo")
    return model.cuda().eval()


def _trainer_logprobs(model: MTPModel, result, temperature: float) -> torch.Tensor:
    """The trainer's log-probs of a completion's tokens at ``temperature`` (as processed log-probs are)."""
    ids = torch.tensor([result.prompt_token_ids + result.token_ids], device="cuda")
    with torch.no_grad():
        logits = model.base(input_ids=ids).logits[0].float() / temperature
    start = len(result.prompt_token_ids) - 1
    lp = logits[start : start + len(result.token_ids)].log_softmax(-1)
    return lp.gather(-1, torch.tensor(result.token_ids, device="cuda")[:, None]).squeeze(-1).cpu()


@pytest.fixture(scope="module")
def gpu_engine(tmp_path_factory):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    path = tmp_path_factory.mktemp("tiny")
    model = _gpu_model(seed=0)
    model.base.save_pretrained(path)
    engine = VLLMEngine(
        path, gpu_memory_utilization=0.3, max_model_len=256, engine_kwargs={"enforce_eager": True}
    )
    return engine, model


@pytest.mark.gpu
def test_generate_matches_the_trainer_and_sleeps(gpu_engine):
    engine, model = gpu_engine
    params = SamplingParams(max_new_tokens=12, temperature=0.8, n=3, seed=1, eos_token_ids=(7,))
    results = engine.generate([[5, 17, 3], [22, 4, 9, 1]], params)
    assert [(r.prompt_index, r.sample_index) for r in results] == [(p, s) for p in range(2) for s in range(3)]
    assert engine._awake == set()  # asleep after the rollout
    for r in results:
        assert len(r.logprobs) == len(r.token_ids) and r.finish_reason in ("eos", "length")
        if r.finish_reason == "eos":
            assert r.token_ids[-1] == 7
    engine_lp = [r.logprobs for r in results]
    trainer_lp = [_trainer_logprobs(model, r, params.temperature) for r in results]
    assert check_logprobs_agree(engine_lp, trainer_lp, threshold=0.05) < 0.05
    again = engine.generate([[5, 17, 3], [22, 4, 9, 1]], params)
    assert [r.token_ids for r in again] == [r.token_ids for r in results]  # seeded


@pytest.mark.gpu
def test_sync_moves_new_weights_in_and_the_probe_catches_a_skipped_sync(gpu_engine):
    engine, _ = gpu_engine
    other = _gpu_model(seed=1)
    engine._wake("weights")
    with pytest.raises(WeightSyncError, match="not sampling from the trainer's"):
        engine._probe(other.base)  # the engine still holds the first model's weights
    engine.sync_weights(other)
    assert (
        engine.last_sync_logprob_diff is not None and engine.last_sync_logprob_diff < engine.check_threshold
    )
    results = engine.generate([[3, 1, 4, 1, 5]], SamplingParams(max_new_tokens=8, n=2, seed=0))
    trainer_lp = [_trainer_logprobs(other, r, 1.0) for r in results]
    assert check_logprobs_agree([r.logprobs for r in results], trainer_lp, threshold=0.05) < 0.05


@pytest.mark.gpu
def test_level_2_sleep_demands_a_sync_before_the_next_rollout(gpu_engine):
    engine, model = gpu_engine
    engine.sleep_level = 2
    try:
        params = SamplingParams(max_new_tokens=4, seed=0)
        engine.generate([[1, 2, 3]], params)
        with pytest.raises(WeightSyncError, match="call sync_weights"):
            engine.generate([[1, 2, 3]], params)
        engine.sync_weights(model)
        assert len(engine.generate([[1, 2, 3]], params)) == 1
    finally:
        engine.sleep_level = 1


@pytest.mark.gpu
def test_mtp_speculative_rollouts_report_acceptance_and_sync_the_drafter(tmp_path):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = _gpu_model(seed=2)
    save_mtp_model(model, tmp_path)  # MiMo naming and config: vLLM's MiMo MTP drafter
    engine = VLLMEngine(tmp_path, gpu_memory_utilization=0.3, max_model_len=256, speculative="mtp")
    params = SamplingParams(max_new_tokens=32, temperature=1.0, n=2, seed=0)
    engine.generate([[5, 6, 7, 8]], params)
    assert 0.0 <= engine.last_spec_stats["acceptance_rate"] <= 1.0
    engine.sync_weights(model)
    assert engine.last_sync_logprob_diff < engine.check_threshold
