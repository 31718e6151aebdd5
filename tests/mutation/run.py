"""Mutation check of the core: apply each curated mutant to a copy of the tree, run its tests.

    python tests/mutation/run.py                 # every mutant; writes benchmarks/results/mutation/
    python tests/mutation/run.py --only T1 K6    # some of them; their rows in the results are updated (or added)
    python tests/mutation/run.py --list          # the mutants and their tests

The working tree is never edited: the tracked and untracked (not ignored) files are copied once to
a temporary directory, and each mutant's edits are applied there and undone afterwards. The copy
is imported ahead of the editable install (``PYTHONPATH``, and ``occ_fast/kernels`` linked to the
copy's ``kernels/src/``). A mutant whose original snippet is missing or not unique is reported
``stale`` (an error): the code it targeted changed, and the list needs updating. The targeted
tests first run on the unmutated copy (``baseline``); a failure there is an error too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import EQUIVALENT, MUTANTS, Mutant  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "mutation"
MUTANT_TIMEOUT_S = 900


def copy_tree(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / "occ_fast" / "kernels").symlink_to(dest / "kernels" / "src", target_is_directory=True)


def apply(mutant: Mutant, tree: Path) -> dict[Path, str] | str:
    """Apply every edit; return the original file texts, or why the mutant is stale."""
    originals: dict[Path, str] = {}
    for path, old, new in mutant.edits:
        file = tree / path
        text = originals.get(file) or file.read_text()
        originals.setdefault(file, text)
        current = file.read_text()
        count = current.count(old)
        if count != 1:
            restore(originals)
            return f"{path}: snippet found {count} times (expected once): {old.strip()[:60]!r}"
        file.write_text(current.replace(old, new))
    return originals


def restore(originals: dict[Path, str]) -> None:
    for file, text in originals.items():
        file.write_text(text)


def pytest(tree: Path, tests: tuple[str, ...]) -> tuple[bool | None, float, str]:
    """(passed, seconds, tail of the output); passed None on timeout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "tests")])}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=MUTANT_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start, "timeout"
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    return done.returncode == 0, time.perf_counter() - start, "\n".join(tail)


def run_one(mutant: Mutant, tree: Path) -> dict:
    row = {"id": mutant.id, "what": mutant.what, "files": sorted({p for p, _, _ in mutant.edits})}
    row["tests"] = list(mutant.tests)
    applied = apply(mutant, tree)
    if isinstance(applied, str):
        return row | {"status": "stale", "detail": applied, "seconds": 0.0}
    try:
        passed, seconds, tail = pytest(tree, mutant.tests)
    finally:
        restore(applied)
    status = "survived" if passed else "killed"
    return row | {"status": status, "seconds": round(seconds, 1), "detail": tail}


def summary_markdown(rows: list[dict], minutes: float) -> str:
    counted = [r for r in rows if r["status"] in ("killed", "survived")]
    killed = sum(r["status"] == "killed" for r in counted)
    survivors = [r for r in rows if r["status"] == "survived"]
    stale = [r for r in rows if r["status"] == "stale"]
    not_run = [r["id"] for r in rows if r["status"] == "not run"]
    lines = [
        f"Mutation score: **{killed}/{len(counted)}** non-equivalent mutants killed "
        f"({len(survivors)} survived, {len(stale)} stale, {len(EQUIVALENT)} equivalent listed apart"
        + (f", not run: {', '.join(not_run)}" if not_run else "")
        + f"); the run took {minutes:.0f} min on 2 shared CPU cores.",
        "",
        "| mutant | file | the bug | result | s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['id']} | {', '.join(r['files'])} | {r['what']} | {r['status']} | {r['seconds']} |"
        )
    lines += ["", "Equivalent mutants (not counted):", ""]
    lines += [
        f"- `{m.id}` ({', '.join(sorted({p for p, _, _ in m.edits}))}): {m.what}. Why equivalent: {m.equivalent}"
        for m in EQUIVALENT
    ]
    return "\n".join(lines) + "\n"


def write_results(rows: list[dict], minutes: float, *, update: bool) -> None:
    """results.json and summary.md; with ``update``, replace these mutants' rows of the last full run
    (or add them, in the list's order, when they are new; nothing is written without a full run)."""
    path = RESULTS / "results.json"
    if update:
        if not path.is_file():
            return
        previous = json.loads(path.read_text())
        known = {r["id"]: r for r in previous["mutants"]} | {r["id"]: r for r in rows}
        rows = [known[m.id] for m in MUTANTS if m.id in known]  # one since found equivalent drops out
        minutes += previous["minutes"]
    counted = [r for r in rows if r["status"] in ("killed", "survived")]
    payload = {
        "killed": sum(r["status"] == "killed" for r in counted),
        "counted": len(counted),
        "minutes": round(minutes, 1),
        "mutants": rows,
        "equivalent": [{"id": m.id, "what": m.what, "why": m.equivalent} for m in EQUIVALENT],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / "summary.md").write_text(summary_markdown(rows, minutes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="ID",
        help="run these mutants only (their rows in the results are replaced)",
    )
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests, run nothing")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run on the unmutated copy")
    parser.add_argument(
        "--skip",
        nargs="+",
        default=[],
        metavar="ID",
        help="record these as 'not run' (e.g. the slow torchrun ones)",
    )
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.id in args.only]
    if args.only and len(chosen) != len(set(args.only)):
        parser.error(f"unknown mutant ids: {sorted(set(args.only) - {m.id for m in MUTANTS})}")
    if args.list:
        for m in chosen:
            print(f"{m.id:4} {m.what}\n     tests: {' '.join(m.tests)}")
        return 0
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="occ-mutation-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen if m.id not in args.skip for t in m.tests))
            passed, seconds, tail = pytest(tree, tests)
            print(f"baseline ({len(tests)} test targets, {seconds:.0f} s): {'pass' if passed else 'FAIL'}")
            if not passed:
                print(tail)
                return 2
        for mutant in chosen:
            if mutant.id in args.skip:
                row = {"id": mutant.id, "what": mutant.what, "files": sorted({p for p, _, _ in mutant.edits})}
                row |= {"tests": list(mutant.tests), "status": "not run", "seconds": 0.0, "detail": "--skip"}
            else:
                row = run_one(mutant, tree)
            rows.append(row)
            print(f"{row['id']:4} {row['status']:8} {row['seconds']:6.1f}s  {row['what']}", flush=True)
            if row["status"] == "stale":
                print(f"     {row['detail']}")
    minutes = (time.perf_counter() - start) / 60
    counted = [r for r in rows if r["status"] in ("killed", "survived")]
    killed = sum(r["status"] == "killed" for r in counted)
    survivors = [r["id"] for r in rows if r["status"] == "survived"]
    stale = [r["id"] for r in rows if r["status"] == "stale"]
    print(f"\nscore {killed}/{len(counted)}; survivors: {survivors or 'none'}; stale: {stale or 'none'}")
    print(f"equivalent (not run): {[m.id for m in EQUIVALENT]}; {minutes:.1f} min")
    write_results(rows, minutes, update=bool(args.only))
    return 1 if survivors or stale else 0


if __name__ == "__main__":
    sys.exit(main())
