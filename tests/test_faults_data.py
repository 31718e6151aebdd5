"""Bad or awkward training data: dropped and counted, or one clear line before any model is built."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faults_helpers import arithmetic_rows, fast_args, file_data_args, hf_model_dir, write_jsonl
from rich.console import Console

import occ_fast.training.setup as training_setup
from occ_fast.config import ConfigError, parse_config
from occ_fast.data import load_prompt_file
from occ_fast.train import main
from occ_fast.training.setup import setup


def test_max_prompt_tokens_drops_long_prompts_at_load_and_counts_them(tmp_path, caplog):
    long_prompt = " + ".join(["12"] * 300) + " ="
    rows = [*arithmetic_rows(3), {"prompt": long_prompt, "answer": "3600"}, *arithmetic_rows(2)]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    args = fast_args(tmp_path, "r", *file_data_args(data), "--data.max-prompt-tokens", "16")
    with caplog.at_level(logging.WARNING, logger="occ_fast"):
        run = setup(parse_config(args), Console(quiet=True))
    run.scorer.close()
    assert len(run.records) == 5
    assert all(r.prompt != long_prompt for r in run.records)
    warnings = [r.getMessage() for r in caplog.records if "max_prompt_tokens" in r.getMessage()]
    assert len(warnings) == 1 and "dropped 1 of 6" in warnings[0], warnings


def test_max_prompt_tokens_that_drops_every_prompt_is_a_config_error(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", arithmetic_rows(3))
    args = fast_args(tmp_path, "r", *file_data_args(data), "--data.max-prompt-tokens", "1")
    with pytest.raises(ConfigError, match=r"data.max_prompt_tokens=1 drops all 3 prompts"):
        setup(parse_config(args), Console(quiet=True))


def test_prompts_longer_than_the_models_context_are_dropped_without_max_prompt_tokens(tmp_path, caplog):
    """A 9,002-token prompt against the tiny model's 4,096 positions: kept, it made the run look hung."""
    long_prompt = "1" * 9002  # the tiny tokenizer splits digits: one token each
    rows = [*arithmetic_rows(3), {"prompt": long_prompt, "answer": "0"}, *arithmetic_rows(2)]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="occ_fast"):
        run = setup(parse_config(fast_args(tmp_path, "r", *file_data_args(data))), Console(quiet=True))
    run.scorer.close()
    assert len(run.records) == 5 and all(r.prompt != long_prompt for r in run.records)
    warnings = [r.getMessage() for r in caplog.records if "max_position_embeddings" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert (
        "max_position_embeddings 4096 - rollout.max_new_tokens 5 = 4091 prompt tokens: dropped 1 of 6 "
        "prompts (the longest had 9002 tokens)"
    ) in warnings[0], warnings


def test_a_model_context_that_leaves_no_room_for_a_prompt_is_an_error_naming_the_numbers(tmp_path):
    """The limit read from a model directory's config.json: 64 positions, all taken by new tokens."""
    model = hf_model_dir(tmp_path / "model", max_position_embeddings=64)
    data = write_jsonl(tmp_path / "data.jsonl", arithmetic_rows(3))
    args = fast_args(
        tmp_path, "r", *file_data_args(data), "--model.name-or-path", str(model),
        "--rollout.max-new-tokens", "64", "--optim.micro-batch-tokens", "128",
    )  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        setup(parse_config(args), Console(quiet=True))
    assert (
        "max_position_embeddings 64 - rollout.max_new_tokens 64 = 0 prompt tokens drops all 3 prompts"
    ) in str(caught.value), caught.value


GOOD = {"prompt": "12 + 30 =", "answer": "42"}


def parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("invalid-json", lambda p: write_jsonl(p / "d.jsonl", [GOOD, "{not json"]), "row 2: invalid JSON"),
        ("missing-field", lambda p: write_jsonl(p / "d.jsonl", [{"prompt": "1 + 1 ="}]), "field 'answer': missing"),
        ("empty-prompt", lambda p: write_jsonl(p / "d.jsonl", [{"prompt": " ", "answer": "1"}]), "empty prompt"),
        ("list-answer", lambda p: write_jsonl(p / "d.jsonl", [{"prompt": "1 + 1 =", "answer": [2]}]), "got list"),
        ("missing-file", lambda p: p / "nowhere.jsonl", "does not exist"),
        ("empty-file", lambda p: write_jsonl(p / "d.jsonl", []), "has no usable rows"),
        ("parquet-columns", lambda p: parquet(p / "d.parquet", [{"question": "1 + 1 =", "answer": "2"}]), "field 'prompt': missing"),
    ],
)  # fmt: skip
def test_malformed_training_data_is_one_line_before_any_model_is_built(
    tmp_path, capsys, monkeypatch, name, make, expected
):
    def must_not_build(*args, **kwargs):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(training_setup, "build_model", must_not_build)
    monkeypatch.setattr(training_setup, "build_tokenizer", must_not_build)
    path = make(tmp_path)
    assert main(fast_args(tmp_path, "r", *file_data_args(path))) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "error training data (data.path)" in err and str(path) in err and expected in err, err
    assert "Traceback" not in err


def test_utf8_bom_simply_loads(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert load_prompt_file(path, answer_field="answer").records[0].answer == "42"


def test_bytes_that_are_not_utf8_name_file_row_and_field(tmp_path, capsys):
    path = tmp_path / "latin1.jsonl"
    latin1 = '{"prompt": "caf\u00e9: 12 + 30 =", "answer": "42"}\n'.encode("latin-1")  # e-acute: 0xe9
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + latin1)
    assert main(fast_args(tmp_path, "r", *file_data_args(path))) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{path}, row 2, field 'prompt': not UTF-8: byte 0xe9 at character 4" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--data.digits", "1"], "data.train_problems "),
        (["--data.digits", "1", "--data.train-problems", "40", "--eval.every", "1"], "eval.num_problems "),
    ],
)
def test_a_synthetic_task_too_small_for_the_problems_asked_is_one_line_naming_the_field(
    tmp_path, capsys, flags, field
):
    """One-digit addition has a few dozen distinct problems a split: asking for more is bad input."""
    assert main(fast_args(tmp_path, "r", *flags)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if "cannot draw" in line)
    assert field in line and "digits=1" in line, err


def test_a_small_synthetic_task_trains_when_the_problems_fit(tmp_path):
    flags = [
        "--data.digits",
        "1",
        "--data.train-problems",
        "40",
        "--eval.num-problems",
        "5",
        "--train.steps",
        "1",
    ]
    assert main(fast_args(tmp_path, "r", *flags)) == 0
