"""Wall time of the default 20-step CPU run, idle and beside a competing process, with and without the
thread policy's wait policy (``occ_fast.threads``).

    python benchmarks/bench_threads.py [--out benchmarks/results/thread-policy]

Runs ``python -m occ_fast.train --train.steps 20 --train.warmup-sft-steps 100 --eval.every 0``
(the ``tiny`` preset) four times: with the policy (``OMP_WAIT_POLICY=PASSIVE``, the default) and
with spinning threads (``OMP_WAIT_POLICY=ACTIVE``, what OpenMP does when nothing is set), each
alone and beside one single-threaded busy process. Records the load average before each run (a
machine shared with other jobs is never idle); a run longer than ``--timeout-s`` is stopped and
reported as a lower bound. Writes ``results.json`` and ``summary.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = ["--train.steps", "20", "--train.warmup-sft-steps", "100", "--eval.every", "0"]
BUSY = "while True: pass"


def timed_run(wait_policy: str, competing: bool, out_dir: Path, timeout_s: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "TRITON_INTERPRET")}
    env["OMP_WAIT_POLICY"] = wait_policy
    load = os.getloadavg()[0]
    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if competing else None
    try:
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "occ_fast.train", *RUN, "--run.output-dir", str(out_dir)]
        try:
            subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        wall = time.perf_counter() - t0
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return dict(
        wait_policy=wait_policy,
        competing_process=competing,
        wall_s=wall,
        timed_out=timed_out,
        load_average_before=load,
    )


def summary(rows: list[dict]) -> str:
    lines = [
        f"Default 20-step CPU run (`python -m occ_fast.train {' '.join(RUN)}`) on {os.cpu_count()} cores, "
        "wall time in seconds; the competing process is one single-threaded busy loop; load average "
        "(1 min) before each run shows what else the machine was doing.",
        "",
        "| OMP_WAIT_POLICY | competing process | wall s | load average before |",
        "|---|---|---|---|",
    ]
    for r in rows:
        name = "PASSIVE (policy)" if r["wait_policy"] == "PASSIVE" else "ACTIVE (spinning)"
        lines.append(
            f"| {name} | {'yes' if r['competing_process'] else 'no'} | {'> ' if r['timed_out'] else ''}{r['wall_s']:.1f} "
            f"| {r['load_average_before']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "thread-policy")
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=900.0,
        help="stop a run after this long, reported as '> N' (default: 900)",
    )
    args = parser.parse_args(argv)
    if not args.timeout_s > 0:
        parser.error("--timeout-s must be > 0")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for policy in ("PASSIVE", "ACTIVE"):
            for competing in (False, True):
                rows.append(timed_run(policy, competing, Path(tmp), args.timeout_s))
                print(rows[-1], flush=True)
    text = summary(rows)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "summary.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
