"""The presets rehearsed as users run them: ``python -m occ_fast.train --preset NAME``, from the root.

A rehearsal keeps a preset's own settings except size and data: the model is a tiny one of the
preset's architecture and checkpoint format, built here offline, and the problems are the few in
``tests/data/rehearsal/`` (in the preset's data format, scored by its reward) or the preset's own
synthetic task. It runs 3 RL steps in two invocations: steps 0-1 with a checkpoint every step and an
evaluation at the end, then a second invocation that resumes the run (``--run.resume must``) for step 2
and evaluates again; after every step the checks the trainer's metrics carry must hold
(:func:`check_every_step`).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import background
import torch
import warm_python
from model_helpers import ENGINE_SIZES
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from occ_fast.model import MTPModel, save_mtp_model

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("tests/data/rehearsal")  # relative to the root, as a user would type it
TRAIN_FILE, HELDOUT_FILE = str(DATA / "dapo_train.parquet"), str(DATA / "dapo_heldout.parquet")
RUN_NAME = "rehearsal"

# Qwen2.5's and MiMo's chat format (ChatML); their tokenizers end an answer with <|im_end|>.
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# What MiMo-7B's config.json says of itself: its own model type, served by remote code.
MIMO_CONFIG = {
    "model_type": "mimo",
    "architectures": ["MiMoForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_mimo.MiMoConfig",
        "AutoModel": "modeling_mimo.MiMoModel",
        "AutoModelForCausalLM": "modeling_mimo.MiMoForCausalLM",
    },
}
LOGIT_SCALE = 0.25  # the final norm's weight: logits of a few units, so that sampling has choices
UNTIED_ORDINARY_SCALE = 0.1  # lm_head rows of tokens other than digits and the end token, untied


def chat_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (digits split, as Qwen's) trained on the rehearsal problems, with ChatML's
    special tokens and chat template: what ``load_tokenizer`` reads from a Qwen2.5 or MiMo directory."""
    import pyarrow.parquet as pq

    corpus = [
        message["content"]
        for name in (TRAIN_FILE, HELDOUT_FILE)
        for row in pq.read_table(ROOT / name).to_pylist()
        for message in row["prompt"]
    ]
    backend = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), byte_level]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus + ["user", "assistant", "system"], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=IM_END, pad_token=ENDOFTEXT, chat_template=CHATML
    )


@torch.no_grad()
def answer_with_one_digit(base: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast) -> None:
    """Give a random tiny model behaviour a reward can tell apart: after the chat prompt it samples
    one digit (all ten are drawn, 7 and 0 most often), then ends (``<|im_end|>``); any other token
    mostly repeats itself.
    Unit-scale embeddings dominate the residual stream (the random layers add little), and the last
    layer's MLP is a lookup whose neuron k fires on token u_k alone and moves the state from u_k's
    embedding to that of what should follow: the digits' mean after the prompt's last token, the end
    token after a digit. The logits read that state through the embedding (tied, or an untied copy
    whose rows of ordinary tokens are scaled down, so that their next token is uncertain)."""
    embed = base.model.embed_tokens.weight
    hidden = embed.shape[1]
    embed.copy_(torch.randn_like(embed))
    digits = tokenizer.convert_tokens_to_ids([str(d) for d in range(10)])
    generation_prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1"}], add_generation_prompt=True, tokenize=False
    )
    prompt_end = tokenizer(generation_prompt, add_special_tokens=False)["input_ids"][-1]
    rules = [(prompt_end, embed[digits].mean(0))] + [(d, embed[tokenizer.eos_token_id]) for d in digits]
    mlp = base.model.layers[-1].mlp
    for weight in (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight):
        weight.zero_()
    scale = 4.0 / hidden  # a matching neuron's gate is about 4, any other's about 4 / sqrt(hidden)
    for k, (token, target) in enumerate(rules):
        key = embed[token] / embed[token].pow(2).mean().sqrt()  # the state as the MLP's norm sees it
        mlp.gate_proj.weight[k] = mlp.up_proj.weight[k] = scale * key
        fired = torch.nn.functional.silu(scale * key @ key) * (scale * key @ key)
        mlp.down_proj.weight[:, k] = (target - embed[token]) / fired
    base.model.norm.weight.fill_(LOGIT_SCALE)
    if not base.config.tie_word_embeddings:
        base.lm_head.weight.copy_(embed * UNTIED_ORDINARY_SCALE)
        special = [*digits, tokenizer.eos_token_id]
        base.lm_head.weight[special] = embed[special]


