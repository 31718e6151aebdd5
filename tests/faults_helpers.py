"""Shared pieces of the fault tests: the tiny fast flags, a file dataset, a trainer subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import background
import pytest
import warm_python

FAST = [
    "--model.tiny.hidden-size", "32",
    "--model.tiny.intermediate-size", "64",
    "--train.warmup-sft-steps", "2",
    "--data.prompts-per-step", "4",
    "--rollout.n", "4",
    "--rollout.max-new-tokens", "5",
    "--optim.lr", "1e-3",
    "--optim.mini-batches", "2",
    "--optim.micro-batch-tokens", "64",
    "--eval.every", "0",
    "--run.plot-every", "0",
]  # fmt: skip
SUBPROCESS_TIMEOUT_S = 120
TESTS_DIR = Path(__file__).resolve().parent


def fast_args(out: Path, name: str, *extra: str) -> list[str]:
    return [*FAST, "--run.output-dir", str(out), "--run.name", name, *extra]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def file_data_args(path: Path) -> list[str]:
    """File data for the tiny model: arithmetic prompts, answers under ``answer``, no warm-start."""
    return [
        "--data.source", "file",
        "--data.path", str(path),
        "--data.answer-field", "answer",
        "--train.warmup-sft-steps", "0",
    ]  # fmt: skip


def arithmetic_rows(count: int) -> list[dict]:
    return [{"prompt": f"{i} + {i + 1} =", "answer": str(2 * i + 1)} for i in range(10, 10 + count)]


def trainer_env(**extra: str) -> dict[str, str]:
    """A trainer subprocess's environment: single-process, and ``fault_rewards`` importable."""
    return warm_python.environ(background.environ(), **{"PYTHONUNBUFFERED": "1", "COLUMNS": "200", **extra})


class Trainer:
    """``python -m occ_fast.train ARGS`` in its own process group, its output collected as it comes;
    started from the session's warm interpreter (``tests/warm_python.py``) unless ``fresh``."""

    def __init__(self, args: list[str], *, fresh: bool = False, **env: str) -> None:
        python = [sys.executable] if fresh else warm_python.PYTHON
        self.proc = subprocess.Popen(
            [*python, "-m", "occ_fast.train", *args],
            env=trainer_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        background.track(self.proc)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, ready, what: str, timeout: float = SUBPROCESS_TIMEOUT_S) -> None:
        """Poll ``ready()`` until true; fail (killing the trainer) if it exits or the time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(
                    f"trainer never got to {what} (exit {self.proc.returncode}):\n{self.output[-6000:]}"
                )
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = SUBPROCESS_TIMEOUT_S) -> tuple[int, str]:
        """Wait for the exit; kill the whole process group and fail the test when it hangs."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"trainer hung for {timeout} s:\n{self.output[-6000:]}")
        self._reader.join(timeout=10)
        return self.proc.returncode, self.output

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def run_trainer(args: list[str], **env: str) -> tuple[int, str]:
    return Trainer(args, **env).finish()


def hf_model_dir(path: Path, *, max_position_embeddings: int = 64) -> Path:
    """A tiny random-init Qwen2 model directory as ``save_pretrained`` writes it: config.json,
    model.safetensors and an arithmetic tokenizer, no MTP weights (the run starts fresh heads)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from occ_fast.tokenizer import train_bpe_tokenizer

    corpus = [f"{i} + {i + 1} = {2 * i + 1}" for i in range(100)]
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=300, split_digits=True)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
