"""End to end: short CPU training runs of every regime, exact resume, NaN steps never applied."""

from __future__ import annotations

import json
import math

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

import occ_fast.training.setup as training_setup
import occ_fast.training.update as update_module
from occ_fast.checkpointing.files import find_latest
from occ_fast.config import ConfigError, parse_config
from occ_fast.policy.batching import make_micro_batches
from occ_fast.policy.forward import policy_logprobs
from occ_fast.train import main, train
from occ_fast.training.build import build_model, build_tokenizer, train_records
from occ_fast.training.warm_start import supervised_samples

FAST = [
    "--model.tiny.hidden-size", "32",
    "--model.tiny.intermediate-size", "64",
    "--train.warmup-sft-steps", "5",
    "--reward.fn", "signal_reward:digit_parity",  # reward variance from step 0 (tests/signal_reward.py)
    "--data.prompts-per-step", "4",
    "--rollout.n", "4",
    "--rollout.max-new-tokens", "5",
    "--optim.lr", "1e-3",
    "--optim.mini-batches", "2",
    "--optim.micro-batch-tokens", "64",
    "--eval.every", "2",
    "--eval.num-problems", "8",
]  # fmt: skip


def fast_config(tmp_path, *extra: str, name: str = "run"):
    args = [*FAST, "--run.output-dir", str(tmp_path), "--run.name", name, *extra]
    return parse_config(args)


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("regime", ["none", "detach", "ce", "policy", "occ"])
def test_each_regime_trains_end_to_end(tmp_path, regime):
    cfg = fast_config(tmp_path, "--mtp.regime", regime, "--train.steps", "3", "--run.save-every", "2")
    summary = train(cfg)
    lines = read_metrics(cfg.run_dir)
    assert [m["step"] for m in lines] == [0, 1, 2]
    for m in lines:
        assert all(math.isfinite(v) for v in m.values()), m
        assert m["reward/zero_std_groups"] < 4 and m["optim/grad_norm"] > 0, m  # a real RL signal
        assert m["reward/accuracy"] == pytest.approx(m["reward/mean"])  # 0/1 rewards: the same fraction
        assert m["optim/nan_skipped"] == 0
    assert ("mtp/lam" in lines[-1]) == (regime != "none")
    assert ("mtp/accuracy" in lines[-1]) == (regime != "none")
    assert "eval/avg_at_k" in lines[1] and "eval/avg_at_k" in lines[2]
    assert (cfg.run_dir / "config.yaml").is_file()
    assert (cfg.run_dir / "plots" / "reward.png").is_file()
    assert (cfg.run_dir / "model" / "config.json").is_file()
    assert find_latest(cfg.run_dir).name.endswith("2")
    assert summary.steps == 3 and summary.run_dir == cfg.run_dir


def test_resume_continues_exactly(tmp_path):
    """4 steps in one go equal 2 steps + resume + 2 steps: same metrics, same weights."""
    # warm-up over 8 steps: the learning rate still moves across the resume (the scheduler's state matters)
    common = ["--mtp.regime", "occ", "--run.save-every", "1", "--optim.warmup-steps", "8"]
    whole = fast_config(tmp_path, *common, "--train.steps", "4", name="whole")
    train(whole)
    first = fast_config(tmp_path, *common, "--train.steps", "2", name="split")
    train(first)
    second = fast_config(tmp_path, *common, "--train.steps", "4", "--run.resume", "auto", name="split")
    train(second)

    def comparable(run_dir):
        return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in read_metrics(run_dir)]

    assert comparable(whole.run_dir) == comparable(second.run_dir)
    assert len(comparable(whole.run_dir)) == 4
    assert all(m["reward/zero_std_groups"] < 4 and m["loss"] != 0 for m in comparable(whole.run_dir))
    weights_whole = load_file(find_latest(whole.run_dir) / "model.safetensors")
    weights_split = load_file(find_latest(second.run_dir) / "model.safetensors")
    assert weights_whole.keys() == weights_split.keys()
    for key in weights_whole:
        assert torch.equal(weights_whole[key], weights_split[key]), key


