"""python -m occ_fast.eval on a tiny trained run: metrics, output files, determinism, input errors."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import warm_python

from occ_fast.config import parse_config
from occ_fast.data import ArithmeticTask
from occ_fast.eval import EvalError, main, parse_args, run_eval
from occ_fast.rewards import arithmetic_reward
from occ_fast.train import train

TINY_RUN = [
    "--model.tiny.hidden-size", "32",
    "--model.tiny.intermediate-size", "64",
    "--data.prompts-per-step", "2",
    "--rollout.n", "2",
    "--rollout.max-new-tokens", "4",
    "--train.steps", "1",
    "--train.warmup-sft-steps", "0",
    "--eval.every", "0",
]  # fmt: skip
NESTED = ["--prompt-field", "question", "--answer-field", "reward_model.ground_truth"]
FAST = ["--max-new-tokens", "6", "--reward-workers", "0"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished one-step training run: its model/ is what eval must load."""
    cfg = parse_config(
        [*TINY_RUN, "--run.output-dir", str(tmp_path_factory.mktemp("runs")), "--run.name", "r"]
    )
    train(cfg)
    return cfg.run_dir


def problems(n: int, seed: int) -> list[tuple[str, str]]:
    return [(r.prompt, r.answer) for r in ArithmeticTask(digits=2, ops=("+",)).sample("eval", n, seed=seed)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def nested_rows(n: int, seed: int) -> list[dict]:
    return [{"question": p, "reward_model": {"ground_truth": a}} for p, a in problems(n, seed)]


def read_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_problem(samples: list[dict]) -> dict[str, list[float]]:
    groups = defaultdict(list)
    for s in samples:
        groups[s["problem"]].append(s["reward"])
    return groups


def test_two_benchmarks_jsonl_and_parquet(run_dir, tmp_path, capsys):
    jsonl = write_jsonl(tmp_path / "add.jsonl", nested_rows(3, seed=1))
    parquet = tmp_path / "more.parquet"
    pq.write_table(pa.Table.from_pylist(nested_rows(4, seed=2)), parquet)
    out = tmp_path / "out"
    argv = ["--model", str(run_dir), "--benchmarks", str(jsonl), f"extra={parquet}", *NESTED, *FAST]
    assert main([*argv, "--k", "2", "--reward", "arithmetic", "--output", str(out)]) == 0

    results = json.loads((out / "results.json").read_text())
    assert results["model"] == str(run_dir / "model")
    assert results["config"]["temperature"] == 1.0  # the documented default for k > 1
    bench = results["benchmarks"]
    assert list(bench) == ["add", "extra"]
    assert [bench[n]["num_problems"] for n in bench] == [3, 4]
    for m in bench.values():
        assert m["k"] == 2
        assert 0.0 <= m["avg_at_k"] <= 1.0 and 0.0 <= m["pass_at_k"] <= 1.0
        samples = read_samples(out / m["samples_file"])
        assert len(samples) == m["num_problems"] * 2
        for s in samples:
            assert s["reward"] == arithmetic_reward(s["completion"], s["answer"])
            assert s["finish_reason"] in ("eos", "length")
        groups = by_problem(samples)
        assert all(sorted(s["sample"] for s in samples if s["problem"] == p) == [0, 1] for p in groups)
        assert m["avg_at_k"] == pytest.approx(sum(s["reward"] for s in samples) / len(samples))
        all_correct = sum(all(r > 0 for r in rs) for rs in groups.values()) / len(groups)
        assert m["pass_at_k"] >= all_correct
        assert m["num_truncated"] == sum(s["finish_reason"] == "length" for s in samples)
    assert samples[0]["problem"] == f"{parquet}, row 1"
    for metric in ("avg_at_k", "pass_at_k"):
        assert results["average"][metric] == pytest.approx(
            (bench["add"][metric] + bench["extra"][metric]) / 2
        )
    table = capsys.readouterr().out
    rows = {line.split()[1]: line for line in table.splitlines() if line.startswith("│")}
    assert {"add", "extra", "average"} <= rows.keys()
    assert f"{results['average']['avg_at_k']:.4f}" in rows["average"]


def test_avg_and_pass_aggregate_mixed_rewards(run_dir, tmp_path, monkeypatch):
    """A reward that is 1 for odd-length completions gives a mix of 0 and 1, so both metrics are tested."""
    (tmp_path / "parity_reward.py").write_text(
        "def parity(completion, answer):\n    return float(len(completion) % 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    bench = write_jsonl(tmp_path / "b.jsonl", nested_rows(6, seed=3))
    args = ["--model", str(run_dir / "model"), "--benchmarks", str(bench), *NESTED, *FAST]
    results = run_eval(
        parse_args([*args, "--k", "4", "--reward", "parity_reward:parity", "--output", str(tmp_path / "o")])
    )
    m = results["benchmarks"]["b"]
    samples = read_samples(tmp_path / "o" / "samples_b.jsonl")
    rewards = [s["reward"] for s in samples]
    assert rewards == [float(len(s["completion"]) % 2) for s in samples]
    assert 0 < sum(rewards) < len(rewards), "the test needs both outcomes"
    groups = by_problem(samples)
    assert m["avg_at_k"] == pytest.approx(sum(rewards) / len(rewards))
    assert m["pass_at_k"] == pytest.approx(sum(any(rs) for rs in groups.values()) / len(groups))
    assert results["average"]["avg_at_k"] == pytest.approx(m["avg_at_k"])


def test_greedy_is_deterministic_and_max_problems_caps(run_dir, tmp_path):
    flat = write_jsonl(tmp_path / "flat.jsonl", [{"prompt": p, "answer": a} for p, a in problems(5, seed=4)])
    common = [
        "--model",
        str(run_dir),
        "--benchmarks",
        str(flat),
        "--max-problems",
        "3",
        "--reward",
        "arithmetic",
    ]
    first = run_eval(parse_args([*common, *FAST, "--output", str(tmp_path / "a")]))
    second = run_eval(parse_args([*common, *FAST, "--output", str(tmp_path / "b")]))
    assert first["config"]["temperature"] == 0.0 and first["config"]["k"] == 1
    assert first["benchmarks"]["flat"]["num_problems"] == 3
    samples = (tmp_path / "a" / "samples_flat.jsonl").read_text()
    assert samples == (tmp_path / "b" / "samples_flat.jsonl").read_text()
    assert len(samples.splitlines()) == 3
    drop_time = [{k: v for k, v in r["benchmarks"]["flat"].items() if k != "time_s"} for r in (first, second)]
    assert drop_time[0] == drop_time[1]


def test_default_output_goes_into_the_run_directory(run_dir, tmp_path):
    bench = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "1 + 2 =", "answer": "3"}])
    args = parse_args(["--model", str(run_dir), "--benchmarks", str(bench), "--reward", "arithmetic", *FAST])
    first, second = run_eval(args), run_eval(args)
    for results in (first, second):
        out = Path(results["config"]["output"])
        assert out.parent == run_dir and out.name.startswith("eval-")
        assert (out / "results.json").is_file()
    assert first["config"]["output"] != second["config"]["output"]  # never overwrites an earlier evaluation


