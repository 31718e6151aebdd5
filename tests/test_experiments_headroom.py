"""The headroom experiment's statistics by hand (t quantiles from tables, the sign test, the MDD),
its AUC, its pre-stated verdict, and that the sweep resumes: runs already in its results are skipped."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import warm_python

from occ_fast.experiments import headroom
from occ_fast.experiments.paired import compare, comparison_lines, paired, sign_test_p, t_quantile


@pytest.mark.parametrize(
    ("p", "df", "table"), [(0.975, 7, 2.365), (0.8, 7, 0.896), (0.975, 2, 4.303), (0.975, 1, 12.706)]
)
def test_t_quantiles_match_the_tables(p, df, table):
    assert t_quantile(p, df) == pytest.approx(table, abs=1e-3)


def test_sign_test_by_hand():
    assert sign_test_p(8, 0) == pytest.approx(2 / 256)
    assert sign_test_p(6, 2) == pytest.approx(2 * (1 + 8 + 28) / 256)
    assert sign_test_p(0, 0) == 1.0


def test_an_even_split_reads_p_1_not_more():
    """4 seeds above and 4 below: 2 x (1 + 8 + 28 + 56 + 70) / 256 = 1.27 before the cap; a p-value is at most 1."""
    assert sign_test_p(4, 4) == 1.0
    assert sign_test_p(3, 4) == 1.0  # 2 x 64 / 128
    assert sign_test_p(2, 5) == pytest.approx(2 * (1 + 7 + 21) / 128)


def test_a_seed_with_no_difference_counts_neither_above_nor_below():
    """Ties are dropped from the sign test: 3 above, 0 below, 2 tied reads p = 2 / 8."""
    got = compare([0.3, 0.0, 0.2, 0.1, 0.0])
    assert (got["above"], got["below"], got["n"]) == (3, 0, 5)
    assert got["sign_p"] == pytest.approx(0.25)


def test_paired_differences_use_only_the_seeds_the_reference_has():
    """An arm's extra seed (its reference run failed or is still running) is left out of the
    comparison, not compared against nothing; so is a seed whose value is missing."""
    rows = [
        {"setting": "ref", "seed": 0, "auc": 0.5},
        {"setting": "ref", "seed": 1, "auc": 0.25},
        {"setting": "ref", "seed": 3, "auc": None},
        {"setting": "occ", "seed": 0, "auc": 0.75},
        {"setting": "occ", "seed": 1, "auc": 0.5},
        {"setting": "occ", "seed": 2, "auc": 0.9},
        {"setting": "occ", "seed": 3, "auc": 0.1},
    ]
    assert paired(rows, "ref", "occ", "auc") == [0.25, 0.25]
    (line,) = comparison_lines(rows, "ref", ["ref", "occ"], "auc")[2:]
    assert line.startswith("| occ | +0.250 | [+0.250, +0.250] | above | 2/0 of 2 | 0.500 | 0.000 |")


def test_compare_by_hand():
    got = compare([0.1, 0.2, 0.3])  # mean 0.2, sd 0.1, se 0.1 / sqrt(3); t(0.975, 2) 4.303, t(0.8, 2) 1.061
    se = 0.1 / math.sqrt(3)
    assert got["mean"] == pytest.approx(0.2)
    assert (got["low"], got["high"]) == pytest.approx((0.2 - 4.303 * se, 0.2 + 4.303 * se), abs=1e-3)
    assert got["reading"] == "within noise" and (got["above"], got["below"]) == (3, 0)
    assert got["mdd"] == pytest.approx((4.303 + 1.061) * se, abs=1e-3)
    assert compare([0.2, 0.21, 0.19, 0.2])["reading"] == "above"
    assert compare([-0.2, -0.21, -0.19, -0.2])["reading"] == "below"


def test_auc_is_the_trapezoid_mean():
    assert headroom.auc([(0, 0.3), (10, 0.5), (20, 0.5)]) == pytest.approx((10 * 0.4 + 10 * 0.5) / 20)


def rows_with(effects: dict[str, float], seeds: int = 8) -> list[dict]:
    """Per-seed AUCs: a seed level plus each arm's effect plus a little seed-by-arm wiggle."""
    return [
        {"setting": arm, "seed": s, "auc": 0.4 + 0.05 * s + effect + 0.002 * ((s * (i + 3)) % 5 - 2)}
        for s in range(seeds)
        for i, (arm, effect) in enumerate(effects.items())
    ]


def test_verdict_supports_only_the_full_ordering():
    order = {
        "detach": 0.0,
        "detach-lr1.5x": 0.01,
        "ce-1.0": -0.05,
        "policy-0.1": 0.0,
        "occ": 0.05,
        "oracle": 0.06,
    }
    status, lines = headroom.verdict(rows_with(order))
    assert status == "supported" and len(lines) == 4
    assert (
        headroom.verdict(rows_with(order | {"detach-lr1.5x": 0.05}))[0] == "refuted"
    )  # a larger step does as well
    assert headroom.verdict(rows_with(order | {"occ": 0.0}))[0] == "refuted"
    assert headroom.verdict(rows_with(order, seeds=1))[0] == "incomplete"


