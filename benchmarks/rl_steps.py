"""A few RL steps of a random-init model with Qwen2-0.5B's trunk shapes on one GPU: throughput and step split.

    python benchmarks/rl_steps.py [--steps 4] [--out benchmarks/results/rl-steps]

Runs ``python -m occ_fast.train`` once per MTP regime (``occ`` and ``detach`` by default) with a
random-init Qwen2 model (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864; vocabulary of the
offline tokenizer), one MTP head, bf16, sdpa attention, the transformers rollout engine, and
synthetic arithmetic prompts. Reports generated tokens per second and the step-time split
(rollout and reward, old log-probs, update) averaged over the steps after the first (warm-up,
Triton compilation), and writes ``results.json`` and ``summary.md``. Skips with a message, exit
status 0, without a CUDA device or without the trainer's dependencies.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAINER_MODULES = ("transformers", "tokenizers", "safetensors", "rich", "tyro", "yaml")
SHAPE = dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864)
PROMPTS, SAMPLES, MAX_NEW_TOKENS = 16, 8, 64
TIMES = ("time/rollout_and_reward_s", "time/old_logprobs_s", "time/update_s", "time/step_s")


def skip_reason() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device: the RL steps of a 0.5B model are GPU-only"
    missing = [m for m in TRAINER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return f"the trainer needs {', '.join(missing)} (pip install them, or bring wheels in ./.whl)"
    return None


def train_args(regime: str, steps: int, out_dir: Path) -> list[str]:
    tiny = [f"--model.tiny.{k.replace('_', '-')} {v}" for k, v in SHAPE.items()]
    flags = [
        *tiny,
        f"--mtp.regime {regime}",
        "--model.dtype bf16",
        "--model.attn-implementation sdpa",
        "--rollout.engine transformers",
        f"--rollout.max-new-tokens {MAX_NEW_TOKENS}",
        f"--rollout.n {SAMPLES}",
        f"--data.prompts-per-step {PROMPTS}",
        "--optim.mini-batches 2",
        "--optim.micro-batch-tokens 8192",
        f"--train.steps {steps}",
        "--train.warmup-sft-steps 0",
        "--eval.every 0",
        "--run.save-every 0",
        f"--run.output-dir {out_dir}",
        f"--run.name {regime}",
    ]
    return [a for flag in flags for a in flag.split(" ", 1)]


def run_regime(regime: str, steps: int, out_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "occ_fast.train", *train_args(regime, steps, out_dir)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out_dir / regime / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:] or rows  # the first step compiles the kernels
    mean = {k: sum(r[k] for r in timed) / len(timed) for k in TIMES}
    tokens = sum(r["response/length_mean"] for r in timed) / len(timed) * PROMPTS * SAMPLES
    return dict(regime=regime, steps=len(rows), wall_s=wall, tokens_per_step=tokens,
                tokens_per_s=tokens / mean["time/step_s"], **mean)  # fmt: skip


def summary(results: list[dict], device: str) -> str:
    lines = [
        f"RL steps on {device}: random-init Qwen2-0.5B-shaped trunk + 1 MTP head, bf16, sdpa, transformers "
        f"engine, {PROMPTS} prompts x {SAMPLES} samples, up to {MAX_NEW_TOKENS} new tokens; means over the steps "
        "after the first.",
        "",
        "| regime | generated tokens/s | step s | rollout + reward s | old log-probs s | update s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['regime']} | {r['tokens_per_s']:.0f} | {r['time/step_s']:.2f} | {r['time/rollout_and_reward_s']:.2f} "
            f"| {r['time/old_logprobs_s']:.2f} | {r['time/update_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="RL steps per regime (default: %(default)s)")
    parser.add_argument(
        "--regimes", nargs="+", default=["occ", "detach"], help="MTP regimes (default: occ detach)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rl-steps")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is warm-up)")
    reason = skip_reason()
    if reason:
        print(f"SKIPPED rl_steps: {reason}")
        return 0
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        results = [run_regime(r, args.steps, Path(tmp)) for r in args.regimes]
    text = summary(results, torch.cuda.get_device_name())
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "summary.md").write_text(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
