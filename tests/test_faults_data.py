"""Bad or awkward training data: dropped and counted, or one clear line before any model is built."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faults_helpers import arithmetic_rows, fast_args, file_data_args, write_jsonl
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
