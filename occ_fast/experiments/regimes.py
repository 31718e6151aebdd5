"""The MTP regime comparison at small scale (method.md sections 5, 6, 8): ``python -m occ_fast.experiments.regimes``.

Trains a preset (default ``tiny``: 2-digit addition, 80 RL steps; its settings unchanged; ``--preset
carries``: 3-digit addition with the carries written out, a 0.86M-parameter model) under ``detach``,
``ce``, ``policy`` with fixed lam 0.1 / 0.5 / 1.0 and ``occ``, for S seeds each, one after the
other, then scores every run greedily on held-out problems and writes ``results.md``,
``results.json``, ``summary.md`` (the snippet README.md includes), ``reward.png`` and ``lam.png`` to
the output directory (default
``./runs/regimes-<timestamp>``)::

    python -m occ_fast.experiments.regimes                               # 6 settings x 3 seeds
    python -m occ_fast.experiments.regimes --regimes detach occ --seeds 2 --steps 40
    python -m occ_fast.experiments.regimes --extra="--optim.lr 1e-3"     # any trainer override, every run
    python -m occ_fast.experiments.regimes --output runs/regimes-X --resume   # finish an interrupted sweep
    python -m occ_fast.experiments.regimes --regimes detach ce ce-1.0 detach-1.0   # the MTP CE weight c
    python -m occ_fast.experiments.regimes --regimes detach policy-0.03 policy-3.0 occ occ-10.0  # dose-response
    python -m occ_fast.experiments.regimes --preset carries --regimes detach ce occ  # the longer-answer task
    python -m occ_fast.experiments.regimes --output DIR --summarize-only  # tables again from DIR/results.json

``ce-<c>`` / ``detach-<c>`` set the MTP cross-entropy coefficient c (the preset's is 0.1), ``policy-<lam>``
the fixed lam, ``occ-<lam_plus>`` OCC's global scale lam_plus (the preset's is 1.0; the proxy scales
with the learning rate, so its scale is OCC's free parameter). A ``policy``/``occ`` setting followed by
``+ce-<c>`` (``occ+ce-0.1``, ``occ-10.0+ce-0.1``) also trains the MTP heads with c times their
cross-entropy (``--mtp.head-ce-coef``, not part of the method). The first setting is the reference
of the paired differences in the table.

Shared warm start. The SFT warm start is done once per seed (``warm-start/seed<S>/``) and every
regime of that seed starts RL from it (``--model.name-or-path``, SFT steps 0), with the same RNG
state, so their step-0 rollouts are identical. Letting each run warm-start itself would *not* give
identical starts: under ``detach`` the MTP input is cut from the trunk during the SFT too, so the
MTP cross-entropy no longer shapes the trunk (after 20 SFT steps all 43 trunk/head tensors differ
from the other regimes', which agree exactly). The shared start is trained as every non-detach
regime would train it (joint cross-entropy, as in pretraining). It also saves 15 of the 18 SFT phases.

Cost on 2 CPU cores: one ``time python -m occ_fast.train`` of the tiny preset takes 72 s (about 10 s
start-up, 30 s SFT, 32 s for 80 RL steps with periodic eval, plots and checkpoints). Here one seed's
warm start (with its held-out score) takes about 28 s and each regime run about 31 s (``--regimes
occ --seeds 1``: 68 s in all, start-up included), so the default sweep (3 warm starts, 18 runs)
takes about 11 minutes on an otherwise idle machine, well inside the 30-minute budget: the preset's
full setting is kept.

Numbers per run: final reward = mean ``reward/mean`` over the last 10 RL steps; held-out accuracy
= greedy accuracy on the same N problems of the synthetic held-out split for every run (drawn with
data seed 0; the split is fixed by the problem, so no training draw of any seed can contain them);
MTP accuracy = mean ``mtp/accuracy`` over the last 10 steps; final lam = the coefficient applied to
the MTP policy term at the last step (OCC's ``lam_t``, the fixed lam of ``policy``; none for
``detach``/``ce``, whose MTP term is a cross-entropy); OCC proxy lam = the last step's logged OCC
estimate, which the trainer computes in every regime as a diagnostic; forecast acceptance = mean
``spec/forecast_acceptance_rate_n1`` over the last 10 steps, the share of the depth-1 head's greedy
drafts that greedy verification of the sampled rollouts would accept (``occ_fast.spec_forecast``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from rich.console import Console
from rich.progress import Progress

from occ_fast.avg_at_k import evaluate
from occ_fast.checkpointing.files import find_latest
from occ_fast.config import Config, ConfigError, parse_config
from occ_fast.eval import load_causal_lm
from occ_fast.experiments.paired import comparison_lines
from occ_fast.model import save_mtp_model
from occ_fast.monitoring.metrics import read_metrics
from occ_fast.monitoring.output import write_text_atomic
from occ_fast.rewards import RewardScorer
from occ_fast.rollout import TransformersEngine
from occ_fast.tokenizer import load_tokenizer
from occ_fast.train import train
from occ_fast.training.build import build_model, build_tokenizer, eval_records, resolve_device
from occ_fast.training.warm_start import sft_warm_start

DEFAULT_SETTINGS = ("detach", "ce", "policy-0.1", "policy-0.5", "policy-1.0", "occ")
POLICY_DEFAULT_LAMS = ("0.1", "0.5", "1.0")
TAIL_STEPS = 10  # final reward and MTP accuracy average the last this many RL steps
SMOOTH_WINDOW = 5  # trailing moving average of the plotted curves
FORECAST_KEY = "spec/forecast_acceptance_rate_n1"  # one drafted token per step of the depth-1 head
SUMMARY_KEYS = (
    "final_reward", "heldout_accuracy", "mtp_accuracy", "forecast_acceptance", "final_lam", "final_lam_proxy"
)  # fmt: skip
PAIRED_KEYS = ("final_reward", "heldout_accuracy", "mtp_accuracy")  # also as differences from the reference
PAIRED_TITLES = {"final_reward": "reward", "heldout_accuracy": "held-out", "mtp_accuracy": "MTP accuracy"}
# Trainer flags the sweep sets itself; an --extra naming one would silently change what is compared.
CONTROLLED_FLAGS = frozenset(
    {
        "--mtp.regime", "--mtp.coef", "--mtp.lam-plus", "--mtp.head-ce-coef", "--preset", "--train.seed", "--data.seed", "--model.name-or-path",
        "--model.mtp-init", "--run.output-dir", "--run.name", "--run.resume",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Setting:
    """One regime setting of the sweep: ``detach``, ``ce``, ``occ``, or ``<regime>-<coef>`` for
    ``policy`` (its fixed lam), ``detach``/``ce`` (the MTP cross-entropy coefficient c) and ``occ``
    (its global scale lam_plus); ``+ce-<c>`` after a ``policy``/``occ`` setting adds the MTP heads'
    cross-entropy with coefficient c (``mtp.head_ce_coef``)."""

    name: str
    regime: str
    coef: float | None = None  # None: the preset's mtp.coef (mtp.lam_plus for occ)
    head_ce: float | None = None  # None: the preset's mtp.head_ce_coef

    def flags(self) -> list[str]:
        flag = "--mtp.lam-plus" if self.regime == "occ" else "--mtp.coef"
        coef = [] if self.coef is None else [flag, repr(self.coef)]
        head_ce = [] if self.head_ce is None else ["--mtp.head-ce-coef", repr(self.head_ce)]
        return ["--mtp.regime", self.regime, *coef, *head_ce]


def parse_settings(names: Sequence[str]) -> list[Setting]:
    """Regime names to settings; ``policy`` alone means the three default fixed lams."""
    settings: list[Setting] = []
    for name in names:
        base, plus, head_ce = name.partition("+ce-")
        if plus:
            setting = parse_settings([base])[0]
            if base == "policy" or setting.regime not in ("policy", "occ") or not _is_positive_float(head_ce):
                raise ValueError(
                    f"unknown regime {name!r}: +ce-<c> follows one occ or policy-<lam> setting, with c > 0 "
                    "(e.g. occ+ce-0.1)"
                )
            settings.append(dataclasses.replace(setting, name=name, head_ce=float(head_ce)))
            continue
        regime, _, coef = name.partition("-")
        if name in ("detach", "ce", "occ"):
            settings.append(Setting(name, name))
        elif name == "policy":
            settings += [Setting(f"policy-{lam}", "policy", float(lam)) for lam in POLICY_DEFAULT_LAMS]
        elif regime in ("policy", "detach", "ce", "occ") and _is_positive_float(coef):
            settings.append(Setting(name, regime, float(coef)))
        else:
            raise ValueError(
                f"unknown regime {name!r}: use detach, ce, occ, policy (= policy-0.1 policy-0.5 policy-1.0), "
                "policy-<lam>, ce-<coef>, detach-<coef> or occ-<lam_plus> with a coefficient > 0, "
                "optionally followed by +ce-<c> for policy/occ"
            )
    duplicates = sorted({s.name for s in settings if [t.name for t in settings].count(s.name) > 1})
    if duplicates:
        raise ValueError(f"regime settings named more than once: {', '.join(duplicates)}")
    return settings


def _is_positive_float(text: str) -> bool:
    try:
        return math.isfinite(float(text)) and float(text) > 0
    except ValueError:
        return False


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m occ_fast.experiments.regimes",
        description="Train a preset under every MTP regime for several seeds; compare them.",
    )
    add_preset_argument(parser)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per setting: 0 .. S-1 (default 3)")
    parser.add_argument(
        "--regimes",
        nargs="+",
        default=list(DEFAULT_SETTINGS),
        help="settings to run: detach ce occ policy (= policy-0.1 policy-0.5 policy-1.0) policy-<lam> "
        "ce-<coef> detach-<coef> occ-<lam_plus>, and policy/occ settings with +ce-<c> (e.g. occ+ce-0.1)",
    )
    parser.add_argument("--steps", type=int, help="RL steps per run (default: the preset's, 80)")
    parser.add_argument("--output", type=Path, help="output directory (default ./runs/regimes-<timestamp>)")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        help='trainer overrides for every run, e.g. --extra="--optim.lr 1e-3" (repeatable)',
    )
    parser.add_argument("--held-out", type=int, default=256, help="held-out problems scored per run")
    parser.add_argument("--resume", action="store_true", help="continue --output: skip finished runs")
    parser.add_argument(
        "--summarize-only",
        action="store_true",
        help="rewrite results.md and summary.md from --output's results.json; train nothing",
    )
    args = parser.parse_args(argv)
    try:
        args.settings = parse_settings(args.regimes)
    except ValueError as err:
        parser.error(str(err))
    args.extra = [token for chunk in args.extra for token in shlex.split(chunk)]
    controlled = sorted({f for f in args.extra if f.split("=")[0].replace("_", "-") in CONTROLLED_FLAGS})
    if controlled:
        parser.error(f"--extra may not set {', '.join(controlled)}: the sweep sets them per run")
    if args.seeds < 1 or args.held_out < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--seeds, --held-out and --steps must be >= 1")
    if args.summarize_only and (args.output is None or not (args.output / "results.json").is_file()):
        parser.error("--summarize-only needs --output: a sweep directory holding results.json")
    if args.summarize_only:
        return args
    if args.resume and args.output is None:
        parser.error("--resume needs --output: the sweep directory to continue")
    if args.output is None:
        args.output = Path("runs") / f"regimes-{datetime.now():%Y%m%d-%H%M%S}"
    if not args.resume and args.output.exists() and any(args.output.iterdir()):
        parser.error(f"{args.output} is not empty: pass --resume to continue that sweep, or another --output")
    return args


def add_preset_argument(parser: argparse.ArgumentParser) -> None:
    """``--preset``: the trainer preset every run (and its warm start) trains."""
    parser.add_argument(
        "--preset",
        default="tiny",
        help="trainer preset of every run: a name in occ_fast/configs or a YAML path (default tiny)",
    )


def seed_argv(args: argparse.Namespace, seed: int) -> list[str]:
    """Trainer flags shared by the warm start and every run of ``seed``."""
    steps = ["--train.steps", str(args.steps)] if args.steps is not None else []
    return ["--preset", args.preset, *args.extra, *steps, "--train.seed", str(seed), "--data.seed", str(seed)]


def warm_start_dir(args: argparse.Namespace, seed: int) -> Path:
    return args.output / "warm-start" / f"seed{seed}"


def run_config(args: argparse.Namespace, setting: Setting, seed: int) -> Config:
    """A run of ``setting`` starting RL from the seed's shared warm start."""
    return parse_config(
        [
            *seed_argv(args, seed),
            *setting.flags(),
            "--model.name-or-path", str(warm_start_dir(args, seed)),
            "--model.mtp-init", "checkpoint",
            "--train.warmup-sft-steps", "0",
            "--run.output-dir", str(args.output / "runs"),
            "--run.name", f"{setting.name}-seed{seed}",
        ]
    )  # fmt: skip


