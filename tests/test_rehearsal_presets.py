"""Rehearsals of the presets that roll out with the transformers engine (``tests/rehearsal.py``):
``tiny``, ``carries``, ``addition`` and ``qwen2.5-fresh-mtp``, each run as users run it, resumed, and evaluated.

The vLLM preset's rehearsal is in ``tests/test_rehearsal_vllm.py``. The three that need nothing built
in this process run early, as background jobs (``tests/background.py``); each test asserts on its
rehearsal's result.
"""

from __future__ import annotations

import importlib.util
import json
import re

import background
import pyarrow.parquet as pq
import pytest
import yaml
from rehearsal import DATA, HELDOUT_FILE, ROOT, TRAIN_FILE, check_every_step, rehearse, tiny_checkpoint

# The transformers engine scores its own samples with the trainer's weights: in fp32 rollout and
# trainer log-probs agree to rounding (a few 1e-6), in bf16 to bf16's (a few hundredths).
FP32_MISMATCH, BF16_MISMATCH = 1e-4, 0.25


def test_shipped_problem_files_are_what_their_script_writes():
    script = ROOT / DATA / "make_rehearsal_data.py"
    spec = importlib.util.spec_from_file_location("make_rehearsal_data", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in module.PROBLEMS:
        assert pq.read_table(script.parent / name).to_pylist() == module.rows(name), name


def rehearse_tiny(directory):
    args = ["--train.warmup-sft-steps", "200", "--data.prompts-per-step", "4", "--eval.num-problems", "8"]
    return rehearse("tiny", args, directory, background.ENV)


def rehearse_carries(directory):
    args = [
        "--train.warmup-sft-steps", "10", "--data.prompts-per-step", "4", "--rollout.n", "4",
        "--eval.num-problems", "4",
    ]  # fmt: skip
    return rehearse("carries", args, directory, background.ENV)


def rehearse_addition(directory):
    args = [
        "--train.warmup-sft-steps", "10", "--data.prompts-per-step", "4", "--rollout.n", "4",
        "--eval.num-problems", "4",
    ]  # fmt: skip
    return rehearse("addition", args, directory, background.ENV)


@pytest.mark.background(job=rehearse_tiny)
def test_tiny():
    """The default preset: its own tiny model and synthetic task, with a shorter warm start that still
    leaves some rollouts right (reward variance, so that every step trains on a real gradient)."""
    run = background.result(rehearse_tiny)
    check_every_step(run.steps, mismatch_max=FP32_MISMATCH, probe_max=None)
    assert any(0 < m["reward/mean"] < 1 for m in run.steps), [m["reward/mean"] for m in run.steps]
    assert any(m["optim/grad_norm"] > 0 for m in run.steps)


@pytest.mark.background(job=rehearse_carries)
def test_carries():
    """The carries preset: 4 layers, 40-token worked solutions packed into 512-token micro-batches."""
    run = background.result(rehearse_carries)
    check_every_step(run.steps, mismatch_max=FP32_MISMATCH, probe_max=None)
    assert yaml.safe_load((run.run_dir / "config.yaml").read_text())["data"]["solution"] == "carries"


@pytest.mark.background(job=rehearse_addition)
def test_addition():
    """The headroom testbed's preset: 3-digit answer-only addition on the carries model, OCC."""
    run = background.result(rehearse_addition)
    check_every_step(run.steps, mismatch_max=FP32_MISMATCH, probe_max=None)
    assert yaml.safe_load((run.run_dir / "config.yaml").read_text())["data"]["digits"] == 3


def test_every_shipped_preset_has_a_rehearsal():
    """A preset added to occ_fast/configs/ without a rehearsal would ship a path nobody ran."""
    shipped = {path.stem for path in (ROOT / "occ_fast" / "configs").glob("*.yaml")}
    rehearsed = set()
    for test_file in ("test_rehearsal_presets.py", "test_rehearsal_vllm.py"):
        rehearsed |= set(re.findall(r'rehearse\(\s*"([^"]+)"', (ROOT / "tests" / test_file).read_text()))
    assert shipped == rehearsed


def test_qwen25_fresh_mtp(tmp_path):
    """A Qwen2.5-format model (tied embeddings, no MTP weights) gets a fresh MiMo-named head; bf16
    with activation checkpointing; DAPO-Math rows scored by math-verify in worker processes."""
    model = tiny_checkpoint(tmp_path / "Qwen2.5-tiny", "qwen2.5")
    args = [
        "--model.name-or-path", str(model), "--data.path", TRAIN_FILE, "--eval.path", HELDOUT_FILE,
        "--eval.num-problems", "4", "--data.prompts-per-step", "4", "--rollout.n", "8",
        "--rollout.max-new-tokens", "8", "--algorithm.overlong-buffer", "4", "--reward.num-workers", "2",
        "--train.device", "auto",
    ]  # fmt: skip
    run = rehearse("qwen2.5-fresh-mtp", args, tmp_path / "runs")
    check_every_step(run.steps, mismatch_max=BF16_MISMATCH, probe_max=None)
    assert any(0 < m["reward/mean"] < 1 for m in run.steps), [m["reward/mean"] for m in run.steps]
    exported = json.loads((run.run_dir / "model" / "config.json").read_text())
    assert exported["architectures"] == ["MiMoForCausalLM"] and exported["num_nextn_predict_layers"] == 1
