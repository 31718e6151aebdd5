"""Rehearsal of the preset that rolls out with vLLM, ``mimo-7b-dapo-occ``, on vLLM's CPU build
(``tests/rehearsal.py``), and of its drafter: after each sync, the MTP head the trainer held then drafts
in vLLM as it predicts in the trainer.

Skipped without vLLM (the main test environment); with ``OCC_FAST_REQUIRE_VLLM=1`` (set by .ci/run in
the vLLM environment) a missing vLLM is an error instead.
"""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_model

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
if os.environ.get("OCC_FAST_REQUIRE_VLLM") == "1":
    import vllm  # noqa: F401  (the vLLM environment must have it)
else:
    pytest.importorskip("vllm")

from rehearsal import HELDOUT_FILE, ROOT, TRAIN_FILE, check_every_step, rehearse, tiny_checkpoint  # noqa: E402

from occ_fast.data import PromptRecord  # noqa: E402
from occ_fast.model import load_mtp_model  # noqa: E402
from occ_fast.prompts import encode_prompt  # noqa: E402
from occ_fast.rollout.base import SamplingParams  # noqa: E402
from occ_fast.rollout.drafter_probe import probe_prompts, replay_greedy_drafts  # noqa: E402
from occ_fast.rollout.vllm_engine import VLLMEngine  # noqa: E402
from occ_fast.tokenizer import load_tokenizer  # noqa: E402

# The preset trains in bf16 and the engine runs in the trainer's precision: sampled tokens' log-probs
# agree to a few hundredths, the probe's mean to about 1e-3 (an fp32 trainer beside a bf16 engine,
# as before rollout.dtype, read 0.19 and 0.009-0.019).
BF16_MISMATCH, BF16_PROBE = 0.1, 0.005


@pytest.fixture(scope="module")
def mimo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mimo")
    model = tiny_checkpoint(tmp / "MiMo-tiny", "mimo")
    args = [
        "--model.name-or-path", str(model), "--data.path", TRAIN_FILE, "--eval.path", HELDOUT_FILE,
        "--eval.num-problems", "4", "--eval.n", "2", "--data.prompts-per-step", "4", "--rollout.n", "8",
        "--rollout.max-new-tokens", "8", "--algorithm.overlong-buffer", "4", "--reward.num-workers", "2",
        "--train.device", "auto",
    ]  # fmt: skip
    return rehearse("mimo-7b-dapo-occ", args, tmp / "runs")


def test_mimo_7b_dapo_occ(mimo_run):
    """A MiMo-format checkpoint (its MTP layer loaded), DAPO-Math rows scored by math-verify in worker
    processes, bf16, sampled by vLLM in the trainer's precision with the sync probe after every step."""
    check_every_step(mimo_run.steps, mismatch_max=BF16_MISMATCH, probe_max=BF16_PROBE)
    assert any(0 < m["reward/mean"] < 1 for m in mimo_run.steps), [m["reward/mean"] for m in mimo_run.steps]
    assert any(m["optim/grad_norm"] > 0 for m in mimo_run.steps)
    assert "MTP init: checkpoint (1 depth(s), mimo naming)" in mimo_run.outputs[0].stderr


def test_the_drafter_holds_the_trainers_mtp_head_after_every_sync(mimo_run):
    """What the CPU build cannot do in the run itself (sample with drafts), checked greedily: an fp32
    engine with the MTP drafter, started from the run's own export, takes the weights of every step's
    checkpoint through the trainer's sync (whose trunk and drafter probes must pass, here exactly), then
    decodes the run's prompts and the drafter probe's with drafts; vLLM's draft and accept counts equal
    a replay with that step's head."""
    start = mimo_run.run_dir / "rollout-init"
    tokenizer = load_tokenizer(start)
    prompts = [
        encode_prompt(
            tokenizer, PromptRecord(row["prompt"], row["reward_model"]["ground_truth"], "rehearsal")
        )
        for name in (TRAIN_FILE, HELDOUT_FILE)
        for row in pq.read_table(ROOT / name).to_pylist()
    ] + probe_prompts(len(tokenizer))  # after these, the tiny model's drafts are sometimes wrong
    model = load_mtp_model(start, mtp_init="checkpoint", dtype=torch.float32, attn_implementation="sdpa")
    engine = VLLMEngine(start, speculative="mtp", dtype="float32")
    checkpoints = sorted((mimo_run.run_dir / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step_000000000", "step_000000001", "step_000000002"]
    try:
        for checkpoint in checkpoints:
            load_model(model, checkpoint / "model.safetensors")
            engine.sync_weights(model)
            assert engine.last_sync_logprob_diff < 1e-4, checkpoint.name
            probe = engine.last_drafter_probe
            assert probe["measured"] == probe["replayed"], (checkpoint.name, probe)
            results = engine.generate(prompts, SamplingParams(max_new_tokens=16, temperature=0.0))
            replayed = replay_greedy_drafts(model, prompts, [r.token_ids for r in results], 1)
            assert engine.last_spec_counts == replayed, checkpoint.name
            assert 0 < replayed["accepted_tokens"] < replayed["draft_tokens"], replayed
    finally:
        engine.close()
