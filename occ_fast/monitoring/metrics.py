"""Run metrics: ``metrics.jsonl`` always, TensorBoard and W&B when asked, PNG plots on demand.

``metrics.jsonl`` (one ``{"step": s, ...}`` object per line, strict JSON with non-finite values as
``null``, each line one unbuffered write) is the source of
truth: plots are redrawn from it, and a resumed run truncates it to the checkpoint's step so that
steps replayed after the resume are not logged twice.

A full disk: a metrics write raises :class:`MetricsWriteError` naming the file (the run stops at a
checkpoint); a plot that cannot be written is only a warning, given once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from occ_fast.monitoring.output import describe

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"
PLOTS_SUBDIR = "plots"
WANDB_ID_FILE = "wandb_run_id"

logger = logging.getLogger(__name__)


class MetricsWriteError(RuntimeError):
    """A step's metrics could not be written (a full disk); the message names the file."""


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Parse a metrics file (``null`` values come back as NaN). A torn last line (a crash mid-write) is
    dropped; any other bad line is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("not an object with a 'step' field")
        except ValueError as exc:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: malformed metrics line ({exc}): {line[:80]!r}") from exc
        records.append({k: math.nan if v is None else v for k, v in record.items()})  # null: non-finite
    return records


@dataclass(frozen=True)
class Panel:
    """One axes of a plot: series in one unit and of one scale, so none is flattened by another."""

    series: Sequence[str]
    ylabel: str
    band: tuple[str, str] | None = None  # (low, high) metrics shaded around the series where they differ
    log: bool = False  # a log axis when the values are positive and span a decade or more
    note: str = ""  # what the panel leaves out, printed above it


