"""The regime sweep end to end on a miniature setting: tables, plots, shared warm start, resume, bad input."""

from __future__ import annotations

import json
import re
import shutil
import statistics

import numpy as np
import pytest
import yaml

from occ_fast.experiments.regimes import (
    FORECAST_KEY,
    PAIRED_KEYS,
    SUMMARY_KEYS,
    arm_lines,
    command_line,
    main,
    parse_args,
    parse_settings,
    run_config,
    seed_argv,
    smooth,
    table_lines,
    write_dose_plot,
    write_results,
)

MINI = (
    "--model.tiny.hidden-size 32 --model.tiny.intermediate-size 64 --model.tiny.num-layers 1 "
    "--train.warmup-sft-steps 5 --train.sft-batch-size 16 --train.steps 2 --data.prompts-per-step 4 "
    "--rollout.n 4 --rollout.max-new-tokens 5 --optim.mini-batches 2 --eval.every 0"
)


def sweep_argv(output, *extra: str) -> list[str]:
    return [
        "--regimes", "detach", "occ", "--seeds", "2", "--held-out", "8",
        "--output", str(output), f"--extra={MINI}", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    output = tmp_path_factory.mktemp("sweep") / "out"
    assert main(sweep_argv(output)) == 0
    return output


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sweep_writes_tables_json_and_plots(sweep):
    table = (sweep / "results.md").read_text()
    assert "| detach | 2 |" in table and "| occ | 2 |" in table
    results = json.loads((sweep / "results.json").read_text())
    assert sorted((r["setting"], r["seed"]) for r in results["runs"]) == [
        ("detach", 0), ("detach", 1), ("occ", 0), ("occ", 1),
    ]  # fmt: skip
    for name in ("detach", "occ"):
        rows = [r for r in results["runs"] if r["setting"] == name]
        entry = results["summary"][name]
        assert entry["n"] == 2
        for key in SUMMARY_KEYS:
            values = [r[key] for r in rows if r[key] is not None]
            if not values:  # detach applies no coefficient to an MTP policy term
                assert (name, key) == ("detach", "final_lam") and entry[key]["mean"] is None
                continue
            assert entry[key]["mean"] == pytest.approx(statistics.mean(values))
            assert entry[key]["std"] == pytest.approx(statistics.stdev(values))
        for key in PAIRED_KEYS:  # paired with detach (the first setting), per seed
            diffs = [
                r[key]
                - next(d for d in results["runs"] if (d["setting"], d["seed"]) == ("detach", r["seed"]))[key]
                for r in rows
            ]
            assert entry[f"paired_{key}"]["mean"] == pytest.approx(statistics.mean(diffs))
            assert entry[f"paired_{key}"]["std"] == pytest.approx(statistics.stdev(diffs))
    assert results["summary"]["detach"]["paired_heldout_accuracy"] == {"mean": 0.0, "std": 0.0}
    assert "paired Δ held-out" in table
    for row in results["runs"]:
        lines = metrics(sweep / "runs" / f"{row['setting']}-seed{row['seed']}")
        assert row["final_reward"] == pytest.approx(statistics.mean(m["reward/mean"] for m in lines))
        assert row["mtp_accuracy"] == pytest.approx(statistics.mean(m["mtp/accuracy"] for m in lines))
        assert row["final_lam_proxy"] == lines[-1]["mtp/lam"]
        assert row["forecast_acceptance"] == pytest.approx(statistics.mean(m[FORECAST_KEY] for m in lines))
        assert 0.0 <= row["heldout_accuracy"] <= 1.0
    for plot in ("reward.png", "lam.png"):
        assert (sweep / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_regimes_of_a_seed_share_one_warm_start(sweep):
    """Same seed: same start weights and RNG, so step 0 sees the same rollouts and the same trainer
    log-probs before any update (the rollout/trainer mismatch) in every regime; another seed starts from
    other weights (its entropy differs: the mismatch itself can be one fp32 rounding step on both)."""
    entropy = {}
    for seed in (0, 1):
        runs = [sweep / "runs" / f"{regime}-seed{seed}" for regime in ("detach", "occ")]
        starts = {yaml.safe_load((r / "config.yaml").read_text())["model"]["name_or_path"] for r in runs}
        assert starts == {str(sweep / "warm-start" / f"seed{seed}")}
        first = [metrics(r)[0] for r in runs]
        for key in ("reward/mean", "response/length_mean", "mismatch/abs_diff_mean", "mismatch/kl_k3"):
            assert first[0][key] == first[1][key], key
        entropy[seed] = first[0]["policy/entropy"]
    assert entropy[0] != entropy[1]


def test_resume_skips_finished_runs_and_finishes_the_rest(sweep):
    done = sweep / "runs" / "occ-seed0"
    unfinished = sweep / "runs" / "detach-seed1"
    shutil.rmtree(unfinished / "model")  # as if interrupted after the last checkpoint
    mtime = (done / "metrics.jsonl").stat().st_mtime_ns
    before = json.loads((sweep / "results.json").read_text())["summary"]
    assert main(sweep_argv(sweep, "--resume")) == 0
    assert (done / "metrics.jsonl").stat().st_mtime_ns == mtime
    assert (unfinished / "model").is_dir()
    assert json.loads((sweep / "results.json").read_text())["summary"] == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--regimes", "detach", "polcy"], "unknown regime 'polcy'"),
        (["--regimes", "policy-0"], "unknown regime 'policy-0'"),
        (["--regimes", "ce-x"], "unknown regime 'ce-x'"),
        (["--regimes", "occ-0"], "unknown regime 'occ-0'"),
        (["--regimes", "occ-x"], "unknown regime 'occ-x'"),
        (["--extra=--preset carries"], "--extra may not set --preset"),
        (["--extra=--mtp.lam-plus 3"], "--extra may not set --mtp.lam-plus"),
        (["--extra=--mtp.regime ce"], "--extra may not set --mtp.regime"),
        (["--resume"], "--resume needs --output"),
    ],
)
def test_bad_arguments_fail_clearly(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_existing_sweep_needs_resume(sweep, capsys):
    with pytest.raises(SystemExit):
        main(sweep_argv(sweep))
    assert "pass --resume" in capsys.readouterr().err


def test_policy_expands_to_the_default_fixed_lams():
    assert [(s.name, s.coef) for s in parse_settings(["policy", "policy-0.3"])] == [
        ("policy-0.1", 0.1), ("policy-0.5", 0.5), ("policy-1.0", 1.0), ("policy-0.3", 0.3),
    ]  # fmt: skip
    assert parse_settings(["occ"])[0].flags() == ["--mtp.regime", "occ"]


def test_ce_and_detach_take_a_coefficient():
    ce, detach = parse_settings(["ce-2.5", "detach-1"])
    assert ce.flags() == ["--mtp.regime", "ce", "--mtp.coef", "2.5"]
    assert (detach.name, detach.regime, detach.coef) == ("detach-1", "detach", 1.0)
    assert parse_settings(["ce"])[0].flags() == ["--mtp.regime", "ce"]  # the preset's coefficient


def test_occ_takes_its_global_scale_and_every_run_gets_the_preset(tmp_path):
    args = parse_args(
        ["--preset", "carries", "--regimes", "detach", "occ-10", "--output", str(tmp_path / "s")]
    )
    detach, occ = args.settings
    assert occ.flags() == ["--mtp.regime", "occ", "--mtp.lam-plus", "10.0"]
    cfg = run_config(args, occ, seed=1)
    assert (cfg.mtp.regime, cfg.mtp.lam_plus, cfg.mtp.coef) == ("occ", 10.0, 0.1)
    assert (cfg.data.solution, cfg.data.digits, cfg.model.tiny.hidden_size) == ("carries", 3, 128)
    assert run_config(args, detach, seed=1).mtp.lam_plus == 1.0
    assert seed_argv(args, 1)[:2] == ["--preset", "carries"]  # the warm start trains the same preset
    results = {"preset": "carries", "settings": ["detach", "occ-10"], "seeds": 3, "rl_steps": [60],
               "held_out": 256, "extra": []}  # fmt: skip
    assert command_line(results).startswith(
        "python -m occ_fast.experiments.regimes --preset carries --regimes"
    )
    del results["preset"]  # a sweep from before --preset trained the tiny preset
    assert "--preset" not in command_line(results)


def test_policy_and_occ_settings_take_a_head_cross_entropy(tmp_path):
    occ, policy = parse_settings(["occ-10.0+ce-0.1", "policy-0.3+ce-0.5"])
    assert (occ.name, occ.regime, occ.coef, occ.head_ce) == ("occ-10.0+ce-0.1", "occ", 10.0, 0.1)
    assert occ.flags() == ["--mtp.regime", "occ", "--mtp.lam-plus", "10.0", "--mtp.head-ce-coef", "0.1"]
    assert (policy.regime, policy.coef, policy.head_ce) == ("policy", 0.3, 0.5)
    args = parse_args(["--regimes", "detach", "occ+ce-0.2", "--output", str(tmp_path / "s")])
    cfg = run_config(args, args.settings[1], seed=0)
    assert (cfg.mtp.regime, cfg.mtp.head_ce_coef, cfg.mtp.lam_plus) == ("occ", 0.2, 1.0)
    for bad in ("detach+ce-0.1", "ce+ce-0.1", "policy+ce-0.1", "occ+ce-0", "occ+ce-x"):
        with pytest.raises(ValueError, match=re.escape(f"unknown regime '{bad}'")):
            parse_settings([bad])


def _dose_runs(settings, heldout):
    reference = {0: 0.5, 1: 0.3}
    return [
        {"setting": s.name, "seed": seed, "heldout_accuracy": reference[seed] + heldout.get(s.name, 0.0),
         "forecast_acceptance": 0.6}
        for s in settings for seed in (0, 1)
    ]  # fmt: skip


def test_dose_plot_only_with_two_coefficients_of_a_regime(tmp_path):
    settings = parse_settings(["detach", "policy-0.1", "policy-1.0", "occ-1.0"])
    write_dose_plot(tmp_path, _dose_runs(settings, {"policy-0.1": 0.1, "policy-1.0": -0.2}), settings)
    assert (tmp_path / "dose.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = parse_settings(["detach", "policy-0.1", "occ-1.0", "occ-1.0+ce-0.1"])  # +ce: another treatment
    write_dose_plot(tmp_path / "none", _dose_runs(single, {}), single)
    assert not (tmp_path / "none").exists()


def test_smooth_is_a_trailing_moving_average():
    values = np.array([[1.0, 3.0, 5.0, 7.0, 9.0], [0.0, 0.0, 6.0, 0.0, 0.0]])
    expected = np.array([[1.0, 2.0, 3.0, 5.0, 7.0], [0.0, 0.0, 2.0, 2.0, 2.0]])
    np.testing.assert_allclose(smooth(values, 3), expected)


def test_summary_snippet_is_rewritten_from_results_json(sweep):
    summary = (sweep / "summary.md").read_text()
    assert summary.startswith(
        "Measured by `python -m occ_fast.experiments.regimes --regimes detach occ --seeds 2 --steps 2 --held-out 8 --extra="
    )
    assert "| occ | 2 |" in summary and "| held-out accuracy | seed 0 | seed 1 |" in summary
    assert "| final lam | OCC proxy lam |" in summary
    results_md = (sweep / "results.md").read_text()
    (sweep / "summary.md").unlink()
    (sweep / "results.md").write_text("stale")
    assert main(["--output", str(sweep), "--summarize-only"]) == 0
    assert (sweep / "summary.md").read_text() == summary
    assert (sweep / "results.md").read_text() == results_md


def test_lam_columns_only_where_the_results_hold_them(sweep):
    results = json.loads((sweep / "results.json").read_text())
    for entry in results["summary"].values():
        del entry["final_lam"], entry["final_lam_proxy"]
    header = table_lines(results)[0]
    assert "final lam" not in header and "OCC proxy lam" not in header
    assert header.startswith("| regime | seeds | final reward |")


def test_every_setting_is_reported_the_same_way():
    """Above, below and within noise alike: each setting gets its interval, sign test and MDD, and
    OCC's final lam its sign seed by seed (not only the settings below the reference)."""
    effects = {"detach": 0.0, "policy-0.1": 0.02, "ce-4.0": -0.2, "occ-10.0": 0.0}
    runs = [
        {"setting": name, "regime": name.split("-")[0], "seed": s, "final_lam": 0.1 + 0.01 * s if name == "occ-10.0" else None,
         "heldout_accuracy": 0.5 + 0.1 * s + e + 0.001 * s * s, "final_reward": 0.4 + e}
        for s in range(3) for name, e in effects.items()
    ]  # fmt: skip
    lines = "\n".join(arm_lines({"settings": list(effects), "summary": dict.fromkeys(effects), "runs": runs}))
    for name, reading in (("policy-0.1", "above"), ("ce-4.0", "below"), ("occ-10.0", "within noise")):
        assert f"| {name} |" in lines and reading in lines
    assert "`occ-10.0` final lam: positive on 3 of 3 seeds" in lines
    assert lines.count("| MDD |") == 2


def test_a_sweep_killed_while_writing_results_json_keeps_the_last_complete_file(
    sweep, tmp_path, killed_mid_write
):
    """results.json is what --resume reads: a kill while rewriting it must leave the previous file."""
    output = tmp_path / "out"
    shutil.copytree(sweep, output)
    before = (output / "results.json").read_text()
    results = json.loads(before)
    with killed_mid_write():
        write_results(parse_args(sweep_argv(output, "--resume")), results["runs"][:1], results["warm_start"])
    assert (output / "results.json").read_text() == before
