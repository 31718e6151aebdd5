"""The docs name only what exists: every ``--section.field`` flag is one ``python -m occ_fast.train --help``
lists, every ``python -m`` module imports, every relative link opens a file, and the README stays short."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import warm_python

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from sync_readme import pages  # noqa: E402

PAGES = {page.relative_to(ROOT).as_posix(): page.read_text() for page in pages()}
DOTTED_FLAG = re.compile(r"--[a-z][a-z0-9_-]*\.[a-z][a-z0-9_.-]*[a-z0-9]")
MODULE = re.compile(r"python3? -m ((?:occ_fast|benchmarks)(?:\.\w+)*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


@cache
def train_flags() -> frozenset[str]:
    out = subprocess.run(
        [*warm_python.PYTHON, "-m", "occ_fast.train", "--help"],
        capture_output=True,
        text=True,
        env=warm_python.environ(os.environ, COLUMNS="250"),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return frozenset(DOTTED_FLAG.findall(out.stdout))


def unknown_flags(text: str, known: frozenset[str]) -> list[str]:
    return sorted({flag for flag in DOTTED_FLAG.findall(text) if flag not in known})


def test_the_flag_check_finds_a_misnamed_flag():
    known = frozenset({"--model.dtype", "--run.name"})
    text = "Set `--model.dtype bf16` and `--run.name x`; the format is `--model.naming mimo`."
    assert unknown_flags(text, known) == ["--model.naming"]


def test_help_lists_the_fields_the_check_relies_on():
    assert {"--model.dtype", "--mtp.regime", "--run.resume", "--data.prompt-field"} <= train_flags()


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_flag_in_the_docs_exists(page):
    assert unknown_flags(PAGES[page], train_flags()) == [], f"{page} names flags `--help` does not list"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_module_the_docs_run_exists(page):
    missing = [m for m in sorted(set(MODULE.findall(PAGES[page]))) if importlib.util.find_spec(m) is None]
    assert missing == [], f"{page}: `python -m` of modules that do not exist"


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_relative_link_opens(page):
    broken = []
    for target in LINK.findall(PAGES[page]):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / page).parent / path if path else ROOT / page
        if not file.exists() or anchor and anchor not in heading_anchors(file.read_text()):
            broken.append(target)
    assert broken == [], f"{page}: broken links"


def test_every_page_is_linked_from_the_readme_or_the_benchmarks_page():
    linked = {
        ((ROOT / page).parent / target.partition("#")[0]).resolve()
        for page in ("README.md", "benchmarks/README.md")
        for target in LINK.findall(PAGES[page])
    }
    orphans = [page for page in PAGES if page != "README.md" and (ROOT / page).resolve() not in linked]
    assert orphans == []


def test_the_readme_reads_in_five_minutes():
    assert len(PAGES["README.md"].splitlines()) < 300
