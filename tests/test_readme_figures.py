"""Figures in the docs come from result files: on every page (README.md and the README.md of each
folder, ``sync_readme.pages``) every snippet block equals the file a command wrote, and the prose outside
the blocks quotes no run figure (only the listed constants: config values, versions, setting names,
the paper's numbers)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("sync_readme", ROOT / "benchmarks" / "sync_readme.py")
sync_readme = sys.modules["sync_readme"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync_readme)

# Numbers the prose may quote outside the blocks, each a pattern for its whole phrase and why it is no run figure.
ALLOWED = [
    (r"torch==\d+\.\d+\.\d+", "a package version"),
    (r"torch >= \d+\.\d+", "a version bound"),
    (r"clip-higher 0\.2/0\.28", "the preset's clip range (the paper's)"),
    (r"qwen2\.5-fresh-mtp", "a preset's name"),
    (r"defaults to 1\.0 for k > 1", "an option's default"),
    (r"policy 0\.1/0\.5/1\.0", "the sweep's default fixed coefficients"),
    (r"\b(?:ce|detach|policy|occ)-\d+\.\d+|\bdetach-lr\d+\.\d+x", "a sweep setting's name"),
    (r"paper's c = 0\.1", "the paper's MTP cross-entropy coefficient"),
    (r"temperature=1\.0", "an argument in a code example"),
    (r"\b\d+\.\d+\.\d+\b", "a three-part version number"),
    (r"\b(?:vLLM|triton)[ -]\d+\.\d+\b|\b0\.1x\b", "a release series"),
    (r"\(default \d+(?:\.\d+)?\)", "an option's default"),
    (r"optim\.lr 0\.001 -> 0\.0005", "an example of a resume note"),
    (r"`reward/error_rate` 1\.0|answer `7\.0`", "an input or value a fault test sets"),
    (r"clip defaults are 0\.2 / 0\.28", "the config's clip defaults"),
    (r"Qwen[\d.]*-\d+(?:\.\d+)?B", "a model's name"),
    (r"\bQwen\d+\.\d+\b", "a model family's name"),
    (r"mtp_layers\.\d+", "a checkpoint key"),
    (r">= 60% of a bf16", "the kernel's throughput goal"),
    (r"--threshold \d+\.\d+", "a command's argument"),
]
# A decimal number, or a count with a unit of time or size: what a measurement would look like.
FIGURE = re.compile(r"\d*\.\d+|\b\d+(?:\.\d+)?\s?(?:s|ms|min|minutes|seconds|hours|GB|MB|%)(?![\w-])")


def prose_outside_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of every README line outside the snippet blocks and not a marker."""
    lines = text.splitlines()
    inside = set()
    for block in sync_readme.find_blocks(lines):
        inside.update(range(block.begin, block.end + 1))
    return [(i + 1, line) for i, line in enumerate(lines) if i not in inside]


def quoted_figures(text: str, name: str = "README.md") -> list[str]:
    found = []
    for number, line in prose_outside_blocks(text):
        for pattern, _ in ALLOWED:
            line = re.sub(pattern, " ", line)
        found += [f"{name}:{number}: {m.group()!r}" for m in FIGURE.finditer(line)]
    return found


PAGES = [page.relative_to(ROOT).as_posix() for page in sync_readme.pages()]


def test_the_pages_are_the_readme_and_each_topic():
    for page in ("README.md", "kernels/README.md", "occ_fast/rollout/README.md", "tests/README.md"):
        assert page in PAGES
    assert not [p for p in PAGES if p.startswith((".venv", ".ci-venv", ".vllm-venv"))]


@pytest.mark.parametrize("page", PAGES)
def test_every_block_holds_its_file(page):
    text = (ROOT / page).read_text()
    assert sync_readme.stale_blocks(text) == [], "run: python benchmarks/sync_readme.py"
    assert sync_readme.synced(text) == text


def test_every_result_summary_is_on_a_page():
    shown = {
        b.path for page in PAGES for b in sync_readme.find_blocks((ROOT / page).read_text().splitlines())
    }
    written = {p.relative_to(ROOT).as_posix() for p in (ROOT / "benchmarks/results").glob("*/summary.md")}
    assert written - shown == set()


@pytest.mark.parametrize("page", PAGES)
def test_prose_quotes_no_run_figures(page):
    assert quoted_figures((ROOT / page).read_text(), page) == []


@pytest.mark.parametrize("page", [p for p in PAGES if p.startswith("benchmarks/results/")])
def test_an_experiment_write_up_shows_its_own_results(page):
    blocks = sync_readme.find_blocks((ROOT / page).read_text().splitlines())
    assert [b.path for b in blocks] == [str(Path(page).parent / "summary.md")]


def test_the_prose_check_flags_figures_and_spares_blocks_and_constants():
    text = (
        "It takes about 66 s: reward 0.37 at the first step.\n"
        "<!-- BEGIN benchmarks/results/x/summary.md -->\nreward 0.52\n<!-- END benchmarks/results/x/summary.md -->\n"
        "The sweep runs `ce-4.0`, clip-higher 0.2/0.28; 3% of tokens.\n"
    )
    assert quoted_figures(text) == ["README.md:1: '66 s'", "README.md:1: '0.37'", "README.md:5: '3%'"]


def write_readme(tmp_path, body: str) -> Path:
    (tmp_path / "benchmarks/results/topic").mkdir(parents=True)
    (tmp_path / "benchmarks/results/topic/summary.md").write_text("| a | b |\n|---|---|\n| 1.5 | 2 |\n")
    readme = tmp_path / "README.md"
    readme.write_text(body)
    return readme


BEGIN, END = (
    "<!-- BEGIN benchmarks/results/topic/summary.md -->",
    "<!-- END benchmarks/results/topic/summary.md -->",
)


def test_sync_rewrites_a_stale_block_and_check_reports_it(tmp_path, capsys):
    readme = write_readme(tmp_path, f"intro\n{BEGIN}\nold figure 9.9\n{END}\nafter\n")
    assert sync_readme.main(["--readme", str(readme), "--check"]) == 1
    assert "benchmarks/results/topic/summary.md differs" in capsys.readouterr().out
    assert sync_readme.main(["--readme", str(readme)]) == 0
    assert readme.read_text() == f"intro\n{BEGIN}\n| a | b |\n|---|---|\n| 1.5 | 2 |\n{END}\nafter\n"
    assert sync_readme.main(["--readme", str(readme), "--check"]) == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            BEGIN.replace("topic", "gone") + "\n" + END.replace("topic", "gone") + "\n",
            "gone/summary.md does not exist",
        ),
        (f"{BEGIN}\nx\n", "has no END"),
        (f"x\n{END}\n", "without its BEGIN"),
        (f"{BEGIN}\n{BEGIN}\n{END}\n", "inside the block"),
    ],
)
def test_malformed_blocks_fail_naming_the_problem(tmp_path, capsys, body, message):
    readme = write_readme(tmp_path, body)
    assert sync_readme.main(["--readme", str(readme), "--check"]) == 2
    assert message in capsys.readouterr().err
