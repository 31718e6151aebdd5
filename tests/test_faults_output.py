"""Where the run writes: an output path that is a file, a read-only directory, a disk that fills up
while a checkpoint is written. One line each, naming the path (and the last good checkpoint)."""

from __future__ import annotations

import builtins
import errno
import os
import stat

import pytest
from faults_helpers import fast_args

import occ_fast.checkpointing.files as checkpoint_files
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
