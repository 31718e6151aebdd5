"""The configuration tree: presets, command-line overrides, validation messages, YAML round trips."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path

import pytest

from occ_fast.algorithm.config import LossConfig
from occ_fast.config import (
    LOSS_FIELDS,
    Config,
    ConfigError,
    list_presets,
    load_preset,
    parse_config,
    presets_dir,
)

PRESETS = ["tiny", "mimo-7b-dapo-occ", "qwen2.5-fresh-mtp"]


def test_packaged_presets_are_found():
    assert set(PRESETS) <= set(list_presets())
    assert presets_dir().is_dir()


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads_and_validates(name):
    cfg = load_preset(name).resolve().validate()
    assert cfg.preset == name
    assert cfg.run.name.endswith(f"-{name}")


def test_defaults_alone_are_valid():
    Config().validate()


def test_no_arguments_give_the_tiny_preset():
    cfg = parse_config([])
    assert cfg.preset == "tiny"
    assert dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name=None)) == load_preset("tiny")


def test_mimo_preset_has_the_paper_settings():
    cfg = load_preset("mimo-7b-dapo-occ")
    assert (cfg.data.prompts_per_step, cfg.rollout.n, cfg.optim.mini_batches) == (128, 16, 4)
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.weight_decay, cfg.optim.grad_clip) == (
        1e-6,
        10,
        0.1,
        1.0,
    )
    assert (cfg.rollout.max_new_tokens, cfg.algorithm.overlong_buffer, cfg.rollout.temperature) == (
        8192,
        4096,
        1.0,
    )
    assert (cfg.algorithm.eps_low, cfg.algorithm.eps_high, cfg.algorithm.dual_clip_c) == (0.2, 0.28, 10.0)
    assert (cfg.mtp.regime, cfg.mtp.lam_plus, cfg.mtp.aggregation) == ("occ", 1.0, "paper")
    assert (cfg.train.steps, cfg.rollout.engine, cfg.model.dtype) == (200, "vllm", "bf16")
    assert (cfg.model.mtp_heads, cfg.model.mtp_init, cfg.reward.overlong_penalty) == (1, "checkpoint", True)


def test_cli_overrides_apply():
    cfg = parse_config(
        [
            "--mtp.regime", "ce",
            "--optim.lr", "3e-6",
            "--model.tiny.hidden-size", "32",  # nested two deep
            "--model.tiny.num_layers", "3",  # underscores work too
            "--train.bf16-autocast",  # bool flag
            "--model.no-use-liger",
            "--optim.micro-batch-size", "4",  # optional int
            "--optim.grad-clip", "None",  # optional float unset
            "--model.name-or-path", "/models/x",  # optional str
            "--data.ops", "+", "*",  # tuple of literals
            "--optim.betas", "0.8", "0.95",
        ]
    )  # fmt: skip
    assert cfg.mtp.regime == "ce" and cfg.optim.lr == 3e-6
    assert cfg.model.tiny.hidden_size == 32 and cfg.model.tiny.num_layers == 3
    assert cfg.train.bf16_autocast is True and cfg.model.use_liger is False
    assert cfg.optim.micro_batch_size == 4 and cfg.optim.grad_clip is None
    assert cfg.model.name_or_path == "/models/x"
    assert cfg.data.ops == ("+", "*") and cfg.optim.betas == (0.8, 0.95)
    assert cfg.rollout == load_preset("tiny").rollout  # untouched sections keep the preset's values


def test_cli_overrides_the_chosen_preset():
    cfg = parse_config(["--preset", "mimo-7b-dapo-occ", "--rollout.n", "4", "--mtp.regime", "detach"])
    assert cfg.preset == "mimo-7b-dapo-occ"
    assert cfg.rollout.n == 4 and cfg.rollout.max_new_tokens == 8192
    assert cfg.mtp.regime == "detach" and cfg.mtp.detach_trunk
    assert parse_config(["--preset=mimo-7b-dapo-occ"]).rollout.n == 16


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--mtp.regime", "occ2"], "--mtp.regime"),
        (["--optim.lr", "fast"], "--optim.lr"),
        (["--optim.lrr", "1"], "--optim.lrr"),
    ],
)
def test_malformed_flags_exit_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(argv)
    assert e.value.code == 2
    assert flag in capsys.readouterr().err


def test_help_shows_field_docs_and_preset_values(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(["--preset", "mimo-7b-dapo-occ", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--mtp.lam-plus" in out and "OCC global scale lam_plus" in out
    assert "--rollout.max-new-tokens INT" in out and "(default: 8192)" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rollout.n", "1"], "rollout.n: expected a value >= 2, got 1"),
        (["--optim.lr", "0"], "optim.lr: expected a value > 0.0, got 0.0"),
        (["--optim.lr", "nan"], "optim.lr: expected a finite number, got nan"),
        (["--rollout.temperature", "0"], "rollout.temperature: expected a value > 0.0, got 0.0"),
        (["--rollout.top-p", "0"], "rollout.top_p: expected a value > 0.0, got 0.0"),
        (["--rollout.top-p", "1.5"], "rollout.top_p: expected a value <= 1.0, got 1.5"),
        (["--algorithm.eps-low", "1.0"], "algorithm.eps_low: expected a value < 1.0, got 1.0"),
        (["--algorithm.eps-high", "-0.1"], "algorithm.eps_high: expected a value >= 0.0, got -0.1"),
        (["--algorithm.dual-clip-c", "1.0"], "algorithm.dual_clip_c: expected a value > 1.0, got 1.0"),
        (["--algorithm.tis-cap", "0"], "algorithm.tis_cap: expected a value > 0.0, got 0.0"),
        (["--algorithm.tis-cap", "inf"], "algorithm.tis_cap: expected a finite number, got inf"),
        (
            ["--algorithm.is-mask-band", "1.5", "2"],
            "algorithm.is_mask_band[0]: expected a value <= 1.0, got 1.5",
        ),
        (["--model.tiny.vocab-size", "100"], "model.tiny.vocab_size: expected a value >= 259, got 100"),
        (
            ["--reward.fn", "nonsense"],
            "reward.fn: expected one of ['arithmetic', 'math'] or 'package.module:function', got 'nonsense'",
        ),
        (["--optim.min-lr-ratio", "2"], "optim.min_lr_ratio: expected a value <= 1.0, got 2.0"),
        (["--optim.betas", "0.9", "1.0"], "optim.betas[1]: expected a value < 1.0, got 1.0"),
        (["--data.ops"], "data.ops: expected a list of at least 1 item(s), got []"),
        (
            ["--data.prompt-field", ""],
            "data.prompt_field: expected a string of at least 1 character(s), got ''",
        ),
        (["--run.name", "a/b"], "run.name: expected a plain directory name (no path separators), got 'a/b'"),
    ],
)
def test_flags_outside_a_fields_constraint_name_key_expectation_and_value(argv, message):
    with pytest.raises(ConfigError) as e:
        parse_config(argv)
    assert f"command line: {message}" in str(e.value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mtp.regime", "occ", "--model.mtp-heads", "0"], "mtp.regime='occ' needs model.mtp_heads >= 1"),
        (["--optim.mini-batches", "3"], "optim.mini_batches=3 must divide the number of prompts per step"),
        (
            ["--data.source", "file", "--train.warmup-sft-steps", "0"],
            "data.path is required when data.source='file'",
        ),
        (["--data.path", "x.jsonl"], "data.path='x.jsonl' is set but data.source='synthetic'"),
        (["--model.use-liger", "--train.device", "cpu"], "model.use_liger needs a CUDA device"),
        (["--model.mtp-init", "checkpoint"], "model.mtp_init='checkpoint' needs model.name_or_path"),
        (["--model.tiny.num-heads", "3"], "model.tiny.num_heads=3 must divide model.tiny.hidden_size=64"),
        (["--model.tiny.num-kv-heads", "3"], "model.tiny.num_kv_heads=3 must divide model.tiny.num_heads=4"),
        (
            ["--reward.overlong-penalty", "--algorithm.overlong-buffer", "9"],
            "reward.overlong_penalty needs 0 < ",
        ),
        (["--optim.micro-batch-tokens", "7"], "optim.micro_batch_tokens=7 cannot hold one whole sequence"),
        (["--run.resume", "auto"], "run.resume='auto' needs run.name"),
        (
            ["--mtp.exact-every", "5", "--model.mtp-heads", "0", "--mtp.regime", "none"],
            "mtp.exact_every > 0 needs",
        ),
        (
            ["--preset", "qwen2.5-fresh-mtp", "--eval.every", "5"],
            "eval.every > 0 with data.source='file' needs eval.path",
        ),
        (
            ["--preset", "qwen2.5-fresh-mtp", "--train.warmup-sft-steps", "5"],
            "train.warmup_sft_steps > 0 needs data.source='synthetic'",
        ),
    ],
)
def test_impossible_combinations_name_the_fields(argv, message):
    with pytest.raises(ConfigError) as e:
        parse_config(argv)
    assert message in str(e.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as e:
        parse_config(["--rollout.n", "1", "--optim.lr", "-1", "--optim.mini-batches", "3"])
    lines = str(e.value).splitlines()[1:]
    assert lines == [
        "  - command line: rollout.n: expected a value >= 2, got 1",
        "  - command line: optim.lr: expected a value > 0.0, got -1.0",
        "  - optim.mini_batches=3 must divide the number of prompts per step (data.prompts_per_step=16)",
    ]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "preset.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("optim:\n  lrr: 1.0\n", "unknown key optim.lrr"),
        ("optimizer:\n  lr: 1.0\n", "unknown key optimizer"),
        ("model:\n  tiny:\n    hidden: 8\n", "unknown key model.tiny.hidden"),
        ("optim:\n  lr: fast\n", "optim.lr: expected a number, got 'fast'"),
        ("mtp:\n  regime: occ2\n", "mtp.regime: expected one of"),
        ("train:\n  steps: 1.5\n", "train.steps: expected an integer"),
        ("train:\n  bf16_autocast: 1\n", "train.bf16_autocast: expected true or false"),
        ("optim:\n  betas: [0.9]\n", "optim.betas: expected a list of 2 items"),
        ("data:\n  ops: ['/']\n", "data.ops[0]: expected one of"),
        ("mtp: occ\n", "mtp: expected a mapping of fields"),
        ("- 1\n", "top level: expected a mapping of fields"),
        ("train:\n  steps: null\n", "train.steps: expected an integer, got None"),
        ("optim:\n  lr: '1e-6'\n", "optim.lr: expected a number, got '1e-6'"),
        ("optim:\n  betas: [0.9, 0.9, 0.9]\n", "optim.betas: expected a list of at most 2 item(s)"),
        ("rollout:\n  n: 1\n", "rollout.n: expected a value >= 2, got 1"),
        ("optim:\n  lr: .nan\n", "optim.lr: expected a finite number, got nan"),
        ("data:\n  ops: []\n", "data.ops: expected a list of at least 1 item(s), got []"),
    ],
)
def test_bad_preset_files_name_file_and_key(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        parse_config(["--preset", str(path)])
    assert f"{path}: {message}" in str(e.value)


def test_every_problem_in_a_preset_file_is_reported_at_once(tmp_path):
    path = _write(tmp_path, "rollout:\n  n: 1\n  top_k: x\noptim:\n  lrr: 1\ntrain:\n  steps: 0\n")
    with pytest.raises(ConfigError) as e:
        parse_config(["--preset", str(path), "--rollout.n", "4"])  # read before any flag applies
    assert str(e.value).splitlines() == [
        "invalid configuration:",
        f"  - {path}: rollout.top_k: expected an integer, got 'x'",
        f"  - {path}: rollout.n: expected a value >= 2, got 1",
        f"  - {path}: unknown key optim.lrr (fields of optim: betas, collapse_steps, eps, grad_clip, lr, "
        "max_nonfinite_updates, max_update_ratio, micro_batch_size, micro_batch_tokens, min_lr_ratio, "
        "mini_batches, schedule, stop_on_collapse, warmup_steps, weight_decay)",
        f"  - {path}: train.steps: expected a value >= 1, got 0",
    ]


def test_the_same_constraint_holds_for_a_file_a_flag_and_a_finished_config(tmp_path):
    path = _write(tmp_path, "optim:\n  mini_batches: 0\n")
    with pytest.raises(ConfigError, match=f"{path}: optim.mini_batches: expected a value >= 1, got 0"):
        Config.from_yaml(path)
    with pytest.raises(ConfigError, match="command line: optim.mini_batches: expected a value >= 1, got 0"):
        parse_config(["--optim.mini-batches", "0"])
    made = dataclasses.replace(Config(), optim=dataclasses.replace(Config().optim, mini_batches=0))
    with pytest.raises(ConfigError, match="configuration: optim.mini_batches: expected a value >= 1, got 0"):
        made.validate()


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match="no such preset.*tiny"):
        parse_config(["--preset", "nope"])


def test_preset_file_values_are_coerced(tmp_path):
    # Read as YAML 1.2: 1e-6 (no dot) is a float, a date stays text; an int is fine for a float field.
    text = "optim:\n  lr: 1e-6\n  grad_clip: 1\nmodel:\n  name_or_path: null\nrun:\n  name: 2026-01-02\n"
    cfg = parse_config(["--preset", str(_write(tmp_path, text))])
    assert cfg.optim.lr == 1e-6 and cfg.optim.grad_clip == 1.0 and isinstance(cfg.optim.grad_clip, float)
    assert cfg.model.name_or_path is None and cfg.run.name == "2026-01-02"
    assert cfg.preset == str(tmp_path / "preset.yaml") and parse_config(["--preset", cfg.preset]).run.name


@pytest.mark.parametrize("name", PRESETS)
def test_yaml_round_trip(tmp_path, name):
    cfg = parse_config(["--preset", name, "--data.ops", "+", "-", "--algorithm.tis-cap", "2.5"])
    path = tmp_path / "config.yaml"
    text = cfg.to_yaml(path)
    assert path.read_text() == text
    assert Config.from_yaml(path) == cfg


def test_saved_config_resumes_as_a_preset(tmp_path):
    cfg = parse_config(["--run.name", "exp1", "--optim.lr", "2e-4"])
    path = tmp_path / "config.yaml"
    cfg.to_yaml(path)
    resumed = parse_config(["--preset", str(path), "--run.resume", "auto"])
    assert resumed.run.name == "exp1" and resumed.run.resume == "auto" and resumed.optim.lr == 2e-4
    assert resumed.run_dir == Path("./runs") / "exp1"


def test_resolve_names_the_run_once():
    cfg = load_preset("tiny").resolve(datetime(2026, 1, 2, 3, 4, 5))
    assert cfg.run.name == "20260102-030405-tiny"
    assert cfg.resolve() == cfg
    with pytest.raises(ConfigError, match="run.name is not set"):
        _ = Config().run_dir


def test_to_loss_config_maps_every_field():
    assert set(LOSS_FIELDS) == {f.name for f in dataclasses.fields(LossConfig)}
    cfg = parse_config(
        [
            "--mtp.regime", "policy", "--mtp.coef", "0.3", "--mtp.lam-plus", "0.7",
            "--mtp.aggregation", "code_masked", "--mtp.form", "loss",
            "--algorithm.eps-low", "0.15", "--algorithm.eps-high", "0.31",
            "--algorithm.dual-clip-c", "4.0", "--algorithm.tis-cap", "2.0",
        ]
    )  # fmt: skip
    assert cfg.to_loss_config() == LossConfig(
        mtp_regime="policy",
        mtp_coef=0.3,
        occ_lam_plus=0.7,
        occ_aggregation="code_masked",
        occ_form="loss",
        eps_low=0.15,
        eps_high=0.31,
        dual_clip_c=4.0,
        tis_cap=2.0,
    )
