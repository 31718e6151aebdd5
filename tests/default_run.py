"""The README's default command, ``python -m occ_fast.train`` with no arguments, run once per session.

``tests/test_readme_commands.py`` checks what it writes; ``tests/test_newcomer_commands.py`` starts
the docs' next commands from the model it trains, as a user who followed the README does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import background

COMMAND = "python -m occ_fast.train"


def default_run(cwd: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """The default command from an empty directory ``cwd``: its result and the run directory it wrote."""
    out = background.run([sys.executable, "-m", "occ_fast.train"], cwd=cwd, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (cwd / "runs").iterdir()
    return out, run_dir