WARM = {"dir": "w", "sft_steps": 25, "heldout_accuracy": 0.3, "reached": True, "trajectory": [], "seconds": 1}
ROW = {"curve": [(0, 0.3), (100, 0.5)], "auc": 0.5, "final_accuracy": 0.5, "final_reward": 0.5, "seconds": 1}


def _stub_runs(monkeypatch, train) -> None:
    """The sweep without its training: every warm start is ``WARM``, every run's row ``ROW``, and
    ``train(cfg, console)`` gets a config whose ``name`` is ``(arm, seed)``."""
    monkeypatch.setattr(headroom, "build_warm_start", lambda args, seed, console: WARM | {"seed": seed})
    monkeypatch.setattr(headroom, "run_config", lambda args, arm, seed, w: SimpleNamespace(name=(arm, seed)))
    monkeypatch.setattr(headroom, "prepare_run_dir", lambda cfg: cfg)
    monkeypatch.setattr(headroom, "train", train)
    monkeypatch.setattr(
        headroom, "run_row", lambda arm, seed, cfg, w, s: ROW | {"setting": arm, "seed": seed}
    )


def test_sweep_skips_runs_already_in_results(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "addition.json").write_text(json.dumps({"runs": [ROW | {"setting": "detach", "seed": 0}]}))
    trained = []
    _stub_runs(monkeypatch, lambda cfg, console: trained.append(cfg.name))
    argv = [
        "--arms",
        "detach",
        "occ",
        "--seeds",
        "2",
        "--output",
        str(tmp_path / "runs"),
        "--results",
        str(results),
    ]
    assert headroom.main(argv) == 0
    assert trained == [("occ", 0), ("detach", 1), ("occ", 1)]
    rows = json.loads((results / "addition.json").read_text())["runs"]
    assert sorted((r["setting"], r["seed"]) for r in rows) == [
        ("detach", 0),
        ("detach", 1),
        ("occ", 0),
        ("occ", 1),
    ]
    assert "paired by seed" in (results / "summary.md").read_text()


def test_a_warm_start_built_with_other_settings_is_refused_not_reused(tmp_path):
    """A warm start is reused only by a sweep that would build the same one: another threshold or
    SFT schedule is refused, naming the directory, instead of silently starting every arm from it."""
    argv = ["--task", "addition", "--output", str(tmp_path), "--results", str(tmp_path / "results")]
    args = headroom.parse_args(argv)
    target = tmp_path / "warm-start" / "seed0"
    target.mkdir(parents=True)
    info = {"seed": 0, "dir": str(target), "settings": headroom.warm_settings(args, 0)}
    (target / "warm.json").write_text(json.dumps(info))
    assert headroom.build_warm_start(args, 0, None) == info  # the same settings: reused
    for other, change in (
        (["--threshold", "0.5"], f"threshold {args.threshold}"),
        (["--check-every", "50"], "check_every 25"),
    ):
        with pytest.raises(
            SystemExit, match=rf"{re.escape(str(target))}: built with {change} \(this sweep's"
        ):
            headroom.build_warm_start(headroom.parse_args(argv + other), 0, None)
    stale = {**info, "settings": {**info["settings"], "sft_schedule": "constant"}}
    (target / "warm.json").write_text(json.dumps(stale))
    with pytest.raises(SystemExit, match=r"sft_schedule 'constant' \(this sweep's 'cosine'\)"):
        headroom.build_warm_start(args, 0, None)
    (target / "warm.json").write_text(json.dumps({"seed": 0, "dir": str(target)}))  # written before settings
    with pytest.raises(SystemExit, match="no record of its settings"):
        headroom.build_warm_start(args, 0, None)


def test_each_task_has_the_threshold_its_pilot_set_unless_one_is_given():
    assert headroom.parse_args(["--task", "carries"]).threshold == 0.3
    assert headroom.parse_args(["--task", "addition"]).threshold == 0.1
    assert headroom.parse_args(["--task", "addition", "--threshold", "0.25"]).threshold == 0.25


