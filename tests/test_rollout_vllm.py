"""The vLLM rollout engine, the parts that need no vLLM.

The weight-sync check, bucketing, the MTP names handed to vLLM's drafter, tied-weight aliases, the
drafter lookup in either model runner, version floors, the MTP draft formats, the sampling/engine
keywords, the conversion of vLLM outputs, acceptance statistics and the missing-vLLM error. The
stand-ins for vLLM objects here mirror the real ones, which tests/test_rollout_vllm_real.py runs on
vLLM's CPU build; sleep mode, which only a GPU platform has, is tested at the bottom (skipped on CPU).
"""

from __future__ import annotations

import json
import logging
import sys
from types import SimpleNamespace as NS

import pytest
import torch
from model_helpers import ENGINE_QWEN2, small_qwen2_mtp, tiny_mtp_model
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
    check_version,
    draft_model,
    drafter_weights,
    llm_kwargs,
    mtp_draft_tokens,
    sampling_kwargs,
    spec_counters,
    to_results,
    unique_tensors,
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


def test_a_tied_weight_is_sent_once_under_its_first_name():
    """vLLM loads a tied weight once: its alias in a later bucket raises (new vLLM) or is skipped."""
    tied = small_qwen2_mtp(vocab=64, num_mtp=1, tie=True)
    names = [n for n, _ in unique_tensors(tied.base)]
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert len(names) == len(set(names)) == len(tied.base.state_dict()) - 1
    assert "lm_head.weight" not in dict(drafter_weights(tied))
    untied = small_qwen2_mtp(vocab=64, num_mtp=1, tie=False)
    assert [n for n, _ in unique_tensors(untied.base)] == list(untied.base.state_dict())


def test_the_drafter_model_is_found_in_either_model_runner():
    model = torch.nn.Linear(1, 1)
    v2 = NS(get_draft_model=lambda: model)  # V2 runner: no drafter attribute
    v1_old = NS(drafter=NS(model=model))  # V1 runner before get_draft_model existed
    assert draft_model(v2) is model and draft_model(v1_old) is model
    for runner in (NS(get_draft_model=lambda: None), NS(drafter=None), NS()):
        with pytest.raises(WeightSyncError, match="no MTP drafter model"):
            draft_model(runner)


@pytest.mark.parametrize(
    ("version", "speculative", "ok"),
    [
        ("0.10.1", "none", False),
        ("0.10.2", "none", True),
        ("0.11.1", "mtp", False),  # logprobs=0 read as "none asked": no log-probs for drafted tokens
        ("0.12.9", "mtp", False),
        ("0.13.0", "mtp", True),
        ("0.13.0rc2.dev5+gabc", "mtp", True),
        ("0.32.0+cpu", "mtp", True),
    ],
)
def test_vllm_version_floors(version, speculative, ok):
    if ok:
        assert check_version(version, speculative) == {}
    else:
        with pytest.raises(ImportError, match=rf"vLLM {version} is too old.*>= 0\.1"):
            check_version(version, speculative)


def test_vllm_025_drafts_on_its_v1_runner_the_v2_one_has_no_drafter_handle():
    assert check_version("0.25.1", "mtp") == {"VLLM_USE_V2_MODEL_RUNNER": "0"}
    assert check_version("0.25.0", "mtp", "0") == {"VLLM_USE_V2_MODEL_RUNNER": "0"}
    with pytest.raises(ImportError, match="VLLM_USE_V2_MODEL_RUNNER=1.*unset .*>= 0.26.0"):
        check_version("0.25.0", "mtp", "1")
    assert check_version("0.25.0", "none", "1") == {}  # no drafter to sync
    assert check_version("0.26.0", "mtp") == {}  # get_draft_model() on the V2 runner


def test_mtp_drafts_only_from_formats_vllm_drafts_with(tmp_path, caplog):
    for naming in ("mimo", "deepseek"):
        save_mtp_model(tiny_mtp_model(num_mtp=2, naming=naming), tmp_path / naming)
    mimo = json.loads((tmp_path / "mimo" / "config.json").read_text())
    with caplog.at_level(logging.WARNING):
        assert mtp_draft_tokens(mimo, 3, "m") == 1  # vLLM's MiMo drafter runs depth 1 only
    assert "capped to 1" in caplog.text
    assert mtp_draft_tokens(mimo, 1, "m") == 1
    deepseek_on_qwen2 = json.loads((tmp_path / "deepseek" / "config.json").read_text())
    with pytest.raises(ValueError, match="model_type 'qwen2'.*--model.mtp-init fresh.*naming='mimo'"):
        mtp_draft_tokens(deepseek_on_qwen2, 1, "d")
    assert mtp_draft_tokens({**deepseek_on_qwen2, "model_type": "deepseek_v3"}, 3, "d") == 3
    with pytest.raises(ValueError, match="no MTP heads"):
        mtp_draft_tokens({**mimo, "num_nextn_predict_layers": 0}, 1, "m")


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


