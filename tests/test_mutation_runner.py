"""The mutation runner edits only its copy, undoes every edit, calls a moved snippet stale, and keeps
the results of a partial run beside those of the last full one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "mutation"))

import run  # noqa: E402
from mutants import ALL, MUTANTS, Mutant  # noqa: E402
from run import apply, restore  # noqa: E402


def test_apply_edits_then_restore_and_stale_snippets(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\ny = x + 1\n")
    mutant = Mutant("X", "off by one", (("a.py", "x + 1", "x + 2"), ("a.py", "x = 1", "x = 0")))
    originals = apply(mutant, tmp_path)
    assert (tmp_path / "a.py").read_text() == "x = 0\ny = x + 2\n"
    restore(originals)
    assert (tmp_path / "a.py").read_text() == "x = 1\ny = x + 1\n"
    missing = apply(Mutant("Y", "gone", (("a.py", "z = 3", "z = 4"),)), tmp_path)
    assert isinstance(missing, str) and "found 0 times" in missing
    twice = apply(Mutant("Z", "ambiguous", (("a.py", "x", "w"),)), tmp_path)
    assert isinstance(twice, str) and "found 2 times" in twice
    half = apply(Mutant("W", "second edit stale", (("a.py", "x = 1", "x = 0"), ("a.py", "q", "r"))), tmp_path)
    assert isinstance(half, str) and (tmp_path / "a.py").read_text() == "x = 1\ny = x + 1\n"


def test_mutant_list_is_well_formed():
    ids = [m.id for m in ALL]
    assert len(ids) == len(set(ids))
    assert len(MUTANTS) >= 26
    root = Path(__file__).resolve().parents[1]
    for m in ALL:
        assert m.edits and all((root / path).is_file() for path, _, _ in m.edits), m.id
        assert all(old != new for _, old, new in m.edits), m.id
        if m.equivalent is None:
            assert m.tests and all((root / t.split("::")[0]).is_file() for t in m.tests), m.id


def test_a_partial_run_updates_and_adds_rows_of_the_last_results(tmp_path, monkeypatch):
    """``--only`` replaces the rows of mutants it ran and adds those new to the list, in its order."""
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    first, second = MUTANTS[0], MUTANTS[1]

    def row(mutant, status):
        return {"id": mutant.id, "what": mutant.what, "files": ["f.py"], "status": status, "seconds": 1.0}

    run.write_results([row(second, "survived")], 1.0, update=False)
    run.write_results([row(first, "killed"), row(second, "killed")], 2.0, update=True)
    data = json.loads((tmp_path / "results.json").read_text())
    assert [(r["id"], r["status"]) for r in data["mutants"]] == [(first.id, "killed"), (second.id, "killed")]
    assert (data["killed"], data["counted"], data["minutes"]) == (2, 2, 3.0)
