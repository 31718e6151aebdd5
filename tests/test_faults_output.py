"""Where the run writes: an output path that is a file, a read-only directory, a disk that fills up
while a checkpoint, the metrics, a plot or config.yaml is written. One line each, naming the path
(and the checkpoint to resume from); a plot that cannot be written is only a warning."""

from __future__ import annotations

import builtins
import errno
import logging
import os
import pathlib
import stat

import pytest
from faults_helpers import fast_args

import occ_fast.checkpointing.files as checkpoint_files
import occ_fast.monitoring.metrics as metrics_module
import occ_fast.training.setup as training_setup
from occ_fast.train import main


def no_model(monkeypatch):
    def must_not_build(*args, **kwargs):
        raise AssertionError("the model was built before the output directory was checked")

    monkeypatch.setattr(training_setup, "build_model", must_not_build)


def test_output_path_that_is_a_file(tmp_path, capsys, monkeypatch):
    no_model(monkeypatch)
    blocker = tmp_path / "out"
    blocker.write_text("a file, not a directory")
    assert main(fast_args(blocker, "r")) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"cannot write the run directory {blocker / 'r'}" in err and "Traceback" not in err, err


def test_read_only_output_directory(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(out, os.W_OK):
        pytest.skip("running as root: directory permissions do not bind")
    no_model(monkeypatch)
    assert main(fast_args(out, "r")) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"cannot write the run directory {out / 'r'}: Permission denied" in err, err


class FullDiskFile:
    """A file whose writes fail as on a full disk (ENOSPC), after those the real file accepted."""

    def __init__(self, real, budget: int) -> None:
        self.real, self.budget = real, budget

    def write(self, data) -> int:
        if len(data) > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= len(data)
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


def test_full_disk_while_checkpointing_names_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    def open_on_a_filling_disk(path, mode="r", *args, **kwargs):
        real = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 - closed by the caller
        return FullDiskFile(real, budget=100) if "step_000000001" in str(path) else real

    monkeypatch.setattr(checkpoint_files, "open", open_on_a_filling_disk, raising=False)
    assert main(fast_args(tmp_path, "r", "--train.steps", "3", "--run.save-every", "1")) == 1
    err = " ".join(capsys.readouterr().err.split())
    checkpoints = tmp_path / "r" / "checkpoints"
    assert (
        f"no space left on device writing checkpoint {checkpoints / 'step_000000001'}; "
        f"the last good one is {checkpoints / 'step_000000000'}"
    ) in err, err
    assert "Traceback" not in err and "unexpected pos" not in err
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_000000000"]  # no half-written one


def no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def test_full_disk_while_plotting_warns_once_and_the_run_goes_on(tmp_path, capsys, caplog, monkeypatch):
    from matplotlib.figure import Figure

    def savefig_on_a_full_disk(self, target, *args, **kwargs):
        pathlib.Path(target).write_bytes(b"\x89PNG")  # what fitted before the disk filled up
        raise no_space()

    monkeypatch.setattr(Figure, "savefig", savefig_on_a_full_disk)
    args = fast_args(tmp_path, "r", "--train.steps", "3", "--run.plot-every", "1")
    with caplog.at_level(logging.WARNING, logger="occ_fast"):
        assert main(args) == 0
    warnings = [r.getMessage() for r in caplog.records if "plot" in r.getMessage()]
    assert len(warnings) == 1 and len(warnings[0].splitlines()) == 1, warnings
    assert f"no space left on device writing plots under {tmp_path / 'r' / 'plots'}" in warnings[0]
    assert "Traceback" not in capsys.readouterr().err
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "r" / "model" / "config.json").is_file()


class DiskFullAfter(FullDiskFile):
    """A file that accepts ``writes`` writes, then fails each one as on a full disk."""

    def __init__(self, real, writes: int) -> None:
        super().__init__(real, budget=0)
        self.writes = writes

    def write(self, data) -> int:
        if not self.writes:
            raise no_space()
        self.writes -= 1
        return self.real.write(data)


def test_full_disk_while_logging_metrics_stops_at_a_checkpoint_it_names(tmp_path, capsys, monkeypatch):
    def open_on_a_filling_disk(path, mode="r", *args, **kwargs):
        real = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 - closed by the caller
        return DiskFullAfter(real, writes=1) if str(path).endswith("metrics.jsonl") else real

    monkeypatch.setattr(metrics_module, "open", open_on_a_filling_disk, raising=False)
    run_dir = tmp_path / "r"
    assert main(fast_args(tmp_path, "r", "--train.steps", "3", "--run.save-every", "0")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    checkpoint = run_dir / "checkpoints" / "step_000000001"
    (line,) = error_lines(err)[-1:]
    assert line.startswith(
        f"no space left on device writing {run_dir / 'metrics.jsonl'} at step 1: stopped at checkpoint "
        f"{checkpoint}; resume with: python -m occ_fast.train --preset "
        f"{run_dir / 'config.yaml'} --run.resume auto"
    ), err
    assert (checkpoint / "meta.json").is_file()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1


def test_full_disk_while_writing_tensorboard_events_stops_at_a_checkpoint_it_names(
    tmp_path, capsys, monkeypatch
):
    from torch.utils.tensorboard import SummaryWriter

    flushes = []

    def flush_on_a_filling_disk(self):
        flushes.append(1)
        if len(flushes) > 1:
            raise no_space()

    monkeypatch.setattr(SummaryWriter, "flush", flush_on_a_filling_disk)
    run_dir = tmp_path / "r"
    args = fast_args(tmp_path, "r", "--train.steps", "3", "--run.save-every", "0", "--run.tensorboard")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    checkpoint = run_dir / "checkpoints" / "step_000000001"
    assert error_lines(err)[-1].startswith(
        f"no space left on device writing TensorBoard events under {run_dir / 'tensorboard'} at step 1: "
        f"stopped at checkpoint {checkpoint}"
    ), err
    assert (checkpoint / "meta.json").is_file()


def test_full_disk_while_writing_config_yaml_at_start_leaves_none_behind(tmp_path, capsys, monkeypatch):
    write_text = pathlib.Path.write_text

    def write_text_on_a_full_disk(self, *args, **kwargs):
        if "config.yaml" in self.name:
            self.touch()  # the file is created; its first block does not fit
            raise no_space()
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text_on_a_full_disk)
    run_dir = tmp_path / "r"
    assert main(fast_args(tmp_path, "r", "--train.steps", "1")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert error_lines(err)[-1] == f"error no space left on device writing {run_dir / 'config.yaml'}", err
    assert not [p.name for p in run_dir.iterdir() if "config.yaml" in p.name]
