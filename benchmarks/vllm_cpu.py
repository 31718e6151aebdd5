"""Figures of the vLLM rollout engine on vLLM's CPU build, measured by the real-engine tests.

    tests/vllm_env.sh && .vllm-venv/bin/python benchmarks/vllm_cpu.py

Runs tests/test_rollout_vllm_real.py (every check must pass), then writes what it measured to
benchmarks/results/vllm-cpu/results.json and the README's snippet to .../summary.md.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "vllm-cpu"


def render(data: dict) -> str:
    """The README snippet: every figure comes from ``data`` (results.json)."""
    acc, env, start = data["acceptance"], data["environment"], data["engine_start_s"]
    probe = data["drafter_probe"]
    return (
        f"Measured with vLLM {env['vllm']} (CPU build), torch {env['torch']}, transformers "
        f"{env['transformers']}, on {env['cpus']} CPU cores ({env['machine']}); "
        f"`tests/test_rollout_vllm_real.py` ran in {data['test_module_s']:.0f} s.\n\n"
        "| figure | value |\n|---|---|\n"
        f"| engine start-up, first in the process (float32, MTP drafter; imports and warm-up "
        f"included) | {start['mtp_fp32']:.1f} s |\n"
        f"| engine start-up, second (bfloat16) | {start['tied_bf16']:.1f} s |\n"
        f"| engine start-up, third (float32) | {start['plain_fp32']:.1f} s |\n"
        f"| engine start-up with the CPU defaults (eager, 1 GiB KV cache; not the first) | "
        f"{start['cpu_defaults']:.1f} s |\n"
        f"| max abs log-prob difference, engine vs trainer, bfloat16 engine "
        f"({data['logprob_tokens']['bf16']} tokens, T = 0.8, mean log-prob "
        f"{data['logprob_mean']['bf16']:.2f}) | {data['logprob_max_abs_diff']['bf16']:.2e} |\n"
        f"| max abs log-prob difference, engine vs trainer, float32 engine "
        f"({data['logprob_tokens']['fp32']} tokens, T = 0.8, mean log-prob "
        f"{data['logprob_mean']['fp32']:.2f}) | {data['logprob_max_abs_diff']['fp32']:.2e} |\n"
        f"| MTP acceptance measured by vLLM (greedy, {acc['drafts']} drafts) | {acc['measured']:.4f} |\n"
        f"| MTP acceptance forecast by the trainer (`spec/forecast_acceptance_rate_n1`) | {acc['forecast']:.4f} |\n"
        f"| depth-1 hit rate averaged over every position (not the schedule's) | "
        f"{acc['every_position_average']:.4f} |\n"
        f"| the schedule replayed with post-norm MTP input (the wrong convention for MiMo) | "
        f"{acc['post_norm_replayed']:.4f} |\n"
        f"| drafter probe after a sync (fp32): vLLM's acceptance = the replay's | "
        f"{probe['fp32_synced']:.4f} |\n"
        f"| drafter probe, the drafter's sync switched off | {probe['fp32_stale']} |\n"
    )


def environment() -> dict:
    import torch
    import transformers
    import vllm

    return {
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    raw = OUT / "results.json"
    env = {**os.environ, "OCC_FAST_VLLM_FIGURES": str(raw), "OCC_FAST_REQUIRE_VLLM": "1"}
    start = time.perf_counter()
    test = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_rollout_vllm_real.py"]
    code = subprocess.call([sys.executable, *test], cwd=ROOT, env=env)
    if code:
        print("the real-engine tests failed: no figures written", file=sys.stderr)
        return code
    figures = json.loads(raw.read_text())
    data: dict = {"acceptance": figures.pop("acceptance")}
    for key, value in figures.items():  # "group/name" -> data[group][name]
        group, name = key.split("/", 1)
        data.setdefault(group, {})[name] = value
    data |= {"test_module_s": time.perf_counter() - start, "environment": environment()}
    raw.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (OUT / "summary.md").write_text(render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
