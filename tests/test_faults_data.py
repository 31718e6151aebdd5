"""Bad or awkward training data: dropped and counted, or one clear line before any model is built."""

from __future__ import annotations

import logging

import pytest
from faults_helpers import arithmetic_rows, fast_args, file_data_args, write_jsonl
from rich.console import Console

from occ_fast.config import ConfigError, parse_config
from occ_fast.train import setup


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
