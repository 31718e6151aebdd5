"""Resuming the wrong thing, as a user meets it: a mistyped run name with ``--run.resume auto`` (said
in one line) or ``must`` (refused, naming the runs there), fewer steps than the checkpoint trained
(refused; as many: nothing to train), and a damaged latest checkpoint (truncated, a flipped bit,
``meta.json`` deleted), single-process and sharded: named with why, passed over for the newest
intact one, which resumes exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import background
import pytest
from faults_helpers import fast_args, run_trainer
from test_train_distributed import torchrun

from occ_fast.checkpointing.files import checkpoint_dir
from occ_fast.train import main

FLAGS = ("--reward.fn", "signal_reward:digit_parity", "--run.save-every", "1", "--run.keep-last", "3")
WIDE = {"COLUMNS": "1000"}  # the log line unwrapped, so that it can be asserted whole


def line_with(output: str, *parts: str) -> str:
    """The one output line holding every one of ``parts``; fails showing the output otherwise."""
    lines = [line for line in output.splitlines() if all(part in line for part in parts)]
    tail = "\n".join(line.rstrip() for line in output.splitlines()[-80:])
    assert len(lines) == 1, f"no single line with {parts}:\n{tail}"
    return lines[0]


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def files_of(run_dir: Path) -> dict[Path, bytes]:
    """The run's files and their contents, hidden ones (the run directory's lock) aside."""
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and not p.name.startswith(".")}


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 4] ^= 0x10  # in the tensor data: nothing but a checksum notices
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """``runs/exp1``: 3 steps, a checkpoint of each."""
    out = tmp_path_factory.mktemp("runs")
    code, output = run_trainer(fast_args(out, "exp1", *FLAGS, "--train.steps", "3"))
    assert code == 0, output
    return out


def refused_in_process(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """``main(args)`` in this process, its console unwrapped: the exit code and what it printed. For
    refusals at start-up (nothing trained), which print through the console, not the log, and where
    a trainer process would spend its seconds importing torch."""
    for name, value in WIDE.items():
        monkeypatch.setenv(name, value)
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def copy_of(finished: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished / "exp1", tmp_path / "exp1")
    return tmp_path / "exp1"


def test_resume_auto_of_a_mistyped_name_says_it_starts_a_new_run(finished, tmp_path):
    copy_of(finished, tmp_path)
    args = fast_args(tmp_path, "exp", *FLAGS, "--train.steps", "1", "--run.resume", "auto")
    code, output = run_trainer(args, **WIDE)
    assert code == 0 and "Traceback" not in output, output
    line_with(output, f"no run 'exp' in {tmp_path} to resume: starting a new run")
    assert [m["step"] for m in metrics(tmp_path / "exp")] == [0]


def test_resume_must_of_a_mistyped_name_refuses_naming_the_runs_there(finished, monkeypatch, capsys):
    args = fast_args(finished, "exp", *FLAGS, "--train.steps", "1", "--run.resume", "must")
    code, output = refused_in_process(args, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in output, output
    line_with(output, f"--run.resume must: no run 'exp' in {finished} (runs there: exp1)")
    assert not (finished / "exp" / "config.yaml").exists()  # nothing started


@pytest.mark.parametrize(
    ("steps", "code", "says"),
    [
        (2, 2, "--train.steps 2 is below the 3 steps {checkpoint} already trained"),
        (3, 0, "nothing to train: {checkpoint} already trained 3 steps (--train.steps 3)"),
    ],
)
def test_resume_with_no_more_steps_than_the_checkpoint(
    finished, tmp_path, steps, code, says, monkeypatch, capsys
):
    run_dir = copy_of(finished, tmp_path)
    before = files_of(run_dir)
    args = fast_args(tmp_path, "exp1", *FLAGS, "--train.steps", str(steps), "--run.resume", "auto")
    exit_code, output = refused_in_process(args, monkeypatch, capsys)
    assert exit_code == code and "Traceback" not in output, output
    line_with(output, says.format(checkpoint=checkpoint_dir(run_dir, 2)))
    assert not any(line.startswith("done ") for line in output.splitlines())  # no summary
    assert files_of(run_dir) == before  # nothing written


def test_regime_none_is_refused_even_with_allow_regime_change(finished, tmp_path, capsys):
    """--run.allow-regime-change switches between MTP regimes, not to 'none': a model without MTP
    heads cannot take the checkpoint's. Refused in one line, before anything is written."""
    run_dir = copy_of(finished, tmp_path)
    before = files_of(run_dir)
    flags = ("--mtp.regime", "none", "--run.allow-regime-change", "--run.resume", "auto")
    assert main(fast_args(tmp_path, "exp1", *FLAGS, "--train.steps", "4", *flags)) == 2
    err = capsys.readouterr().err
    assert "mtp.regime: occ -> none (the MTP heads exist only with a regime other than 'none')" in err, err
    assert "Traceback" not in err and files_of(run_dir) == before


