"""A ``--model.name-or-path`` that cannot be used: a Hub id (nothing is ever downloaded), a data
directory, a directory whose only weights are a pickle that would run code. One line naming the
path and what it lacks, exit status 2, before the tokenizer or the model is built."""

from __future__ import annotations

import builtins

import pytest
import torch
from faults_helpers import fast_args, hf_model_dir, write_jsonl
from safetensors.torch import load_file

import occ_fast.training.setup as training_setup
from occ_fast.train import main


class RunsCode:
    """Unpickled, it creates ``marker``: what a malicious ``pytorch_model.bin`` would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def pickled_weights(tmp_path):
    """A real model directory whose weights are ``pytorch_model.bin`` holding a code-running object."""
    model = hf_model_dir(tmp_path / "model")
    state = load_file(model / "model.safetensors")
    torch.save({**state, "payload": RunsCode(str(tmp_path / "code-ran"))}, model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return str(model), (
        "has no *.safetensors weights (pytorch_model.bin: pickled, never loaded, as unpickling can run "
        "code; convert to safetensors)"
    )


def data_directory(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": "1 + 1 =", "answer": "2"}])
    return str(tmp_path), (
        "has no config.json, no tokenizer (tokenizer.json, "
        "tokenizer_config.json, tokenizer.model or vocab.json), no *.safetensors weights"
    )


def hub_id(tmp_path):
    return "Qwen/Qwen2.5-0.5B", (
        "does not exist (models are read from a local directory, never downloaded: download it first, "
        "then pass that directory as --model.name-or-path)"
    )


@pytest.mark.parametrize("make", [hub_id, data_directory, pickled_weights])
def test_unusable_model_path_is_one_line_before_the_model_is_built(tmp_path, capsys, monkeypatch, make):
    def must_not_build(*args, **kwargs):
        raise AssertionError("the tokenizer or model was built before the model directory was checked")

    monkeypatch.chdir(tmp_path)  # the Hub id is a relative path that does not exist here
    monkeypatch.setattr(training_setup, "build_tokenizer", must_not_build)
    monkeypatch.setattr(training_setup, "build_model", must_not_build)
    path, lacks = make(tmp_path)
    assert main(fast_args(tmp_path / "runs", "r", "--model.name-or-path", path)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == f"error model directory {path} {lacks}", err
    assert not (tmp_path / "code-ran").exists()