def build_warm_start(args: argparse.Namespace, seed: int, quiet: Console) -> None:
    """Build and SFT the seed's model as the trainer would (joint MTP cross-entropy); save it."""
    cfg = parse_config([*seed_argv(args, seed), "--mtp.regime", "occ", "--run.name", "warm-start"])
    torch.manual_seed(cfg.train.seed)
    tokenizer = build_tokenizer(cfg)
    model = build_model(cfg, tokenizer, resolve_device(cfg))
    if cfg.train.warmup_sft_steps:
        sft_warm_start(cfg, model, tokenizer, Progress(console=quiet))
    target = warm_start_dir(args, seed)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_mtp_model(model, partial, tokenizer=tokenizer)
    partial.rename(target)  # a directory that exists is complete


def heldout_accuracy(model_dir: Path, cfg: Config, num_problems: int) -> float:
    """Greedy accuracy on the first ``num_problems`` of the held-out split (the same for every run)."""
    eval_cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, seed=0),
        eval=dataclasses.replace(cfg.eval, num_problems=num_problems, path=None),
    )
    model = load_causal_lm(model_dir, torch.float32).to(resolve_device(cfg))
    with RewardScorer(cfg.reward.fn, num_workers=0) as scorer:
        result = evaluate(
            TransformersEngine(model, max_batch_size=cfg.rollout.batch_size),
            load_tokenizer(model_dir),
            eval_records(eval_cfg),
            scorer,
            k=1,
            temperature=0.0,
            max_new_tokens=cfg.rollout.max_new_tokens,
        )
    return result.avg_at_k


