"""A run that fails at start leaves nothing that blocks the same command; the messages say what to do."""

from __future__ import annotations

from faults_helpers import fast_args

from occ_fast.checkpointing.resume import resolve_resume
from occ_fast.config import parse_config
from occ_fast.train import main


def test_failed_start_does_not_block_the_same_command_nor_its_resume(tmp_path, capsys):
    args = fast_args(tmp_path, "r", "--train.steps", "1")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").touch()  # what a start that failed after opening its metrics leaves
    assert main([*args, "--reward.fn", "no_such_module:reward"]) == 2
    err = capsys.readouterr().err
    assert "cannot import module 'no_such_module'" in err and "Traceback" not in err
    assert resolve_resume(parse_config(args)) is None  # the same command starts the run
    assert resolve_resume(parse_config([*args, "--run.resume", "auto"])) is None  # and so does a resume


def test_run_with_metrics_but_no_checkpoint_says_what_to_do(tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 0, "reward/mean": 0.5}\n')
    assert main([*fast_args(tmp_path, "r", "--train.steps", "1"), "--run.resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "--run.name" in err and f"delete {run_dir}" in err
