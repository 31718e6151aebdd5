"""First use: the help names the command, file data defaults to the README's `answer` field, the
presets that read DAPO's layout say so, and the reward plot's series stay visible with a y-label."""

from __future__ import annotations

import pytest
from matplotlib.figure import Figure

from occ_fast.config import Config, list_presets, load_preset, parse_config
from occ_fast.monitoring.metrics import draw_panel


def test_help_usage_names_the_module_command(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    assert "usage: python -m occ_fast.train " in capsys.readouterr().out


def test_file_data_reads_the_answer_field_by_default_and_dapo_presets_say_where_theirs_is():
    assert Config().data.answer_field == "answer"
    for name in list_presets():
        cfg = load_preset(name)
        if cfg.data.source == "file":
            assert cfg.data.answer_field == "reward_model.ground_truth", name


def test_overlapping_series_stay_visible_and_the_panel_has_a_y_label():
    records = [{"step": s, "reward/mean": 0.5, "reward/accuracy": 0.5} for s in range(5)]
    axes = Figure().add_subplot()
    assert draw_panel(axes, records, ["reward/mean", "reward/accuracy"], ylabel="reward (0-1)")
    first, second = axes.get_lines()
    assert (first.get_linestyle(), first.get_marker()) != (second.get_linestyle(), second.get_marker())
    assert axes.get_ylabel() == "reward (0-1)"