def run_numbers(setting: Setting, seed: int, cfg: Config, heldout: float) -> dict[str, Any]:
    """One finished run's row of results.json, from its metrics.jsonl and held-out score."""
    metrics = read_metrics(cfg.run_dir / "metrics.jsonl")
    tail = metrics[-TAIL_STEPS:]
    last_lam = metrics[-1].get("mtp/lam")
    applied = {"occ": last_lam, "policy": setting.coef}.get(setting.regime)
    mtp_hits = [m["mtp/accuracy"] for m in tail if "mtp/accuracy" in m]  # absent without MTP heads
    accepted = [m[FORECAST_KEY] for m in tail if FORECAST_KEY in m]
    return {
        "setting": setting.name,
        "regime": setting.regime,
        "seed": seed,
        "run_dir": str(cfg.run_dir),
        "steps": len(metrics),
        "final_reward": statistics.mean(m["reward/mean"] for m in tail),
        "heldout_accuracy": heldout,
        "mtp_accuracy": statistics.mean(mtp_hits) if mtp_hits else None,
        "forecast_acceptance": statistics.mean(accepted) if accepted else None,
        "final_lam": applied,
        "final_lam_proxy": last_lam,
    }


def summarize(runs: list[dict[str, Any]], settings: list[Setting]) -> dict[str, dict[str, Any]]:
    """Per setting: seed count, then mean and sample std (None with one seed) of every number.

    ``paired_*``: the per-seed difference from the first setting (the reference), averaged over the
    seeds both have run. Every setting of a seed starts from the same warm start, so the pairing
    removes the warm start's seed-to-seed spread, which dwarfs the regime differences here."""

    summary = {}
    for setting in settings:
        rows = [r for r in runs if r["setting"] == setting.name]
        if not rows:
            continue
        entry: dict[str, Any] = {"n": len(rows)}
        for key in SUMMARY_KEYS:
            entry[key] = stat([r[key] for r in rows if r[key] is not None])
        for key in PAIRED_KEYS:
            entry[f"paired_{key}"] = stat(paired_differences(runs, settings[0].name, setting.name, key))
        summary[setting.name] = entry
    return summary


