"""Copy every measured snippet into the docs: ``python benchmarks/sync_readme.py [--check]``.

A measuring command writes its figures to ``benchmarks/results/<topic>/summary.md``; a page (README.md
and every README.md under kernels/, occ_fast/, benchmarks/ and tests/) includes that file verbatim
between the lines ``<!-- BEGIN benchmarks/results/<topic>/summary.md -->`` and
``<!-- END benchmarks/results/<topic>/summary.md -->`` (paths from the repository root, on every page).
This script rewrites every such block from its file (``--check``: only report the blocks that differ,
exit 1), so that a figure in the docs is always the one a command wrote.
``tests/test_readme_figures.py`` runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC_FOLDERS = ("kernels", "occ_fast", "benchmarks", "tests")
MARKER = re.compile(r"^<!-- (BEGIN|END) (benchmarks/results/[^ ]+/summary\.md) -->$")


class ReadmeBlockError(ValueError):
    """A malformed block: unpaired or nested markers, or a marker whose file does not exist."""


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository root
    begin: int  # line index of the BEGIN marker
    end: int  # line index of the END marker


def pages(root: Path = ROOT) -> list[Path]:
    """Every documentation page: the README and the README.md of the folders users browse."""
    return [root / "README.md"] + sorted(p for f in DOC_FOLDERS for p in (root / f).rglob("README.md"))


def find_blocks(lines: list[str]) -> list[Block]:
    """The README's snippet blocks, in order; raises :class:`ReadmeBlockError` on unpaired or nested markers."""
    blocks, open_block = [], None
    for number, line in enumerate(lines):
        match = MARKER.match(line.rstrip("\n"))
        if not match:
            continue
        kind, path = match.groups()
        if kind == "BEGIN":
            if open_block is not None:
                raise ReadmeBlockError(f"line {number + 1}: BEGIN {path} inside the block of {open_block[0]}")
            open_block = (path, number)
        else:
            if open_block is None or open_block[0] != path:
                raise ReadmeBlockError(f"line {number + 1}: END {path} without its BEGIN")
            blocks.append(Block(path, open_block[1], number))
            open_block = None
    if open_block is not None:
        raise ReadmeBlockError(f"line {open_block[1] + 1}: BEGIN {open_block[0]} has no END")
    return blocks


def snippet(block: Block, root: Path) -> str:
    """The file content a block must hold, ending with a newline."""
    source = root / block.path
    if not source.is_file():
        raise ReadmeBlockError(
            f"line {block.begin + 1}: {block.path} does not exist (run its measuring command)"
        )
    body = source.read_text()
    return body if body.endswith("\n") else body + "\n"


def synced(text: str, root: Path = ROOT) -> str:
    """``text`` (README content) with every block's body replaced by its file's content."""
    lines = text.splitlines(keepends=True)
    out, last = [], 0
    for block in find_blocks(lines):
        out += [*lines[last : block.begin + 1], snippet(block, root)]
        last = block.end
    return "".join(out + lines[last:])


def stale_blocks(text: str, root: Path = ROOT) -> list[str]:
    """Paths of the blocks whose body differs from their file."""
    lines = text.splitlines(keepends=True)
    return [b.path for b in find_blocks(lines) if "".join(lines[b.begin + 1 : b.end]) != snippet(b, root)]


def sync_page(page: Path, root: Path, check: bool) -> int:
    """0 when ``page`` is (or is now) in sync, 1 when ``check`` found stale blocks, 2 when malformed."""
    text = page.read_text()
    try:
        new = synced(text, root)
        stale = stale_blocks(text, root)
    except ReadmeBlockError as err:
        print(f"{page}: {err}", file=sys.stderr)
        return 2
    if check:
        for path in stale:
            print(f"{page}: the block of {path} differs from the file; run python benchmarks/sync_readme.py")
        return 1 if stale else 0
    if new != text:
        page.write_text(new)
        print(f"{page}: refreshed {', '.join(stale)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--readme", type=Path, help="one page (its folder is taken as the root); default: every page"
    )
    parser.add_argument(
        "--check", action="store_true", help="report blocks that differ from their files; exit 1 if any"
    )
    args = parser.parse_args(argv)
    targets = [(args.readme, args.readme.parent)] if args.readme else [(p, ROOT) for p in pages()]
    return max(sync_page(page, root, args.check) for page, root in targets)


if __name__ == "__main__":
    sys.exit(main())
