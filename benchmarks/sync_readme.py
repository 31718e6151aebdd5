"""Copy every measured snippet into README.md: ``python benchmarks/sync_readme.py [--check]``.

A measuring command writes its figures to ``benchmarks/results/<topic>/summary.md``; README.md
includes that file verbatim between the lines ``<!-- BEGIN benchmarks/results/<topic>/summary.md -->``
and ``<!-- END benchmarks/results/<topic>/summary.md -->``. This script rewrites every such block from
its file (``--check``: only report the blocks that differ, exit 1), so that a README figure is always
the one a command wrote. ``tests/test_readme_figures.py`` runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- (BEGIN|END) (benchmarks/results/[^ ]+/summary\.md) -->$")


class ReadmeBlockError(ValueError):
    """A malformed block: unpaired or nested markers, or a marker whose file does not exist."""


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository root
    begin: int  # line index of the BEGIN marker
    end: int  # line index of the END marker


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument(
        "--check", action="store_true", help="report blocks that differ from their files; exit 1 if any"
    )
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    try:
        new = synced(text, args.readme.parent)
        stale = stale_blocks(text, args.readme.parent)
    except ReadmeBlockError as err:
        print(f"{args.readme}: {err}", file=sys.stderr)
        return 2
    if args.check:
        for path in stale:
            print(
                f"{args.readme}: the block of {path} differs from the file; run python benchmarks/sync_readme.py"
            )
        return 1 if stale else 0
    if new != text:
        args.readme.write_text(new)
        print(f"{args.readme}: refreshed {', '.join(stale)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