def plot_metrics(
    metrics_path: str | Path, out_dir: str | Path, plots: Mapping[str, Sequence[Panel]]
) -> list[Path]:
    """Draw one PNG per plot (``{"reward": [Panel(["reward/mean"], "reward")]}``) from a metrics file.

    Series not logged yet (e.g. eval accuracy before the first eval) are left out, and a plot with
    none of its series gets no file; the written paths are returned.
    """
    records = read_metrics(metrics_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, panels in plots.items():
        figure = draw_figure(records, name, panels)
        if figure is None:
            continue
        target = out_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        figure.savefig(target)
        written.append(target)
    return written


def draw_figure(records: Sequence[Mapping[str, Any]], title: str, panels: Sequence[Panel]) -> Figure | None:
    """The panels that have data, stacked over one step axis; None when none has."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = [p for p in panels if any(_points(records, key) for key in p.series)]
    if not panels:
        return None
    figure = Figure(figsize=(7, 2 + 2 * len(panels)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    all_axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axes, panel in zip(all_axes, panels):
        draw_panel(
            axes, records, panel.series, ylabel=panel.ylabel, band=panel.band, log=panel.log, note=panel.note
        )
    all_axes[-1].set_xlabel("step")
    all_axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    figure.suptitle(title)
    return figure


# Series of one panel often coincide (mean reward and accuracy of a 0/1 reward): each gets its own
# line style and marker, so a later one never hides an earlier one.
_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "x")]


def draw_panel(
    axes: Any,
    records: Sequence[Mapping[str, Any]],
    series: Sequence[str],
    *,
    ylabel: str,
    band: tuple[str, str] | None = None,
    log: bool = False,
    note: str = "",
) -> bool:
    """Plot each of ``series`` against step on ``axes``; False when none has been logged.

    ``band``: a min..max pair shaded rather than drawn as lines, which would repeat the series
    wherever the spread is 0; when it is 0 at every step the panel says so instead.
    """
    values: list[float] = []
    for key in series:
        points = _points(records, key)
        if points:
            steps, ys = zip(*points)
            linestyle, marker = _STYLES[len(axes.get_lines()) % len(_STYLES)]
            axes.plot(
                steps, ys, label=key, linestyle=linestyle, marker=marker,
                markevery=max(1, len(points) // 25), markersize=4, alpha=0.85,
            )  # fmt: skip
            values += ys
    if not values:
        return False
    if band:
        low, high = (dict(_points(records, key)) for key in band)
        steps = sorted(low.keys() & high.keys())
        if any(high[s] > low[s] for s in steps):
            lows, highs = [low[s] for s in steps], [high[s] for s in steps]
            axes.fill_between(steps, lows, highs, alpha=0.25, label=f"{band[0]} .. {band[1]}")
            values += lows + highs
        elif steps:
            note = "\n".join(
                filter(None, [note, f"{band[0]} = {band[1]} at every step, so no min..max band"])
            )
    finite = [v for v in values if math.isfinite(v)]  # a skipped step's NaN is a gap, not a value
    if log and finite and min(finite) > 0 and max(finite) >= 10 * min(finite):
        axes.set_yscale("log")
    if note:
        axes.set_title(note, loc="left", fontsize=8)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend()
    return True


def _points(records: Sequence[Mapping[str, Any]], key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every record that logged ``key`` as a number."""
    return [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]


class MetricsLogger:
    """Writes each step's metrics to every enabled sink.

    resume_step: continue an existing run from its checkpoint step; lines with a larger step are
    dropped from metrics.jsonl (and TensorBoard events purged). Without it, an existing non-empty
    metrics.jsonl is an error, so two runs never mix in one file.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool = False,
        wandb: bool = False,
        wandb_project: str | None = None,
        wandb_run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
        resume_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self._last_step = -1
        if resume_step is not None:
            self._truncate(resume_step)
            self._last_step = resume_step
        elif self.path.is_file() and self.path.stat().st_size > 0:
            raise FileExistsError(
                f"{self.path} already holds metrics: pass resume_step to continue that run, or use a new run_dir"
            )
        # Unbuffered: a line is on disk once log returns, and a failed write leaves nothing queued
        # for a later flush to fail on again.
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the logger
        self._plot_failed = False
        self._tensorboard = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step is not None else None
            self._tensorboard = SummaryWriter(str(self.run_dir / TENSORBOARD_SUBDIR), purge_step=purge)
        self._wandb = self._start_wandb(wandb_project, wandb_run_name, config) if wandb else None

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` (numbers, bools, or one-element tensors/arrays) for ``step``."""
        if step < self._last_step:
            raise ValueError(
                f"MetricsLogger.log: step {step} is before the last logged step {self._last_step}"
            )
        values = {key: _scalar(key, value) for key, value in metrics.items()}
        if "step" in values:
            raise ValueError("MetricsLogger.log: 'step' is reserved; pass it as the step argument")
        line = (json.dumps({"step": step, **_json_safe(values)}, allow_nan=False) + "\n").encode()
        try:
            written = self._file.write(line)
        except OSError as e:
            raise MetricsWriteError(f"{describe(e)} writing {self.path}") from e
        if written != len(line):  # a short write: the disk filled up mid-line
            raise MetricsWriteError(f"no space left on device writing {self.path}")
        self._last_step = step
        if self._tensorboard is not None:
            try:
                for key, value in values.items():
                    self._tensorboard.add_scalar(key, value, step)
                self._tensorboard.flush()
            except OSError as e:
                where = self.run_dir / TENSORBOARD_SUBDIR
                raise MetricsWriteError(f"{describe(e)} writing TensorBoard events under {where}") from e
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def plot(self, plots: Mapping[str, Sequence[Panel]]) -> list[Path]:
        """Redraw the PNGs under ``run_dir/plots`` from everything logged so far. A plot is not worth
        a run: one that cannot be written (a full disk) gets a warning, the first time only."""
        try:
            return plot_metrics(self.path, self.run_dir / PLOTS_SUBDIR, plots)
        except OSError as e:
            if not self._plot_failed:
                logger.warning(
                    "%s writing plots under %s: training goes on, plots may be missing or stale "
                    "(this warning is not repeated)",
                    describe(e), self.run_dir / PLOTS_SUBDIR,
                )  # fmt: skip
                self._plot_failed = True
            return []

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _truncate(self, resume_step: int) -> None:
        if not self.path.is_file():
            return
        kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(_json_safe(r), allow_nan=False) + "\n" for r in kept))
        os.replace(tmp, self.path)

    def _start_wandb(self, project: str | None, name: str | None, config: Mapping[str, Any] | None) -> Any:
        try:
            import wandb
        except ImportError as exc:
            raise ImportError(
                "W&B logging was enabled but wandb is not installed: pip install wandb"
            ) from exc
        id_file = self.run_dir / WANDB_ID_FILE
        if not id_file.is_file():  # one W&B run per run_dir, so resuming continues the same curves
            id_file.write_text(wandb.util.generate_id())
        return wandb.init(
            project=project,
            name=name,
            config=dict(config or {}),
            dir=str(self.run_dir),
            id=id_file.read_text().strip(),
            resume="allow",
        )


def _json_safe(values: Mapping[str, Any]) -> dict[str, Any]:
    """NaN and infinities as ``null``: strict JSON (``json.dumps`` would write bare ``NaN``)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}


def _scalar(key: str, value: Any) -> float | int | bool:
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        count = value.numel() if isinstance(value, torch.Tensor) else value.size
        if count != 1:
            raise ValueError(f"metric {key!r} has {count} elements; log a scalar")
        value = value.item()
    if isinstance(value, (bool, int, float)):
        return value
    raise TypeError(f"metric {key!r} is a {type(value).__name__}; metrics must be numbers")