def stat(values: list[float]) -> dict[str, float | None]:
    """Mean and sample std (None without values, std None with one)."""
    return {
        "mean": statistics.mean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
    }


def paired_differences(runs: list[dict[str, Any]], reference: str, setting: str, key: str) -> list[float]:
    """``key`` of ``setting`` minus that of ``reference`` with the same seed, for every seed both ran."""
    base = {r["seed"]: r.get(key) for r in runs if r["setting"] == reference}
    return [
        r[key] - base[r["seed"]]
        for r in runs
        if r["setting"] == setting and base.get(r["seed"]) is not None and r.get(key) is not None
    ]


def _fmt(stat: dict[str, float | None], signed: bool = False, digits: int | None = None) -> str:
    if stat["mean"] is None:
        return "–"
    digits = digits or (4 if signed else 3)  # signed numbers default to lams, OCC's often below 0.01
    mean = f"{stat['mean']:+.{digits}f}" if signed else f"{stat['mean']:.{digits}f}"
    return mean if stat["std"] is None else f"{mean} ± {stat['std']:.{digits}f}"


def command_line(results: dict[str, Any]) -> str:
    """The command that reproduces a sweep, from its results.json."""
    extra = f" --extra={shlex.quote(shlex.join(results['extra']))}" if results["extra"] else ""
    preset = results.get("preset", "tiny")  # sweeps before --preset trained the tiny preset
    preset = "" if preset == "tiny" else f" --preset {shlex.quote(preset)}"
    return (
        f"python -m occ_fast.experiments.regimes{preset} --regimes {' '.join(results['settings'])} "
        f"--seeds {results['seeds']} --steps {' '.join(map(str, results['rl_steps']))} "
        f"--held-out {results['held_out']}{extra}"
    )


