"""Figures of the trainer on vLLM's CPU build: whole runs beside the transformers engine, the engine's
start-up with its CPU defaults, both sync probes, and what MTP drafts buy.

    tests/vllm_env.sh && .vllm-venv/bin/python benchmarks/vllm_train.py

Writes benchmarks/results/vllm-cpu-train/results.json and the rollouts page's snippet summary.md. Four parts, each measured here:

- runs: ``python -m occ_fast.train`` on the same settings with the transformers engine, vLLM in fp32
  (``rollout.dtype`` auto: the fp32 trainer's) and vLLM in bf16; per-stage step times, the trunk probe
  and the rollout/trainer mismatch;
- start-up: ``import vllm``, the first engine in a process and a second one, with the CPU defaults
  (eager, 1 GiB KV cache);
- acceptance per step: a model whose weights move every step (noise, as an update would), synced into
  an fp32 engine drafting with its MTP head; after each sync, vLLM's greedy acceptance on fixed prompts
  against the trainer's forecast, and the drafter probe;
- drafts: greedy rollout tokens per second with and without MTP drafts on the same prompts, two engines
  in one process, a 4-layer model (the one-layer drafter is cheap beside the trunk).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "vllm-cpu-train"
STEPS = 4
RUN_ARGS = [
    "--model.tiny.num-heads", "2",
    "--train.steps", str(STEPS),
    "--train.warmup-sft-steps", "20",
    "--data.prompts-per-step", "8",
    "--rollout.n", "4",
    "--eval.every", "0",
    "--run.plot-every", "0",
]  # fmt: skip
RUNS = {
    "transformers": ["--rollout.engine", "transformers"],
    "vllm_fp32": ["--rollout.engine", "vllm"],
    "vllm_bf16": ["--rollout.engine", "vllm", "--rollout.dtype", "bfloat16"],
}
STAGES = ("time/rollout_and_reward_s", "time/old_logprobs_s", "time/update_s", "time/step_s")
# A Qwen2 with real signal for the drafter (as tests/test_rollout_vllm_real.py builds it), 4 layers.
MODEL = dict(
    vocab_size=512,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)
PROMPTS = [[(p * 37 + 13 * i + 1) % 512 for i in range(3 + p % 5)] for p in range(16)]


def train_run(name: str, extra: list[str], where: Path) -> dict:
    """One ``python -m occ_fast.train`` run: its wall time, and the means over steps 1.. (step 0 pays
    one-off warm-up) of its stage times, probe and mismatch."""
    from occ_fast.monitoring.metrics import METRICS_FILE, read_metrics

    argv = [*RUN_ARGS, *extra, "--run.output-dir", str(where), "--run.name", name]
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "occ_fast.train", *argv], cwd=where, check=True, capture_output=True
    )
    wall = time.perf_counter() - start
    rows = read_metrics(where / name / METRICS_FILE)[1:]
    out = {"wall_s": wall, **{key: statistics.mean(r[key] for r in rows) for key in STAGES}}
    out["time/sync_and_rest_s"] = out["time/step_s"] - sum(out[k] for k in STAGES[:3])
    for key in ("rollout/sync_logprob_diff", "mismatch/abs_diff_max", "mismatch/abs_diff_mean"):
        if key in rows[0]:
            out[key] = (
                max(r[key] for r in rows) if key.endswith("max") else statistics.mean(r[key] for r in rows)
            )
    return out


def signal_model(seed: int):
    """Unit-scale embeddings dominate the residual stream; lm_head maps token u to perm(u); the MTP
    head mixes trunk state and embedding equally, so its argmax is right about half the time."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from occ_fast.model import MTPModel

    torch.manual_seed(seed)
    base = Qwen2ForCausalLM(Qwen2Config(**MODEL, tie_word_embeddings=False))
    model = MTPModel.from_base(base, 1, attn_implementation="sdpa", naming="mimo")
    vocab, hidden = MODEL["vocab_size"], MODEL["hidden_size"]
    with torch.no_grad():
        embed = torch.randn(vocab, hidden)
        spread = 0.3 + 2.0 * torch.rand(hidden)
        base.model.embed_tokens.weight.copy_(embed)
        base.model.norm.weight.copy_(spread)
        base.lm_head.weight[torch.randperm(vocab)] = embed / spread * 0.03
        for layer in model.mtp:
            layer.input_proj.weight.copy_(torch.cat([torch.eye(hidden), torch.eye(hidden)], dim=1))
            layer.final_layernorm.weight.copy_(spread)
    return model.eval()


def forecast_n1(model, results) -> float:
    """The trainer's ``spec/forecast_acceptance_rate_n1`` on these completions."""
    from occ_fast.monitoring.spec_forecast import draft_counts, forecast
    from occ_fast.policy.batching import Sample, make_micro_batches
    from occ_fast.policy.forward import policy_logprobs

    samples = [Sample(r.prompt_token_ids, r.token_ids, r.logprobs, 0.0) for r in results]
    (micro,) = make_micro_batches(samples, token_budget=10**9, batch_size=len(samples))
    with torch.no_grad():
        out = policy_logprobs(model, micro, temperature=1.0)
    return forecast(draft_counts(out))["spec/forecast_acceptance_rate_n1"]


