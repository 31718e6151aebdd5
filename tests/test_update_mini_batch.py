"""The update loop. One optimizer step: without precomputed old log-probs (the first mini-batch of an
RL step) it takes ``lp_old`` from its own forward, and gives the step a separate no-grad pass gives.
Whole RL steps (real setup, rollouts, rewards with variance), spied on: old log-probs, rollout
log-probs, gradient clearing, the learning-rate schedule and the clip defaults."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from test_diagnostics import TEMPERATURE, make_samples, tiny_model
from test_train import fast_config

import occ_fast.training.update as update_module
from occ_fast.algorithm import LossConfig
from occ_fast.algorithm.policy_loss import clipped_surrogate, policy_loss
from occ_fast.config import AlgorithmConfig, parse_config
from occ_fast.policy.batching import make_micro_batches
from occ_fast.policy.forward import policy_logprobs
from occ_fast.training.setup import setup
from occ_fast.training.step import rl_step
from occ_fast.training.update import old_main_logprobs, update_mini_batch
from occ_fast.training.update_stats import UpdateStats


def one_step(precompute: bool, regime: str) -> tuple[dict[str, torch.Tensor], dict[str, float], list]:
    model = tiny_model(seed=3)
    samples = make_samples(seed=5)
    micros = [(m, True) for m in make_micro_batches(samples, token_budget=40)]
    run = SimpleNamespace(
        cfg=SimpleNamespace(
            rollout=SimpleNamespace(temperature=TEMPERATURE, max_new_tokens=16),
            optim=SimpleNamespace(grad_clip=1.0),
        ),
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
        loss_cfg=LossConfig(mtp_regime=regime),
        autocast_dtype=None,
    )
    olds = [old_main_logprobs(run, micro) for micro, _ in micros] if precompute else None
    stats = UpdateStats()
    update_mini_batch(run, samples, micros, olds, stats)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, stats.summary(), stats.lams.first


@pytest.mark.parametrize("regime", ["occ", "ce"])
def test_first_mini_batch_old_logprobs_come_from_the_training_forward(regime):
    reused_weights, reused, lams = one_step(precompute=False, regime=regime)
    separate_weights, separate, _ = one_step(precompute=True, regime=regime)
    assert reused["loss"] == pytest.approx(separate["loss"], rel=1e-5)
    assert reused["policy/clip_low"] == reused["policy/clip_high"] == 0.0  # the ratio is exactly 1
    assert all(float(lam) == 0.0 for lam in lams)  # OCC's d_rl = lp - lp_old is exactly 0
    for key, value in separate_weights.items():
        torch.testing.assert_close(reused_weights[key], value, rtol=0, atol=1e-6, msg=key)
    changed = sum(not torch.equal(reused_weights[k], v) for k, v in tiny_model(seed=3).state_dict().items())
    assert changed > 0  # the step did train


# ---- The whole RL step, spied on: two steps of two mini-batches each, with reward variance ----

LOOP_ARGS = [
    "--reward.fn", "signal_reward:digit_parity",  # sampled groups with reward variance from step 0
    "--train.warmup-sft-steps", "0",
    "--mtp.regime", "occ",
    "--optim.warmup-steps", "4",  # lr 1/4, 2/4, ... of the peak: the scheduler's position shows
    "--optim.micro-batch-tokens", "40",  # several micro-batches per mini-batch
    "--eval.every", "0",
    "--run.plot-every", "0",
]  # fmt: skip
PEAK_LR = 1e-3  # test_train.FAST's --optim.lr


class LoopRecorder:
    """Spies on the real loop (every call goes through to the real function): what each optimizer
    step saw and what each micro-batch's loss was given, next to the rollout weights of its RL step."""

    def __init__(self, run, monkeypatch):
        self.run = run
        self.calls: list[dict] = []  # one per compute_loss call (a micro-batch)
        self.lrs: list[float] = []  # per optimizer step
        self.rollout_weights = None  # the model as it was when the RL step's rollouts were sampled
        self.last_micro = None
        self.optimizer_steps = 0
        real_forward, real_loss = update_module.policy_logprobs, update_module.compute_loss

        def forward(model, micro, **kwargs):
            if kwargs.get("with_entropy"):  # the training forward (old log-probs use with_mtp=False)
                self.last_micro = micro
            return real_forward(model, micro, **kwargs)

        def loss(cfg, lp_old, lp_main, advantages, mask, **kwargs):
            call = self._record(lp_old, lp_main, advantages, kwargs["lp_rollout"])
            call["num_tokens"] = kwargs["num_tokens"]  # as given (None must fail the test, not the spy)
            self.calls.append(call)
            return real_loss(cfg, lp_old, lp_main, advantages, mask, **kwargs)

        def before_step(optimizer, args, kwargs):
            self.lrs.append(optimizer.param_groups[0]["lr"])
            self.optimizer_steps += 1

        monkeypatch.setattr(update_module, "policy_logprobs", forward)
        monkeypatch.setattr(update_module, "compute_loss", loss)
        run.optimizer.register_step_pre_hook(before_step)

    def _record(self, lp_old, lp_main, advantages, lp_rollout) -> dict:
        with torch.no_grad():
            at_rollout = (
                policy_logprobs(
                    self.rollout_weights,
                    self.last_micro,
                    temperature=self.run.cfg.rollout.temperature,
                    with_mtp=False,
                )
                .heads[0]
                .logprob
            )
        grads = [p.grad for p in self.run.model.parameters() if p.grad is not None]
        return {
            "rl_step": self.rl_step,
            "optimizer_steps": self.optimizer_steps,
            "lp_old": lp_old.detach().clone(),
            "lp_main": lp_main.detach().clone(),
            "lp_at_rollout_weights": at_rollout,
            "lp_rollout": lp_rollout.detach().clone(),
            "advantages": advantages.detach().clone(),
            "grads_clear": all(bool((g == 0).all()) for g in grads),
        }

    def rl_steps(self, count: int) -> list[dict[str, float]]:
        metrics = []
        for step in range(count):
            self.rl_step = step
            self.rollout_weights = copy.deepcopy(self.run.model).eval()
            metrics.append(rl_step(self.run, step))
        return metrics


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """Two RL steps of the real loop on a real run (setup, rollouts, rewards), recorded."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        cfg = fast_config(tmp_path_factory.mktemp("loop"), *LOOP_ARGS, "--train.steps", "2")
        run = setup(cfg, Console(quiet=True))
        recorder = LoopRecorder(run, monkeypatch)
        try:
            with run.progress:
                metrics = recorder.rl_steps(2)
        finally:
            run.scorer.close()
            run.metrics.close()
    return recorder, metrics


def first_micro_of_each_mini_batch(calls):
    seen, firsts = set(), []
    for call in calls:
        key = (call["rl_step"], call["optimizer_steps"])
        if key not in seen:
            seen.add(key)
            firsts.append(call)
    return firsts


def test_loop_has_signal_and_the_shape_the_checks_need(loop):
    """Reward variance (non-zero advantages, non-zero gradient) at both steps, 2 mini-batches each
    of several micro-batches: otherwise the checks below could not see what they test."""
    recorder, metrics = loop
    for m in metrics:
        assert m["reward/zero_std_groups"] < 4, m  # at least one group of 4 has reward variance
        assert m["optim/grad_norm"] > 0
    for step in (0, 1):
        calls = [c for c in recorder.calls if c["rl_step"] == step]
        assert any(bool((c["advantages"] != 0).any()) for c in calls)
        assert len({c["optimizer_steps"] for c in calls}) == 2  # two mini-batches
        assert len(calls) > 2  # more than one micro-batch in some mini-batch
    assert recorder.optimizer_steps == 4


def test_old_logprobs_of_every_mini_batch_come_from_the_rollout_weights(loop):
    """``lp_old`` of later mini-batches is computed before any update of the RL step, not after
    the earlier mini-batches' updates (then the ratio would be 1 and nothing would clip)."""
    recorder, _ = loop
    later = [c for c in recorder.calls if c["optimizer_steps"] % 2 == 1]
    assert later
    for call in recorder.calls:
        torch.testing.assert_close(call["lp_old"], call["lp_at_rollout_weights"], rtol=0, atol=2e-5)
    # ... and the earlier updates did move the weights, so the check above tells the two apart
    for call in later:
        assert float((call["lp_main"] - call["lp_at_rollout_weights"]).abs().max()) > 1e-3