def eval_args(run_dir: Path, *extra: str) -> list[str]:
    return ["--model", str(run_dir), "--reward", "arithmetic", *FAST, *extra]


def test_missing_benchmark_file_is_named(run_dir, tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(EvalError, match=rf"benchmark 'nope': file {missing} does not exist"):
        run_eval(parse_args(eval_args(run_dir, "--benchmarks", str(missing))))


def test_malformed_row_is_named_or_skipped(run_dir, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "1 + 2 =", "answer": "3"}, {"prompt": "2 + 2 ="}])
    with pytest.raises(EvalError, match=rf"{bad}, row 2, field 'answer': missing"):
        run_eval(parse_args(eval_args(run_dir, "--benchmarks", str(bad))))
    out = tmp_path / "skip"
    results = run_eval(
        parse_args(eval_args(run_dir, "--benchmarks", str(bad), "--on-error", "skip", "--output", str(out)))
    )
    assert results["benchmarks"]["bad"]["num_skipped_rows"] == 1
    assert results["benchmarks"]["bad"]["num_problems"] == 1


def test_file_without_usable_rows_is_an_error(run_dir, tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"prompt": "1 + 2 ="}])
    with pytest.raises(EvalError, match=rf"{empty} has no usable rows"):
        run_eval(parse_args(eval_args(run_dir, "--benchmarks", str(empty), "--on-error", "skip")))


