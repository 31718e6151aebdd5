"""The trainer on a disk that fills up once rank 0 has written one metrics line
(``python tests/full_disk_metrics.py ARGS``, under torchrun): the other ranks write no metrics, so
only rank 0 meets the fault, as on a real run."""

from __future__ import annotations

import builtins
import errno
import os
import sys

import occ_fast.monitoring.metrics as metrics_module
from occ_fast.distributed.process_group import exit_rank
from occ_fast.train import main


class FillsAfterOneLine:
    """A metrics file that takes one write, then fails each one with ENOSPC."""

    def __init__(self, real) -> None:
        self.real, self.writes = real, 1

    def write(self, data) -> int:
        if not self.writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.writes -= 1
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)


def open_on_a_filling_disk(path, mode="r", *args, **kwargs):
    real = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 - closed by the caller
    return FillsAfterOneLine(real) if str(path).endswith("metrics.jsonl") else real


if __name__ == "__main__":
    metrics_module.open = open_on_a_filling_disk
    exit_rank(main(sys.argv[1:]))