def test_resume_of_a_run_killed_during_its_final_export_finishes_the_export(finished, tmp_path):
    """All steps checkpointed but no ``model/`` (killed while exporting): the same command trains
    nothing and writes the export, rather than call the run finished."""
    run_dir = copy_of(finished, tmp_path)
    shutil.rmtree(run_dir / "model")
    args = fast_args(tmp_path, "exp1", *FLAGS, "--train.steps", "3", "--run.resume", "auto")
    code, output = run_trainer(args, **WIDE)
    assert code == 0 and "Traceback" not in output, output
    assert "nothing to train" not in output
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert [m["step"] for m in metrics(run_dir)] == [0, 1, 2]


FAULTS = {
    "truncated": (lambda c: truncate(c / "model.safetensors"), "model.safetensors holds "),
    "flipped bit": (lambda c: flip_a_bit(c / "optimizer.pt"), "optimizer.pt differs from what was"),
    "meta.json deleted": (lambda c: (c / "meta.json").unlink(), "meta.json is missing"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_damaged_latest_checkpoint_is_named_and_the_newest_intact_one_resumes_exactly(
    finished, tmp_path, fault
):
    run_dir = copy_of(finished, tmp_path)
    damage, why = FAULTS[fault]
    damage(checkpoint_dir(run_dir, 2))
    args = fast_args(tmp_path, "exp1", *FLAGS, "--train.steps", "3", "--run.resume", "auto")
    code, output = run_trainer(args, **WIDE)
    assert code == 0 and "Traceback" not in output, output
    line_with(
        output,
        f"damaged checkpoint {checkpoint_dir(run_dir, 2)} ({why}",
        f"resuming from the newest intact one, {checkpoint_dir(run_dir, 1)}",
    )
    assert metrics(run_dir) == metrics(finished / "exp1")  # step 2 again, exactly as before


def test_damaged_checkpoint_named_by_path_is_refused_naming_an_intact_one(
    finished, tmp_path, monkeypatch, capsys
):
    run_dir = copy_of(finished, tmp_path)
    flip_a_bit(checkpoint_dir(run_dir, 2) / "model.safetensors")
    resume = ["--run.resume", str(checkpoint_dir(run_dir, 2))]
    args = fast_args(tmp_path, "other", *FLAGS, "--train.steps", "4", *resume)
    code, output = refused_in_process(args, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in output, output
    line_with(
        output,
        f"checkpoint {checkpoint_dir(run_dir, 2)} is damaged (model.safetensors differs from what was",
        f"the newest intact one there is {checkpoint_dir(run_dir, 1)}",
    )


def test_no_intact_checkpoint_is_refused_naming_each_with_why(finished, tmp_path, monkeypatch, capsys):
    run_dir = copy_of(finished, tmp_path)
    for step, (damage, _) in enumerate(FAULTS.values()):  # truncated, flipped bit, meta.json deleted
        damage(checkpoint_dir(run_dir, step))
    args = fast_args(tmp_path, "exp1", *FLAGS, "--train.steps", "4", "--run.resume", "auto")
    code, output = refused_in_process(args, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in output, output
    line_with(
        output,
        f"no intact checkpoint to resume: damaged checkpoint {checkpoint_dir(run_dir, 2)} (meta.json is missing)",
        f"{checkpoint_dir(run_dir, 1)} (optimizer.pt differs from what was written (sha256))",
        f"{checkpoint_dir(run_dir, 0)} (model.safetensors holds ",
    )


def damaged_sharded_checkpoint(tmp_path: Path) -> None:
    """The test below, under ``tmp_path``."""
    wide = {"COLUMNS": "1000"}  # torchrun's ranks inherit it
    args = [*fast_args(tmp_path, "dp", *FLAGS, "--train.steps", "2"), "--train.device", "cpu"]
    done = torchrun(args, **wide)
    assert done.returncode == 0, done.stderr[-6000:]
    shutil.copytree(tmp_path / "dp", tmp_path / "reference")
    flip_a_bit(checkpoint_dir(tmp_path / "dp", 1) / "dcp" / "__0_0.distcp")
    done = torchrun([*args, "--run.resume", "auto"], **wide)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output[-6000:]
    line_with(
        output,
        f"damaged checkpoint {checkpoint_dir(tmp_path / 'dp', 1)} (dcp/__0_0.distcp differs from what was",
        f"resuming from the newest intact one, {checkpoint_dir(tmp_path / 'dp', 0)}",
    )
    assert metrics(tmp_path / "dp") == metrics(tmp_path / "reference")


@pytest.mark.background(job=damaged_sharded_checkpoint)
def test_damaged_sharded_checkpoint_is_named_and_the_newest_intact_one_resumes_exactly():
    """2 ranks; the flipped bit is in the shard that rank 1 verifies: rank 0 must hear of it."""
    background.result(damaged_sharded_checkpoint)  # asserts all of it (above), early (tests/background.py)
