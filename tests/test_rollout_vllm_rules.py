"""What the installed vLLM can run, refused at start in one line (occ_fast/rollout/vllm_rules.py)."""

from __future__ import annotations

import time

import pytest

from occ_fast.config import parse_config
from occ_fast.rollout.vllm_rules import engine_problem, installed_vllm
from occ_fast.train import main

CPU_BUILD, GPU_BUILD = ("0.32.0", True), ("0.32.0", False)


def test_plain_rollouts_run_on_a_cpu_engine_sampled_drafts_do_not():
    assert engine_problem(CPU_BUILD, "none", 1.0) is None
    assert engine_problem(CPU_BUILD, "mtp", 0.0) is None  # greedy drafting works on CPU (the probes)
    problem = engine_problem(CPU_BUILD, "mtp", 0.7)
    assert problem.startswith("rollout.speculative='mtp' with rollout.temperature=0.7 on a CPU engine")
    assert "--rollout.speculative none" in problem and "\n" not in problem
    assert engine_problem(GPU_BUILD, "mtp", 0.7) is None


def test_version_rules_and_a_missing_vllm_name_the_fields():
    assert "needs vLLM, which is not installed: pip install" in engine_problem(None, "none", 1.0)
    problem = engine_problem(("0.12.1", False), "mtp", 1.0)
    assert problem.startswith("rollout.engine='vllm', rollout.speculative='mtp': vLLM 0.12.1 is too old")
    assert engine_problem(("0.12.1", False), "none", 1.0) is None
    assert "VLLM_USE_V2_MODEL_RUNNER=1" in engine_problem(("0.25.0", False), "mtp", 1.0, "1")
    assert engine_problem(("0.25.0", False), "mtp", 1.0) is None  # run on the V1 runner


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_vllm_on_cpu_passes_the_configuration_whatever_train_device_says(device):
    cfg = parse_config(["--rollout.engine", "vllm", "--train.device", device])
    assert (cfg.rollout.engine, cfg.train.device) == ("vllm", device)


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_sampled_drafts_are_refused_at_start_before_any_heavy_work(tmp_path, capsys, device):
    """Without vLLM (the main environment) the refusal names the install; with vLLM's CPU build,
    sampling with drafts. Either way at once, in one line, whatever train.device says."""
    installed = installed_vllm()
    argv = ["--rollout.engine", "vllm", "--rollout.speculative", "mtp", "--train.device", device]
    argv += ["--run.output-dir", str(tmp_path), "--run.name", "r", "--train.warmup-sft-steps", "400"]
    start = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - start < 30  # before the warm start and the engine's start-up
    err = capsys.readouterr().err
    expected = "needs vLLM, which is not installed" if installed is None else "on a CPU engine"
    if installed is not None and not installed[1]:
        pytest.skip("a GPU build of vLLM samples with drafts")
    assert expected in " ".join(err.split())
    assert "Traceback" not in err