def engine_parts(where: Path) -> dict:
    """Start-up, acceptance per step and the drafts' speed-up, in this process."""
    from occ_fast.model import save_mtp_model
    from occ_fast.rollout.base import SamplingParams
    from occ_fast.rollout.vllm_engine import VLLMEngine

    model = signal_model(0)
    save_mtp_model(model, where / "mimo")
    timed = {}
    for name, speculative in (("mtp", "mtp"), ("plain", "none")):
        start = time.perf_counter()
        timed[name] = VLLMEngine(where / "mimo", dtype="float32", max_model_len=1024, speculative=speculative)
        timed[f"{name}_s"] = time.perf_counter() - start
    drafts, plain = timed["mtp"], timed["plain"]
    greedy = SamplingParams(max_new_tokens=96, temperature=0.0)
    rates, tokens = {"mtp": [], "plain": []}, {}
    for _ in range(3):  # alternating, so that a busy machine slows both alike
        for name, engine in (("plain", plain), ("mtp", drafts)):
            start = time.perf_counter()
            results = engine.generate(PROMPTS, greedy)
            rates[name].append(sum(len(r.token_ids) for r in results) / (time.perf_counter() - start))
            tokens[name] = [r.token_ids for r in results]
    speed = {
        "tokens_per_s_plain": statistics.median(rates["plain"]),
        "tokens_per_s_mtp": statistics.median(rates["mtp"]),
        "acceptance": drafts.last_spec_stats["acceptance_rate"],
        "same_tokens": tokens["mtp"] == tokens["plain"],
    }
    speed["ratio"] = speed["tokens_per_s_mtp"] / speed["tokens_per_s_plain"]
    per_step = []
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        with torch.no_grad():  # an update's worth of movement in every weight
            for p in model.parameters():
                p.add_(0.05 * p.std() * torch.randn(p.shape, generator=gen))
        drafts.sync_weights(model)
        results = drafts.generate(PROMPTS, SamplingParams(max_new_tokens=48, temperature=0.0))
        per_step.append(
            {
                "step": step,
                "measured": drafts.last_spec_stats["acceptance_rate"],
                "forecast": forecast_n1(model, results),
                "probe_trunk": drafts.last_sync_logprob_diff,
                "probe_drafter_measured": drafts.last_drafter_probe["measured"],
                "probe_drafter_replayed": drafts.last_drafter_probe["replayed"],
            }
        )
    return {
        "startup": {
            "first_engine_s": timed["mtp_s"],
            "second_engine_s": timed["plain_s"],
        },
        "drafts": speed,
        "acceptance_per_step": per_step,
    }


def render(data: dict) -> str:
    runs, start, speed = data["runs"], data["startup"], data["drafts"]
    lines = [
        f"Measured with vLLM {data['environment']['vllm']} (CPU build) on {data['environment']['cpus']} "
        f"CPU cores (5-minute load average {data['environment']['load_average'][0]:.1f} at the start, "
        f"{data['environment']['load_average'][1]:.1f} at the end: timings are only as steady as the "
        f"machine) by `benchmarks/vllm_train.py`: the tiny preset (head_dim 32), {STEPS} RL steps of 8 "
        "prompts x 4 samples, 8 new tokens; means over steps 1-3.",
        "",
        "| figure | transformers | vLLM fp32 | vLLM bf16 |",
        "|---|---|---|---|",
    ]
    names = ("transformers", "vllm_fp32", "vllm_bf16")
    for key in (*STAGES[:3], "time/sync_and_rest_s", "time/step_s", "wall_s"):
        lines.append(f"| {key} | " + " | ".join(f"{runs[n][key]:.2f}" for n in names) + " |")
    for key in ("rollout/sync_logprob_diff", "mismatch/abs_diff_mean", "mismatch/abs_diff_max"):
        cells = " | ".join(f"{runs[n][key]:.1e}" if key in runs[n] else "-" for n in names)
        lines.append(f"| {key} | {cells} |")
    lines += [
        "",
        f"Engine start-up with the CPU defaults (eager, 1 GiB KV cache): `import vllm` "
        f"{start['import_vllm_s']:.1f} s, then the first engine in the process (MTP drafter, one-off "
        f"initialisation) {start['first_engine_s']:.1f} s, a second {start['second_engine_s']:.1f} s.",
        "",
        f"Greedy rollouts, 16 prompts x 96 tokens, 4-layer model (hidden 256): {speed['tokens_per_s_plain']:.0f} "
        f"tokens/s plain, {speed['tokens_per_s_mtp']:.0f} with MTP drafts (acceptance {speed['acceptance']:.2f}): "
        f"ratio **{speed['ratio']:.2f}**, same tokens: {speed['same_tokens']}.",
        "",
        "| step | vLLM acceptance | trainer forecast | trunk probe | drafter probe (vLLM / replay) |",
        "|---|---|---|---|---|",
    ]
    for row in data["acceptance_per_step"]:
        lines.append(
            f"| {row['step']} | {row['measured']:.4f} | {row['forecast']:.4f} | {row['probe_trunk']:.1e} | "
            f"{row['probe_drafter_measured']:.4f} / {row['probe_drafter_replayed']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    load = os.getloadavg()[1]
    start = time.perf_counter()
    import vllm

    imports = time.perf_counter() - start

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        data = {"runs": {name: train_run(name, extra, where) for name, extra in RUNS.items()}}
        data |= engine_parts(where)
    data["startup"]["import_vllm_s"] = imports
    data["environment"] = {
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_average": [load, os.getloadavg()[1]],  # 5-minute, at the start and the end: others' work
    }
    (OUT / "results.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (OUT / "summary.md").write_text(render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