def test_rollout_logprobs_reach_the_loss_aligned_with_the_scored_tokens(loop):
    """The engine's sampling log-probs, gathered through the packed layout, equal the trainer's
    log-probs under the rollout weights token for token (temperature 1, no top-k/top-p)."""
    recorder, _ = loop
    for call in recorder.calls:
        torch.testing.assert_close(call["lp_rollout"], call["lp_at_rollout_weights"], rtol=0, atol=1e-4)


def test_every_micro_batch_divides_by_its_mini_batch_token_count(loop):
    """The accumulated micro-batch losses are the mini-batch token mean: each divides by the token
    count of the whole mini-batch, not by its own."""
    recorder, _ = loop
    by_mini = {}
    for call in recorder.calls:
        by_mini.setdefault((call["rl_step"], call["optimizer_steps"]), []).append(call)
    for calls in by_mini.values():
        total = sum(c["lp_old"].numel() for c in calls)
        assert [c["num_tokens"] for c in calls] == [total] * len(calls)


def test_gradients_are_cleared_between_mini_batches(loop):
    recorder, _ = loop
    firsts = first_micro_of_each_mini_batch(recorder.calls)
    assert len(firsts) == 4
    assert all(c["grads_clear"] for c in firsts)


def test_learning_rate_schedule_advances_once_per_rl_step(loop):
    """Warm-up over 4 RL steps: both mini-batches of step s run at (s + 1) / 4 of the peak."""
    recorder, metrics = loop
    want = [PEAK_LR / 4, PEAK_LR / 4, PEAK_LR / 2, PEAK_LR / 2]
    assert recorder.lrs == pytest.approx(want, rel=1e-12)
    assert [m["optim/lr"] for m in metrics] == pytest.approx([PEAK_LR / 2, PEAK_LR * 3 / 4], rel=1e-12)
    assert recorder.run.scheduler.last_epoch == 2