_LLM = dict(
    gpu_memory_utilization=0.4,
    max_model_len=8,
    seed=0,
    speculative="none",
    num_speculative_tokens=1,
    torchrun=False,
)


@pytest.mark.parametrize("torchrun", [False, True])
@pytest.mark.parametrize("speculative", ["none", "mtp"])
def test_llm_keywords(torchrun, speculative):
    assert llm_kwargs("/m", **_LLM, sleep_mode=False, dtype="float32") | {
        "enable_sleep_mode": True,
        "dtype": "bfloat16",
    } == llm_kwargs("/m", **_LLM)
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
    assert kw["enforce_eager"] is False and "kv_cache_memory_bytes" not in kw  # vLLM's own defaults
    knobs = llm_kwargs("/m", **_LLM, enforce_eager=True, kv_cache_bytes=1 << 28)
    assert knobs["enforce_eager"] is True and knobs["kv_cache_memory_bytes"] == 1 << 28
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
    with pytest.raises(ValueError, match="dtype='fp8'"):
        VLLMEngine(tmp_path, dtype="fp8")
    with pytest.raises(ValueError, match="kv_cache_bytes=0"):
        VLLMEngine(tmp_path, kv_cache_bytes=0)


def test_tensor_parallelism_is_refused_in_one_line_saying_why(tmp_path):
    with pytest.raises(
        ValueError, match="tensor parallelism is not supported: the weight sync.*one engine per GPU"
    ) as err:
        VLLMEngine(tmp_path, engine_kwargs={"tensor_parallel_size": 2})
    assert "\n" not in str(err.value)


def test_cached_gpu_memory_is_released_before_the_engine_wakes(monkeypatch):
    """Sleep mode exists only on GPU: here the call order, with vLLM's LLM reduced to a call log."""
    calls = []
    engine = object.__new__(VLLMEngine)
    engine.llm = NS(
        wake_up=lambda tags: calls.append(("wake_up", tuple(tags))),
        sleep=lambda level: calls.append(("sleep", level)),
    )
    engine.sleep_mode, engine.sleep_level, engine._weights_valid = True, 1, True
    engine._awake = set()
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(("empty_cache",)))
    engine._wake("weights")
    engine._wake("weights", "kv_cache")
    engine._wake("weights", "kv_cache")  # awake: nothing to do
    engine._sleep()
    assert calls == [
        ("empty_cache",),
        ("wake_up", ("weights",)),
        ("empty_cache",),
        ("wake_up", ("kv_cache",)),
        ("sleep", 1),
    ]


# ---- sleep mode: the real engine on a platform that has it (CUDA) --------------------------
# Everything else runs against the real CPU engine in tests/test_rollout_vllm_real.py.


@pytest.fixture(scope="module")
def sleeping_engine(tmp_path_factory):
    pytest.importorskip("vllm")
    from vllm.platforms import current_platform

    if not current_platform.is_sleep_mode_available():
        pytest.skip("vLLM sleep mode needs a GPU platform")
    path = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = Qwen2Config(**ENGINE_QWEN2, tie_word_embeddings=False)
    model = MTPModel.from_base(Qwen2ForCausalLM(config).to(torch.bfloat16), 1, attn_implementation="sdpa")
    model = model.cuda().eval()
    model.base.save_pretrained(path)
    engine = VLLMEngine(
        path, gpu_memory_utilization=0.3, max_model_len=256, engine_kwargs={"enforce_eager": True}
    )
    return engine, model


@pytest.mark.gpu
def test_level_1_sleep_after_each_rollout_and_level_2_demands_a_sync(sleeping_engine):
    engine, model = sleeping_engine
    params = SamplingParams(max_new_tokens=4, seed=0)
    engine.generate([[1, 2, 3]], params)
    assert engine.sleep_mode and engine._awake == set()  # asleep after the rollout
    engine.sleep_level = 2
    try:
        engine.generate([[1, 2, 3]], params)
        with pytest.raises(WeightSyncError, match="call sync_weights"):
            engine.generate([[1, 2, 3]], params)
        engine.sync_weights(model)
        assert engine.last_sync_logprob_diff < engine.check_threshold
        assert len(engine.generate([[1, 2, 3]], params)) == 1
    finally:
        engine.sleep_level = 1