def table_lines(results: dict[str, Any]) -> list[str]:
    """The comparison table; the lam columns only where the sweep's results hold them."""
    summary = results["summary"]
    lam_keys = [k for k in ("final_lam", "final_lam_proxy") if all(k in s for s in summary.values())]
    lam_titles = {"final_lam": "final lam", "final_lam_proxy": "OCC proxy lam"}
    forecast = all(s.get("forecast_acceptance", {}).get("mean") is not None for s in summary.values())
    header = ["regime", "seeds", "final reward", "held-out accuracy", "MTP accuracy"]
    header += ["forecast acceptance"] if forecast else []
    header += [f"paired Δ {PAIRED_TITLES[k]}" for k in PAIRED_KEYS] + [lam_titles[k] for k in lam_keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, s in summary.items():
        cells = [
            name,
            str(s["n"]),
            _fmt(s["final_reward"]),
            _fmt(s["heldout_accuracy"]),
            _fmt(s["mtp_accuracy"]),
        ]
        cells += [_fmt(s["forecast_acceptance"])] if forecast else []
        cells += [_fmt(s[f"paired_{key}"], True, 3) for key in PAIRED_KEYS]
        cells += [_fmt(s[key], True) for key in lam_keys]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def per_seed_lines(results: dict[str, Any]) -> list[str]:
    """Held-out accuracy of every run, setting by seed (the pairing the paired differences use)."""
    seeds = sorted({r["seed"] for r in results["runs"]})
    lines = [
        "| held-out accuracy | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|" + "---|" * (len(seeds) + 1),
    ]
    for name in results["summary"]:
        by_seed = {r["seed"]: r["heldout_accuracy"] for r in results["runs"] if r["setting"] == name}
        lines.append(
            f"| {name} | " + " | ".join(f"{by_seed[s]:.3f}" if s in by_seed else "–" for s in seeds) + " |"
        )
    return lines


def reading_lines(results: dict[str, Any]) -> list[str]:
    """The figures the README's reading rests on, computed here so that none is typed by hand."""
    summary = results["summary"]
    reference = results["settings"][0]
    starts = [w["heldout_accuracy"] for w in results["warm_start"]]
    spread = f" ± {statistics.stdev(starts):.3f}" if len(starts) > 1 else ""
    lines = [
        f"Held-out accuracy of the shared SFT warm start (before RL): {statistics.mean(starts):.3f}{spread}."
    ]
    others = {n: s["paired_heldout_accuracy"]["mean"] for n, s in summary.items() if n != reference}
    others = {n: v for n, v in others.items() if v is not None}
    if others:
        worst = max(others, key=lambda n: abs(others[n]))
        seed_std = [
            s["heldout_accuracy"]["std"] for s in summary.values() if s["heldout_accuracy"]["std"] is not None
        ]
        gain = statistics.mean(s["heldout_accuracy"]["mean"] for s in summary.values()) - statistics.mean(
            starts
        )
        lines.append(
            f"Largest paired difference in held-out accuracy from `{reference}`: {others[worst]:+.3f} (`{worst}`)"
            + (
                f"; spread between seeds (std, mean over settings): {statistics.mean(seed_std):.3f}"
                if seed_std
                else ""
            )
            + f"; held-out gain over the warm start (mean over settings): {gain:+.3f}."
        )
    lines += arm_lines(results)
    if "note" in results:
        lines.append(f"Note: {results['note']}")
    return lines


def arm_lines(results: dict[str, Any]) -> list[str]:
    """Every setting against the reference the same way (:mod:`occ_fast.experiments.paired`), for
    held-out accuracy and final reward, and the sign of OCC's final lam seed by seed."""
    reference, names = results["settings"][0], list(results["summary"])
    lines = []
    for key, title in (("heldout_accuracy", "held-out accuracy"), ("final_reward", "final reward")):
        lines += ["", f"Every setting against `{reference}`, paired by seed ({title}):", ""]
        lines += comparison_lines(results["runs"], reference, names, key)
    for name in names:
        lams = [r["final_lam"] for r in results["runs"] if r["setting"] == name and r["regime"] == "occ"]
        lams = [lam for lam in lams if lam is not None]
        if len(lams) > 1:
            lines.append(
                f"\n`{name}` final lam: positive on {sum(lam > 0 for lam in lams)} of {len(lams)} seeds, "
                f"mean {statistics.mean(lams):+.4f}, std {statistics.stdev(lams):.4f}."
            )
    return lines


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    """``results.md``: the sweep's full report (title, method, table, per-seed table, reading figures)."""
    reference = results["settings"][0]
    lines = [
        "# MTP regime comparison at small scale",
        "",
        f"Preset `{results.get('preset', 'tiny')}`; seeds {results['seeds']}; RL steps {', '.join(map(str, results['rl_steps']))}; "
        f"extra overrides `{shlex.join(results['extra'])}`; held-out problems {results['held_out']} (greedy). "
        f"Mean ± sample std over seeds. Final reward and MTP accuracy: mean of the last {TAIL_STEPS} RL "
        f"steps. Paired Δ: the per-seed difference from `{reference}` (same warm start), mean ± std. "
        "Final lam: the coefficient applied to the MTP policy term at the last step (none for "
        "detach/ce); OCC proxy lam: the OCC estimate logged in every regime (mean over the micro-batches "
        "where it is applied, i.e. from the second mini-batch of the step). The paper (method.md "
        "section 8) finds occ >= detach > policy > ce at 7B scale.",
        "",
        *table_lines(results),
        "",
        *per_seed_lines(results),
        "",
        *reading_lines(results),
    ]
    path.write_text("\n".join(lines) + "\n")


def write_summary(path: Path, results: dict[str, Any]) -> None:
    """``summary.md``: the snippet README.md includes (``benchmarks/sync_readme.py``)."""
    lines = [
        f"Measured by `{command_line(results)}`; mean ± sample std over seeds; paired Δ: per-seed "
        f"difference from `{results['settings'][0]}` (same warm start).",
        "",
        *table_lines(results),
        "",
        *per_seed_lines(results),
        "",
        *reading_lines(results),
    ]
    path.write_text("\n".join(lines) + "\n")


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average along the last axis; the first points average what there is."""
    total = np.cumsum(values, axis=-1)
    total[..., window:] = total[..., window:] - total[..., :-window]
    return total / np.minimum(np.arange(1, values.shape[-1] + 1), window)


def seed_curves(run_dirs: list[Path], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps common to every seed and the ``[seeds, steps]`` values of ``key``; None when not logged."""
    per_run = [{m["step"]: m[key] for m in read_metrics(d / "metrics.jsonl") if key in m} for d in run_dirs]
    steps = sorted(set.intersection(*(set(r) for r in per_run)))
    if not steps:
        return None
    return np.array(steps), np.array([[r[s] for s in steps] for r in per_run], dtype=float)


def plot_band(axes: Any, steps: np.ndarray, values: np.ndarray, label: str, color: str) -> None:
    """Mean over seeds of the smoothed curves, shaded ± their std."""
    curves = smooth(values, SMOOTH_WINDOW)
    mean, std = curves.mean(axis=0), curves.std(axis=0)
    axes.plot(steps, mean, label=label, color=color)
    axes.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)