def test_clip_defaults_are_dapo_clip_higher(loop):
    """eps_low 0.2, eps_high 0.28 (DAPO's clip-higher): the dataclass defaults, the tiny preset,
    the loss config the loop uses, and the loss functions' own defaults."""
    recorder, _ = loop
    assert (AlgorithmConfig().eps_low, AlgorithmConfig().eps_high) == (0.2, 0.28)
    assert (LossConfig().eps_low, LossConfig().eps_high) == (0.2, 0.28)
    tiny = parse_config([]).to_loss_config()
    assert (tiny.eps_low, tiny.eps_high) == (0.2, 0.28)
    assert (recorder.run.loss_cfg.eps_low, recorder.run.loss_cfg.eps_high) == (0.2, 0.28)
    # ratios 0.79 and 0.81 around 1 - 0.2, 1.27 and 1.29 around 1 + 0.28, with the functions' defaults
    ratios = torch.tensor([0.79, 0.81, 1.27, 1.29])
    lp_old = torch.zeros(4)
    _, low, _, _ = clipped_surrogate(lp_old, ratios.log(), -torch.ones(4))
    _, _, high, _ = clipped_surrogate(lp_old, ratios.log(), torch.ones(4))
    assert low.tolist() == [True, False, False, False]
    assert high.tolist() == [False, False, False, True]
    _, metrics = policy_loss(lp_old, ratios.log(), torch.tensor([-1.0, -1.0, 1.0, 1.0]), torch.ones(4))
    assert float(metrics["clip_low"]) == pytest.approx(0.25) and float(metrics["clip_high"]) == pytest.approx(
        0.25
    )
