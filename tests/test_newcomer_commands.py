"""The commands the docs give a newcomer (own prompts, evaluation, own reward), run as quoted.

Each runs in a subprocess from the repository root, where a user stands after cloning, and writes
under ``./runs`` as a user's run does; the test removes what it wrote. The constants below are the
exact strings the docs quote (``runs/NAME`` is the run directory a command before it wrote: the
README's default command, ``tests/default_run.py``). The commands run one at a time, as background
jobs at the head of the queue (``tests/background.py``); each test asserts on its command's result.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import background
import pytest
import yaml
from default_run import default_run

from occ_fast.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parent.parent
TRAIN_SAMPLE = "occ_fast/data/samples/addition_train.jsonl"
HELDOUT_SAMPLE = "occ_fast/data/samples/addition_heldout.jsonl"
REWARD_SPEC = "occ_fast.rewards.examples.partial_credit:reward"

OWN_PROMPTS_COMMAND = (
    f"python -m occ_fast.train --data.source file --data.path {TRAIN_SAMPLE} "
    f"--eval.path {HELDOUT_SAMPLE} --train.steps 2"
)
OWN_MODEL_COMMAND = (
    "python -m occ_fast.train --model.name-or-path runs/NAME/model --model.mtp-init auto "
    f"--train.warmup-sft-steps 0 --data.source file --data.path {TRAIN_SAMPLE} "
    f"--eval.path {HELDOUT_SAMPLE} --train.steps 2"
)
EVAL_COMMAND = (
    f"python -m occ_fast.eval --model runs/NAME --benchmarks {HELDOUT_SAMPLE} "
    "--reward arithmetic --k 4 --max-new-tokens 8"
)
REWARD_COMMAND = f"python -m occ_fast.train --reward.fn {REWARD_SPEC} --train.steps 2"


class Runs:
    """Runs commands from the root, one at a time (a command's run directory is the one that appears
    under ./runs while it runs; nothing else may add one meanwhile), and remembers the run
    directories they create."""

    def __init__(self) -> None:
        self.parent = ROOT / "runs"
        self.parent_existed = self.parent.exists()
        self.created: list[Path] = []
        self.one_at_a_time = threading.Lock()

    def run(self, command: str, name: str | None = None) -> tuple[subprocess.CompletedProcess, Path | None]:
        """Run ``command`` (``NAME`` replaced by ``name``); return its result and the run directory it made."""
        argv = shlex.split(command.replace("NAME", name) if name else command)
        assert argv[0] == "python"
        env = {**background.ENV, "COLUMNS": "200"}  # rich's table keeps whole benchmark names
        with self.one_at_a_time:
            before = set(self.parent.iterdir()) if self.parent.is_dir() else set()
            out = background.run([sys.executable, *argv[1:]], cwd=ROOT, timeout=600, env=env)
            new = sorted(set(self.parent.iterdir()) - before) if self.parent.is_dir() else []
            self.created += new
        assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"
        assert "Traceback" not in out.stderr, out.stderr[-3000:]
        assert len(new) <= 1, new
        return out, (new[0] if new else None)

    def clean(self) -> None:
        while self.created:
            shutil.rmtree(self.created.pop(), ignore_errors=True)
        if not self.parent_existed and self.parent.is_dir() and not any(self.parent.iterdir()):
            self.parent.rmdir()


RUNS = Runs()
background.at_stop(RUNS.clean)  # also when the session ends before this module's tests


@pytest.fixture(scope="module", autouse=True)
def runs():
    yield RUNS
    RUNS.clean()


def default_run_in_root(directory: Path) -> Path:
    """The README's default run, where it would be had it run from the root: its model/ is what a
    default run writes."""
    _, source = background.result(default_run)
    assert (source / "model" / "config.json").is_file()
    with RUNS.one_at_a_time:  # not while a command's run directory is being told apart
        run_dir = RUNS.parent / source.name
        assert not run_dir.exists(), run_dir
        shutil.copytree(source, run_dir)
        RUNS.created.append(run_dir)
    return run_dir


def own_prompts_run(directory: Path):
    return RUNS.run(OWN_PROMPTS_COMMAND)


def own_model_run(directory: Path):
    return RUNS.run(OWN_MODEL_COMMAND, name=background.result(default_run_in_root).name)


def eval_run(directory: Path):
    return RUNS.run(EVAL_COMMAND, name=background.result(default_run_in_root).name)


def reward_run(directory: Path):
    return RUNS.run(REWARD_COMMAND)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_shipped_samples_are_what_their_script_writes():
    script = ROOT / "occ_fast/data/samples/make_samples.py"
    spec = importlib.util.spec_from_file_location("make_samples", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, (split, n, seed) in module.SAMPLES.items():
        shipped = (script.parent / name).read_text(encoding="utf-8")
        assert shipped == module.sample_text(split, n, seed), name
        rows = [json.loads(line) for line in shipped.splitlines()]
        assert len(rows) == n and all(set(r) == {"prompt", "answer"} for r in rows)


def test_warm_start_with_file_data_is_for_the_tiny_model_only():
    """The tiny model's warm start teaches the synthetic task, also under file data; a real model's
    file run keeps the refusal (a warm start would teach it arithmetic, not the file)."""
    file_data = ["--data.source", "file", "--data.path", TRAIN_SAMPLE, "--eval.every", "0"]
    assert parse_config(file_data).train.warmup_sft_steps > 0
    with pytest.raises(ConfigError, match="needs data.source='synthetic' or the tiny model"):
        parse_config([*file_data, "--model.name-or-path", "some/model"])


@pytest.mark.background(job=own_prompts_run, early=True)
def test_own_prompts_command_trains_on_the_file_and_earns_reward():
    _, run_dir = background.result(own_prompts_run)
    cfg = config(run_dir)
    assert cfg["data"]["source"] == "file" and cfg["data"]["path"] == TRAIN_SAMPLE
    steps = metrics(run_dir)
    assert len(steps) == 2
    assert any(m["reward/mean"] > 0 for m in steps), steps  # the warm start makes some rollouts right
    assert "eval/avg_at_k" in steps[-1]  # held out on eval.path, at the end
    assert (run_dir / "model" / "model.safetensors").is_file()


@pytest.mark.background(job=own_model_run, early=True)
def test_own_prompts_from_a_trained_model_needs_no_warm_start():
    _, run_dir = background.result(own_model_run)
    trained = background.result(default_run_in_root)
    cfg = config(run_dir)
    assert cfg["model"]["name_or_path"] == f"runs/{trained.name}/model"
    assert cfg["train"]["warmup_sft_steps"] == 0
    assert any(m["reward/mean"] > 0 for m in metrics(run_dir))


@pytest.mark.background(job=eval_run, early=True)
def test_eval_command_scores_the_sample_on_a_default_runs_model():
    out, _ = background.result(eval_run)
    trained = background.result(default_run_in_root)
    (eval_dir,) = trained.glob("eval-*")  # the default output: inside the run directory
    results = json.loads((eval_dir / "results.json").read_text())
    bench = results["benchmarks"]["addition_heldout"]
    assert bench["num_problems"] == 32 and bench["k"] == 4
    assert bench["num_errors"] == bench["num_timeouts"] == 0
    samples = [json.loads(line) for line in (eval_dir / bench["samples_file"]).read_text().splitlines()]
    assert len(samples) == 32 * 4
    # the model may run out of tokens on a problem: counted as truncated, never as a score of its own
    assert bench["num_truncated"] == sum(s["finish_reason"] == "length" for s in samples)
    assert {"problem", "sample", "completion", "answer", "reward", "finish_reason"} <= set(samples[0])
    assert bench["avg_at_k"] == pytest.approx(sum(s["reward"] for s in samples) / len(samples))
    assert 0 < bench["avg_at_k"] <= bench["pass_at_k"] <= 1
    assert results["average"]["avg_at_k"] == bench["avg_at_k"]
    for heading in ("avg@4", "pass@4", "addition_heldout", "average"):
        assert heading in out.stdout, out.stdout
    assert "results.json" in out.stderr


def test_eval_help_gives_the_same_example():
    from occ_fast.eval import DESCRIPTION

    assert EVAL_COMMAND in " ".join(DESCRIPTION.split())


def test_example_reward_function():
    from occ_fast.rewards.examples.partial_credit import reward

    assert [reward(c, "73") for c in (" 73", " 72", " 173", " 9", " +")] == [1, 1 / 2, 2 / 3, 0, 0]


@pytest.mark.background(job=reward_run, early=True)
def test_reward_command_uses_the_users_function():
    _, run_dir = background.result(reward_run)
    assert config(run_dir)["reward"]["fn"] == REWARD_SPEC
    steps = metrics(run_dir)
    assert all(m["reward/errors"] == m["reward/timeouts"] == 0 for m in steps)
    # accuracy is the share of samples rewarded above 0; only partial credit makes the mean fall below
    # it: the built-in 0/1 reward would give mean == accuracy
    assert any(0 < m["reward/mean"] < m["reward/accuracy"] for m in steps), steps


@pytest.mark.parametrize(
    ("page", "command"),
    [
        ("occ_fast/config/README.md", OWN_PROMPTS_COMMAND),
        ("occ_fast/config/README.md", OWN_MODEL_COMMAND),
        ("occ_fast/rewards/README.md", EVAL_COMMAND),
        ("occ_fast/rewards/README.md", REWARD_COMMAND),
    ],
)
def test_the_docs_quote_the_commands_these_tests_run(page, command):
    assert command in (ROOT / page).read_text(), f"{page} no longer quotes: {command}"