def test_model_directory_errors(run_dir, tmp_path):
    bench = str(write_jsonl(tmp_path / "b.jsonl", [{"prompt": "1 + 2 =", "answer": "3"}]))
    with pytest.raises(EvalError, match="no such directory"):
        run_eval(parse_args(["--model", str(tmp_path / "absent"), "--benchmarks", bench]))
    with pytest.raises(EvalError, match="no config.json"):
        run_eval(parse_args(["--model", str(tmp_path), "--benchmarks", bench]))
    hollow = tmp_path / "hollow"
    hollow.mkdir()
    (hollow / "config.json").write_text((run_dir / "model" / "config.json").read_text())
    with pytest.raises(EvalError, match="holds no weights"):
        run_eval(parse_args(["--model", str(hollow), "--benchmarks", bench]))


def test_bad_flags_are_listed_together(run_dir, tmp_path):
    bench = str(write_jsonl(tmp_path / "b.jsonl", [{"prompt": "1 + 2 =", "answer": "3"}]))
    args = ["--model", str(run_dir), "--benchmarks", bench, "--k", "2", "--temperature", "0", "--top-p", "0"]
    with pytest.raises(EvalError, match=r"(?s)same greedy completion 2 times.*--top-p must be in \(0, 1\]"):
        run_eval(parse_args(args))
    with pytest.raises(EvalError, match="b appear more than once"):
        run_eval(parse_args(eval_args(run_dir, "--benchmarks", bench, f"b={bench}")))
    with pytest.raises(EvalError, match="'no such' must be letters"):
        run_eval(parse_args(eval_args(run_dir, "--benchmarks", f"no such={bench}")))
    with pytest.raises(EvalError, match="--reward: reward function 'nowhere:fn'"):
        run_eval(parse_args(["--model", str(run_dir), "--benchmarks", bench, "--reward", "nowhere:fn"]))


def test_vllm_engine_without_vllm_says_what_to_install(run_dir, tmp_path):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed")
    bench = str(write_jsonl(tmp_path / "b.jsonl", [{"prompt": "1 + 2 =", "answer": "3"}]))
    with pytest.raises(EvalError, match=r"--engine vllm: .*pip install 'occ-fast\[vllm\]'"):
        run_eval(parse_args(eval_args(run_dir, "--benchmarks", bench, "--engine", "vllm")))


def test_main_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--benchmarks", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "x.jsonl does not exist" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--benchmarks", "missing.jsonl"], "missing.jsonl does not exist"),  # bad input
        (["--benchmarks", "b.jsonl", "--k", "0"], "--k must be >= 1"),  # a bad value
        (["--benchmarks", "b.jsonl", "--kk", "2"], "--kk"),  # a misspelt flag
    ],
)
def test_bad_input_exits_2_as_training_does(tmp_path, flags, says):
    """The exit status of ``python -m occ_fast.train`` for a user's error (1 is a run that stops itself)."""
    done = subprocess.run(
        [*warm_python.PYTHON, "-m", "occ_fast.eval", "--model", str(tmp_path), *flags],
        cwd=tmp_path,
        env=warm_python.environ(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert says in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]


def test_help_exits_zero():
    done = subprocess.run(
        [*warm_python.PYTHON, "-m", "occ_fast.eval", "--help"],
        env=warm_python.environ(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for flag in ("--model", "--benchmarks", "--answer-field", "--k", "--temperature", "--engine"):
        assert flag in done.stdout


def test_the_results_table_keeps_every_figure_whole_in_an_80_column_terminal():
    """A piped run prints at 80 columns: long benchmark names fold, figures are never cut."""
    from rich.console import Console

    from occ_fast.eval import results_table

    metrics = {
        "num_problems": 32,
        "k": 4,
        "avg_at_k": 0.34375,
        "pass_at_k": 0.71875,
        "num_truncated": 1,
        "num_timeouts": 0,
        "num_errors": 0,
    }
    results = {
        "model": "runs/20261205-201150-tiny/model",
        "config": {"k": 4, "temperature": 1.0},
        "benchmarks": {"addition_heldout_with_a_long_name": metrics},
        "average": {"avg_at_k": 0.34375, "pass_at_k": 0.71875, "num_benchmarks": 1},
    }
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(results_table(results))
    text = console.export_text()
    assert "…" not in text, text
    for figure in ("0.3438", "0.7188", "1/128", "avg@4", "pass@4", "time-outs", "errors"):
        assert figure in text, text
    assert max(len(line) for line in text.splitlines()) <= 80
