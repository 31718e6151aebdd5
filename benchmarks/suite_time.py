"""Wall time of the README's test command (``python -m pytest -q`` from the repository root), alone and
beside one busy process, with the load average of the machine beside each figure.

    python benchmarks/suite_time.py [--out benchmarks/results/suite-time] [--busy loop|matmul]

The suite runs under the thread policy that ``tests/conftest.py`` applies (``occ_fast.threads``);
variables that would override it (``OMP_WAIT_POLICY``, ``OMP_NUM_THREADS``) are removed first, as on
a fresh shell. The busy process is a single-threaded Python loop (``loop``) or a torch matmul loop
with torch's default threads (``matmul``). The 1-minute load average is recorded before each run and
sampled every 10 s during it (its mean and max): on a machine shared with other jobs it says how
much of the time was theirs. Writes ``results.json`` and ``summary.md`` (and copies it into the pages
that quote it, ``benchmarks/sync_readme.py``), keeping the rows of an
earlier run for the competing processes not run this time (``--only``, another ``--busy``);
``PYTEST_ARGS`` after ``--`` replace the default arguments (e.g. ``-- -q tests/test_threads.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from sync_readme import main as sync_pages

ROOT = Path(__file__).resolve().parents[1]
BUSY = {
    "loop": "while True: pass",
    "matmul": "import torch\nx = torch.randn(512, 512)\nwhile True: x = torch.tanh(x @ x)",
}


class LoadSampler:
    """The 1-minute load average every ``every_s`` seconds while the ``with`` block runs."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s, self.samples = every_s, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def timed_suite(pytest_args: list[str], busy: str | None, timeout_s: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    load_before = os.getloadavg()[0]
    competitor = subprocess.Popen([sys.executable, "-c", BUSY[busy]], env=env) if busy else None
    try:
        with LoadSampler() as load:
            t0 = time.perf_counter()
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "pytest", *pytest_args],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=timeout_s,
                )
                code, output = done.returncode, done.stdout + done.stderr
            except subprocess.TimeoutExpired:
                code, output = None, ""
            wall = time.perf_counter() - t0
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    outcome = re.findall(r"^=*\s*(\d+ (?:passed|failed).*?) in [\d.]+s", output, flags=re.MULTILINE)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.MULTILINE)
    return dict(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        competing_process=busy or "none",
        wall_s=round(wall, 1),
        timed_out=code is None,
        exit_code=code,
        outcome=outcome[-1] if outcome else ("timed out" if code is None else output.strip()[-300:]),
        failed=failed,
        load_average_before=round(load_before, 2),
        load_average_mean=round(sum(load.samples) / len(load.samples), 2),
        load_average_max=round(max(load.samples), 2),
    )


def failed_tests(row: dict) -> str:
    """The failing tests of a run, named (rows written before they were recorded name none)."""
    return "".join(f" (`{name}`)" for name in row.get("failed", []))


def summary(rows: list[dict], pytest_args: list[str]) -> str:
    lines = [
        f"`python -m pytest {' '.join(pytest_args)}` from the repository root on {os.cpu_count()} cores "
        f"(`nproc`: {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()}), "
        "wall time; the load average (1 min) before and during each run shows what else the machine "
        "was running.",
        "",
        "| competing process | wall s | result | load before | load mean | load max | when |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        wall = f"{'> ' if r['timed_out'] else ''}{r['wall_s']:.0f}"
        lines.append(
            f"| {r['competing_process']} | {wall} | {r['outcome']}{failed_tests(r)} | {r['load_average_before']:.1f} "
            f"| {r['load_average_mean']:.1f} | {r['load_average_max']:.1f} | {r['date']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "suite-time")
    parser.add_argument("--busy", choices=sorted(BUSY), default="loop", help="the competing process")
    parser.add_argument(
        "--only", choices=("alone", "busy"), help="run one of the two measurements (default: both)"
    )
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="stop a run after this long")
    parser.add_argument("pytest_args", nargs="*", default=["-q"], help="after --: pytest's arguments")
    args = parser.parse_args(argv)
    path = args.out / "results.json"
    earlier = json.loads(path.read_text()) if path.is_file() else []
    rows = {r["competing_process"]: r for r in earlier if r.get("pytest_args") == args.pytest_args}
    for busy in (None, args.busy):
        if args.only is None or args.only == ("busy" if busy else "alone"):
            row = timed_suite(args.pytest_args, busy, args.timeout_s) | {"pytest_args": args.pytest_args}
            rows[row["competing_process"]] = row
            print(row, flush=True)
    rows = sorted(rows.values(), key=lambda r: r["competing_process"] != "none")
    text = summary(rows, args.pytest_args)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "summary.md").write_text(text)
    sync_pages([])  # the pages quote summary.md: a later measured suite checks that they do
    return 0


if __name__ == "__main__":
    sys.exit(main())