def test_each_arm_reports_what_rl_earned_over_its_warm_start_by_hand():
    """Without it a testbed where RL earns nothing would read as 'every arm within noise'."""
    rows = [
        {"setting": "detach", "seed": 0, "curve": [(0, 0.10), (100, 0.30)], "final_accuracy": 0.30},
        {"setting": "detach", "seed": 1, "curve": [(0, 0.20), (100, 0.30)], "final_accuracy": 0.30},
        {"setting": "occ", "seed": 0, "curve": [(0, 0.10), (100, 0.10)], "final_accuracy": 0.10},
    ]
    lines = headroom.gain_lines(rows, ["detach", "occ"])
    # detach: gains 0.2 and 0.1, mean 0.15, sd 0.0707, se 0.05: half-width 12.706 * 0.05 = 0.635,
    # MDD (12.706 + 1.376) * 0.05 = 0.704 (t quantiles 0.975 and 0.8 at 1 degree of freedom)
    # sign test: 2 of 2 seeds up, p = 2 * (1/2)^2 = 0.5; occ's one seed is a tie, p = 1
    assert lines[2] == "| detach | +0.150 | [-0.485, +0.785] | within noise | 2/0 of 2 | 0.500 | 0.704 |"
    assert lines[3] == "| occ | +0.000 | – | too few seeds | 0/0 of 1 | 1.000 | – |"


def test_a_sweep_killed_while_writing_its_results_keeps_the_last_complete_file(tmp_path, killed_mid_write):
    """The results file is what the sweep resumes from: a kill in the middle of rewriting it must leave
    the previous, complete file (a torn one would stop every later sitting)."""
    args = headroom.parse_args(["--results", str(tmp_path), "--output", str(tmp_path / "runs")])
    warm = [{"seed": 0, "sft_steps": 25, "heldout_accuracy": 0.1, "reached": True}]
    row = {"setting": "detach", "seed": 0, "curve": [(0, 0.1), (10, 0.2)], "auc": 0.15, "final_accuracy": 0.2}
    headroom.write(args, warm, [row | {"final_reward": 0.3}])
    before = (tmp_path / "addition.json").read_text()
    with killed_mid_write():
        headroom.write(
            args, warm, [row | {"final_reward": 0.3}, row | {"setting": "occ", "final_reward": 0.4}]
        )
    assert (tmp_path / "addition.json").read_text() == before
    assert json.loads(before)["runs"][0]["setting"] == "detach"


def test_a_shard_runs_only_its_seeds_and_keeps_the_runs_another_shard_wrote_meanwhile(tmp_path, monkeypatch):
    results = tmp_path / "results"
    argv = [
        "--arms",
        "detach",
        "occ",
        "--seeds",
        "4",
        "--output",
        str(tmp_path / "runs"),
        "--results",
        str(results),
    ]
    other = headroom.parse_args([*argv, "--shard", "0/2"])
    trained = []

    def train(cfg, console):
        trained.append(cfg.name)
        if len(trained) == 1:  # the other shard finishes a run of its own meanwhile
            headroom.write(other, [WARM | {"seed": 0}], [ROW | {"setting": "detach", "seed": 0}])

    _stub_runs(monkeypatch, train)
    assert headroom.main([*argv, "--shard", "1/2"]) == 0
    assert trained == [("detach", 1), ("occ", 1), ("detach", 3), ("occ", 3)]
    stored = json.loads((results / "addition.json").read_text())
    assert [(r["setting"], r["seed"]) for r in stored["runs"]] == [
        ("detach", 0), ("detach", 1), ("occ", 1), ("detach", 3), ("occ", 3)
    ]  # fmt: skip
    assert [w["seed"] for w in stored["warm_start"]] == [0, 1, 3]
    assert "shard" not in stored["args"]  # the sweep's settings, the same for every shard


def test_a_shard_waits_for_the_lock_and_keeps_what_the_other_wrote_under_it(tmp_path):
    """A write reads the results file, merges and replaces it: a shard that did so while another was
    between its read and its replace would drop the other's run. Here this test holds the lock, as a
    shard does while it writes, and a real second process must wait for it, then merge."""
    writer = [*warm_python.PYTHON, str(Path(__file__).with_name("headroom_writer.py")), str(tmp_path), "1"]
    with headroom.locked(tmp_path):
        shard = subprocess.Popen(writer, env=warm_python.environ(os.environ))
        deadline = time.monotonic() + 120
        while not (tmp_path / "ready").exists() and shard.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the other shard is now in its write
        assert not (tmp_path / "addition.json").exists(), "the other shard wrote while the lock was held"
        ours = {
            "setting": "detach",
            "seed": 0,
            "curve": [(0, 0.1), (10, 0.3)],
            "auc": 0.2,
            "final_accuracy": 0.3,
            "final_reward": 0.4,
        }
        (tmp_path / "addition.json").write_text(json.dumps({"warm_start": [], "runs": [ours]}))
    assert shard.wait(timeout=120) == 0
    stored = json.loads((tmp_path / "addition.json").read_text())
    assert [(r["setting"], r["seed"]) for r in stored["runs"]] == [("detach", 0), ("detach", 1)]


@pytest.mark.parametrize("value", ["2/2", "1", "a/b", "-1/2", "1/0"])
def test_a_bad_shard_is_named(value, capsys):
    with pytest.raises(SystemExit):
        headroom.parse_args([f"--shard={value}"])
    assert f"--shard: {value!r} is not I/N" in capsys.readouterr().err