def test_nan_loss_is_skipped_counted_and_never_applied(tmp_path, monkeypatch):
    real_compute_loss = update_module.compute_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, metrics = real_compute_loss(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] <= 2 else loss), metrics  # the first mini-batch: 2 micro

    monkeypatch.setattr(update_module, "compute_loss", poisoned)
    cfg = fast_config(
        tmp_path, "--train.steps", "1", "--optim.mini-batches", "1", "--optim.micro-batch-size", "8",
        "--mtp.regime", "ce",  # one mini-batch: occ is refused there (its coefficient would stay 0)
    )  # fmt: skip
    before = {}

    def capture(cfg_, model, tokenizer, progress):
        before.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    monkeypatch.setattr(training_setup, "sft_warm_start", capture)
    train(cfg)
    metrics = read_metrics(cfg.run_dir)[0]
    assert metrics["optim/nan_skipped"] == 1
    after = load_file(find_latest(cfg.run_dir) / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed


def test_existing_run_is_not_overwritten(tmp_path):
    cfg = fast_config(tmp_path, "--train.steps", "1", name="taken")
    train(cfg)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(fast_config(tmp_path, "--train.steps", "1", name="taken"))


def test_cli_reports_bad_config_and_exits_2(tmp_path, capsys):
    assert main(["--optim.lr", "-1", "--run.output-dir", str(tmp_path)]) == 2
    assert "optim.lr" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("regime", "detach_lm_head", "trunk", "lm_head"),
    [
        ("detach", False, False, True),
        ("detach", True, False, False),
        ("ce", False, True, True),
        ("occ", True, True, False),
    ],
)
def test_regime_gradient_routing_of_the_mtp_term(tmp_path, regime, detach_lm_head, trunk, lm_head):
    """The config's regime reaches the model: what the MTP log-probs' gradient touches."""
    extra = ["--mtp.detach-lm-head"] if detach_lm_head else []
    cfg = fast_config(tmp_path, "--mtp.regime", regime, *extra)
    tokenizer = build_tokenizer(cfg)
    model = build_model(cfg, tokenizer, torch.device("cpu"))
    micro = make_micro_batches(supervised_samples(tokenizer, train_records(cfg)[:6]), token_budget=256)[0]
    out = policy_logprobs(model, micro, temperature=1.0)
    (-out.heads[1].logprob.sum()).backward()

    def touched(params):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)

    assert touched(model.base.model.layers.parameters()) == trunk
    assert touched([model.base.lm_head.weight]) == lm_head
    assert touched(model.mtp.parameters())


def test_dynamic_sampling_refills_zero_variance_groups(tmp_path):
    cfg = fast_config(
        tmp_path,
        "--algorithm.dynamic-sampling",
        "--algorithm.dynamic-sampling-max-rounds",
        "3",
        "--train.steps",
        "2",
    )
    train(cfg)
    lines = read_metrics(cfg.run_dir)
    assert [m["rollout/rounds"] for m in lines] and all(1 <= m["rollout/rounds"] <= 3 for m in lines)
    refilled = [m for m in lines if m["rollout/rounds"] < 3]
    assert refilled  # some step filled its quota with groups that have reward variance ...
    assert all(m["reward/zero_std_groups"] == 0 for m in refilled)  # ... and trains on those alone


def test_vllm_engine_without_vllm_says_what_to_install(tmp_path):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed: the real engine is tested in test_rollout_vllm.py")
    except ImportError:
        pass
    cfg = fast_config(
        tmp_path, "--rollout.engine", "vllm", "--train.warmup-sft-steps", "0", "--train.steps", "1"
    )
    with pytest.raises(
        ConfigError, match=r"needs vLLM, which is not installed: pip install 'occ-fast\[vllm\]'"
    ):
        train(cfg)  # at start, before the model is built


def test_speculative_mtp_needs_vllm_engine(tmp_path):
    with pytest.raises(ConfigError, match="rollout.speculative='mtp' needs rollout.engine='vllm'"):
        fast_config(tmp_path, "--rollout.speculative", "mtp")


def test_exact_gradient_diagnostics_are_logged_beside_the_proxy(tmp_path):
    cfg = fast_config(tmp_path, "--mtp.exact-every", "2", "--train.steps", "3")
    summary = train(cfg)
    lines = read_metrics(cfg.run_dir)
    assert ["exact/lam_star" in m for m in lines] == [True, False, True]
    for m in (lines[0], lines[2]):
        assert m["exact/v2"] > 0 and m["exact/time_s"] > 0 and math.isfinite(m["exact/lam_proxy"])
        assert m["exact/lam_star"] == pytest.approx(m["exact/c"] / m["exact/v2"])
    assert summary.proxy_vs_exact["exact/rows"] <= 2
    with pytest.raises(ConfigError, match="mtp.exact_every"):
        fast_config(tmp_path, "--mtp.exact-every", "1", "--mtp.regime", "none")


def test_gradient_checkpointing_trains_the_same_weights(tmp_path):
    """``model.gradient_checkpointing`` recomputes the trunk in backward: the same step, less memory."""
    finals = {}
    for name, flag in (
        ("plain", "--model.no-gradient-checkpointing"),
        ("ckpt", "--model.gradient-checkpointing"),
    ):
        cfg = fast_config(tmp_path, flag, "--train.steps", "2", "--eval.every", "0", name=name)
        train(cfg)
        finals[name] = (read_metrics(cfg.run_dir), load_file(cfg.run_dir / "model" / "model.safetensors"))
    (plain_metrics, plain), (ckpt_metrics, ckpt) = finals["plain"], finals["ckpt"]
    assert [m["loss"] for m in ckpt_metrics] == pytest.approx([m["loss"] for m in plain_metrics], rel=1e-5)
    for key in plain:
        torch.testing.assert_close(ckpt[key], plain[key], rtol=0, atol=1e-6, msg=key)
    for flag, active in (
        ("--model.gradient-checkpointing", True),
        ("--model.no-gradient-checkpointing", False),
    ):
        run = training_setup.setup(fast_config(tmp_path, flag, name=f"setup{active}"), Console(quiet=True))
        assert run.model.base.is_gradient_checkpointing is active
        run.scorer.close()
        run.metrics.close()
