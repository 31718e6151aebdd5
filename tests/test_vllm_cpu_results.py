"""A figure check, not a test of the trainer: the vLLM CPU figures on the rollouts page were written by
benchmarks/vllm_cpu.py (which runs tests/test_rollout_vllm_real.py), and they hold what the page claims."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "vllm-cpu"
TRAIN = ROOT / "benchmarks" / "results" / "vllm-cpu-train"


def _bench(name: str = "vllm_cpu"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_is_rendered_from_the_results_and_shown_on_the_rollouts_page():
    data = json.loads((RESULTS / "results.json").read_text())
    summary = (RESULTS / "summary.md").read_text()
    assert summary == _bench().render(data)
    page = (ROOT / "occ_fast" / "rollout" / "README.md").read_text()
    block = "<!-- BEGIN benchmarks/results/vllm-cpu/summary.md -->\n" + summary
    assert block + "<!-- END benchmarks/results/vllm-cpu/summary.md -->" in page


def test_the_recorded_figures_hold_what_the_page_says():
    data = json.loads((RESULTS / "results.json").read_text())
    acc = data["acceptance"]
    assert acc["forecast"] == acc["measured"]  # greedy: the forecast replays vLLM's schedule exactly
    assert 0.2 < acc["measured"] < 0.8 and acc["post_norm_replayed"] != acc["measured"]
    assert acc["every_position_average"] != acc["measured"]
    assert data["logprob_max_abs_diff"]["fp32"] < 1e-3 and data["logprob_max_abs_diff"]["bf16"] < 0.1
    assert data["environment"]["vllm"] == "0.32.0"


def test_the_trainers_figures_on_vllm_hold_what_the_page_says():
    """benchmarks/vllm_train.py: fp32 engine at fp32 rounding, bf16 well above it; greedy acceptance
    forecast exactly, step after step, and the drafter probe agreeing to the draft."""
    data = json.loads((TRAIN / "results.json").read_text())
    summary = (TRAIN / "summary.md").read_text()
    assert summary == _bench("vllm_train").render(data)
    page = (ROOT / "occ_fast" / "rollout" / "README.md").read_text()
    assert f"<!-- BEGIN benchmarks/results/vllm-cpu-train/summary.md -->\n{summary}<!-- END" in page
    fp32, bf16 = data["runs"]["vllm_fp32"], data["runs"]["vllm_bf16"]
    assert fp32["rollout/sync_logprob_diff"] < 1e-4 < bf16["rollout/sync_logprob_diff"]
    assert fp32["mismatch/abs_diff_max"] < 1e-3 < bf16["mismatch/abs_diff_max"]
    for row in data["acceptance_per_step"]:
        assert row["forecast"] == row["measured"]
        assert row["probe_drafter_measured"] == row["probe_drafter_replayed"]
    assert data["drafts"]["same_tokens"]  # drafts change the speed, never the greedy tokens