def write_plots(output: Path, runs: list[dict[str, Any]], settings: list[Setting]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colors = {s.name: f"C{i}" for i, s in enumerate(settings)}
    dirs = {s.name: [Path(r["run_dir"]) for r in runs if r["setting"] == s.name] for s in settings}
    present = [s for s in settings if dirs[s.name]]

    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for s in present:
        steps, values = seed_curves(dirs[s.name], "reward/mean")
        plot_band(axes, steps, values, f"{s.name} (n={len(dirs[s.name])})", colors[s.name])
    axes.set(
        xlabel="RL step", ylabel="reward", title=f"training reward (moving average {SMOOTH_WINDOW}, ± std)"
    )
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(output / "reward.png")

    figure = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    applied, proxy = figure.subplots(1, 2)
    for s in present:
        curves = seed_curves(dirs[s.name], "mtp/lam")
        if curves is None:
            continue
        plot_band(proxy, *curves, s.name, colors[s.name])
        if s.regime == "occ":
            plot_band(applied, *curves, s.name, colors[s.name])
        elif s.regime == "policy":
            applied.plot(curves[0], np.full(len(curves[0]), s.coef), label=s.name, color=colors[s.name])
    applied.set_yscale("symlog", linthresh=1e-2)  # OCC's lam_t is small beside the fixed lams
    applied.set(
        xlabel="RL step", ylabel="lam (symlog)", title="coefficient of the MTP policy term (occ, policy)"
    )
    proxy.set(xlabel="RL step", ylabel="lam", title="OCC proxy lam, logged in every regime")
    for axes in (applied, proxy):
        axes.axhline(0.0, color="black", linewidth=0.5)
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
    figure.tight_layout()
    figure.savefig(output / "lam.png")
    write_dose_plot(output, runs, settings)


def write_dose_plot(output: Path, runs: list[dict[str, Any]], settings: list[Setting]) -> None:
    """``dose.png``: paired Δ held-out accuracy and forecast acceptance against the coefficient, for
    ``policy`` (its fixed lam) and ``occ`` (lam_plus), when the sweep has two or more of either, as
    mean ± sample std over seeds like the tables (settings with an added head cross-entropy are left
    out: they are another treatment)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = {  # a setting without its own coefficient (the preset's) has no place on the axis
        regime: [
            s for s in settings
            if s.regime == regime and s.coef is not None and s.head_ce is None and s != settings[0]
        ]
        for regime in ("policy", "occ")
    }  # fmt: skip
    series = {regime: members for regime, members in series.items() if len(members) >= 2}
    if not series:
        return
    figure = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, 2)
    for (regime, members), marker in zip(series.items(), ("o", "s")):
        for axes, key in zip(panels, ("heldout_accuracy", "forecast_acceptance")):
            points = []
            for s in members:
                paired = stat(paired_differences(runs, settings[0].name, s.name, key))
                if paired["mean"] is not None:
                    points.append((s.coef, paired["mean"], paired["std"] or 0.0))
            if points:
                x, mean, std = map(np.array, zip(*sorted(points)))
                label = f"{regime} ({'lam' if regime == 'policy' else 'lam_plus'})"
                axes.errorbar(x, mean, yerr=std, marker=marker, capsize=3, label=label)
    for axes, title in zip(panels, ("held-out accuracy", "forecast acceptance")):
        axes.set_xscale("log")
        axes.axhline(0.0, color="black", linewidth=0.5)
        axes.set(
            xlabel="coefficient (log)",
            ylabel=f"paired Δ from {settings[0].name}",
            title=f"{title}: paired Δ (mean ± std over seeds)",
        )
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
    figure.tight_layout()
    figure.savefig(output / "dose.png")


def write_results(args: argparse.Namespace, runs: list[dict[str, Any]], warm: list[dict[str, Any]]) -> None:
    results = {
        "preset": args.preset,
        "settings": [s.name for s in args.settings],
        "seeds": args.seeds,
        "rl_steps": sorted({r["steps"] for r in runs}),
        "extra": args.extra,
        "held_out": args.held_out,
        "warm_start": warm,
        "runs": runs,
        "summary": summarize(runs, args.settings),
    }
    write_text_atomic(args.output / "results.json", json.dumps(results, indent=2) + "\n")
    write_markdown(args.output / "results.md", results)
    write_summary(args.output / "summary.md", results)
    write_plots(args.output, runs, args.settings)


def prepare_run_dir(cfg: Config) -> Config | None:
    """The config to train with, or None when the run is already finished (under --resume).

    An unfinished run continues from its last checkpoint, or starts over when it has none.
    """
    if (cfg.run_dir / "model").is_dir():
        return None
    if find_latest(cfg.run_dir) is not None:
        return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume="auto"))
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarize_only:
        results = json.loads((args.output / "results.json").read_text())
        write_markdown(args.output / "results.md", results)
        write_summary(args.output / "summary.md", results)
        return 0
    console = Console(stderr=True)
    quiet = Console(quiet=True)
    transformers.logging.set_verbosity_error()  # our own checkpoints: the load reports are expected
    transformers.logging.disable_progress_bar()  # one line per run is the progress report
    jobs = [(seed, s) for seed in range(args.seeds) for s in args.settings]
    try:
        configs = {(seed, s.name): run_config(args, s, seed) for seed, s in jobs}  # all flags checked first
    except ConfigError as err:
        console.print(f"[bold red]invalid configuration[/]\n{err}")
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    console.print(f"regime sweep: {len(args.settings)} settings x {args.seeds} seeds -> {args.output}")
    runs: list[dict[str, Any]] = []
    warm: list[dict[str, Any]] = []
    run_s: list[float] = []  # wall time of the runs trained (and scored) by this invocation
    warm_s: list[float] = []
    for index, (seed, setting) in enumerate(jobs, start=1):
        cfg = configs[(seed, setting.name)]
        start = warm_start_dir(args, seed)
        if not any(w["seed"] == seed for w in warm):
            begin = time.perf_counter()
            if not start.is_dir():
                with console.status(f"seed {seed}: SFT warm start"):
                    build_warm_start(args, seed, quiet)
                warm_s.append(time.perf_counter() - begin)
            accuracy = heldout_accuracy(start, cfg, args.held_out)
            warm.append({"seed": seed, "dir": str(start), "heldout_accuracy": accuracy})
        begin = time.perf_counter()
        todo = prepare_run_dir(cfg)
        if todo is not None:
            with console.status(f"[{index}/{len(jobs)}] training {setting.name} seed {seed}"):
                train(todo, console=quiet)
        row = run_numbers(setting, seed, cfg, heldout_accuracy(cfg.run_dir / "model", cfg, args.held_out))
        runs.append(row)
        write_results(args, runs, warm)
        elapsed = time.perf_counter() - begin
        if todo is not None:
            run_s.append(elapsed)
        starts_left = sum(not warm_start_dir(args, s).is_dir() for s in range(seed + 1, args.seeds))
        eta = (statistics.mean(run_s) if run_s else 0.0) * (len(jobs) - index)
        eta += (statistics.mean(warm_s) if warm_s else 0.0) * starts_left
        console.print(
            f"[{index}/{len(jobs)}] [bold]{setting.name}[/] seed {seed}"
            f"{' (finished earlier)' if todo is None else ''}: reward {row['final_reward']:.3f}"
            f" | held-out {row['heldout_accuracy']:.3f}"
            f" | mtp acc {_fmt({'mean': row['mtp_accuracy'], 'std': None})}"
            f" | lam {_fmt({'mean': row['final_lam'], 'std': None}, True)}"
            f" | {elapsed:.0f}s | ETA {eta / 60:.1f} min"
        )
    console.print(f"results: {args.output / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