def tiny_checkpoint(path: Path, checkpoint_format: str) -> Path:
    """A tiny model directory in a preset's checkpoint format, with its chat tokenizer:

    - ``qwen2.5``: Qwen2.5-1.5B-Instruct's, a Qwen2 model with tied embeddings and no MTP weights;
    - ``mimo``: MiMo-7B's, untied, with one MTP layer under ``model.mtp_layers.0`` and MiMo's own
      ``config.json`` (``model_type: mimo``, remote-code ``auto_map``). Its MTP layer, unlike a fresh
      one (``P = [I, 0]``), reads the next token's embedding as much as the trunk state (``P = [I, I]``).
    """
    tokenizer = chat_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        **ENGINE_SIZES,  # the engine tests' model sizes: vLLM's CPU kernels run it
        vocab_size=len(tokenizer),
        tie_word_embeddings=checkpoint_format == "qwen2.5",
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    base = Qwen2ForCausalLM(config)
    answer_with_one_digit(base, tokenizer)
    if checkpoint_format == "qwen2.5":
        base.save_pretrained(path)
        tokenizer.save_pretrained(path)
        return path
    model = MTPModel.from_base(base, 1, attn_implementation="sdpa")
    with torch.no_grad():
        hidden = config.hidden_size
        model.mtp[0].input_proj.weight.copy_(torch.cat([torch.eye(hidden), torch.eye(hidden)], dim=1))
        model.mtp[0].final_layernorm.weight.fill_(LOGIT_SCALE)
    save_mtp_model(model, path, tokenizer=tokenizer)
    config_file = path / "config.json"
    config_file.write_text(
        json.dumps({**json.loads(config_file.read_text()), **MIMO_CONFIG}, indent=2) + "\n"
    )
    return path


@dataclass
class Rehearsal:
    """What the two invocations left: the run directory, each step's metrics and their outputs."""

    run_dir: Path
    steps: list[dict]
    outputs: list[subprocess.CompletedProcess]


def train(args: list[str], environ: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m occ_fast.train ARGS`` from the repository root, which must exit 0 without a traceback
    (``environ``: the environment it starts from, by default this process's; one intra-op thread, so
    that it starts from the session's warm interpreter, ``tests/warm_python.py``)."""
    out = background.run(
        [*warm_python.PYTHON, "-m", "occ_fast.train", *args],
        cwd=ROOT,
        timeout=900,
        env=warm_python.environ(os.environ if environ is None else environ, COLUMNS="200"),
    )
    command = "python -m occ_fast.train " + " ".join(args)
    assert out.returncode == 0, f"{command}\nexit {out.returncode}\n{out.stderr[-4000:]}"
    log = out.stdout + out.stderr  # vLLM logs to standard output
    assert "Traceback" not in log, f"{command}\n{log[max(0, log.find('Traceback') - 500) :][:4000]}"
    # A question on the terminal (transformers' remote-code prompt) would hold a real run up.
    assert "[y/N]" not in log, f"{command}\n{out.stdout[-2000:]}"
    return out


def rehearse(
    preset: str, args: list[str], output_dir: Path, environ: dict[str, str] | None = None
) -> Rehearsal:
    """Steps 0-1 (a checkpoint after each, evaluation after step 1), then a second invocation that
    resumes the run from its last checkpoint for step 2 (evaluation after it); ``environ`` as for :func:`train`."""
    common = [
        "--preset", preset, *args,
        "--run.output-dir", str(output_dir), "--run.name", RUN_NAME,
        "--run.save-every", "1", "--eval.every", "2",
    ]  # fmt: skip
    first = train([*common, "--train.steps", "2"], environ)
    second = train([*common, "--train.steps", "3", "--run.resume", "must"], environ)
    run_dir = output_dir / RUN_NAME
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps] == [0, 1, 2], "each step once, the resumed one after the others"
    assert "resumed from" in second.stderr and "continuing at step 2" in second.stderr, second.stderr[-2000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "step_000000002"
    for step in (1, 2):
        assert {"eval/avg_at_k", "eval/pass_at_k"} <= set(steps[step]), f"no evaluation after step {step}"
    assert (run_dir / "model" / "config.json").is_file()
    return Rehearsal(run_dir, steps, [first, second])


def check_every_step(steps: list[dict], *, mismatch_max: float, probe_max: float | None) -> None:
    """What must hold after every step: no NaN or infinite rollout log-probs, the rollout/trainer
    mismatch finite and at the engine precision's level (``mismatch_max`` bounds
    ``mismatch/abs_diff_max``), no reward failures, and the sync probe's reading below ``probe_max``
    (None: the engine has no probe, as the transformers engine samples from the trainer's weights)."""
    for m in steps:
        step = m["step"]
        assert m["rollout/nonfinite_logprobs"] == 0, step
        mismatch = {k: v for k, v in m.items() if k.startswith("mismatch/")}
        assert {"mismatch/abs_diff_mean", "mismatch/abs_diff_max", "mismatch/kl_k3"} <= set(mismatch), step
        assert all(v is not None and math.isfinite(v) for v in mismatch.values()), (step, mismatch)
        assert 0 <= m["mismatch/abs_diff_max"] < mismatch_max, (step, mismatch)
        assert m["reward/errors"] == m["reward/timeouts"] == 0, step
        if probe_max is None:
            assert "rollout/sync_logprob_diff" not in m, step
        else:
            assert 0 <= m["rollout/sync_logprob_diff"] < probe_max, (step, m["rollout/sync_logprob_diff"])
