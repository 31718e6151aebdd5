"""The progress bars every long-running command shows: description, bar, done/total, elapsed."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress_bars(console: Console, *, disable: bool = False) -> Progress:
    """A :class:`rich.progress.Progress` on ``console``; ``disable`` hides it (ranks other than 0)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=disable,
    )
