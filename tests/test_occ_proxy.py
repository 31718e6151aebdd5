"""What the OCC proxy reduces to (gap form), logged by the exact diagnostics, and the experiment that
compares it with the proxy and lam* across learning rates."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_diagnostics import TEMPERATURE, make_samples, mini_batch, stats, tiny_model

from occ_fast.algorithm import LossConfig, occ_coefficient
from occ_fast.algorithm.occ import gap_form
from occ_fast.config import parse_config
from occ_fast.experiments import proxy
from occ_fast.experiments.regimes import seed_argv
from occ_fast.policy.forward import policy_logprobs

T = torch.float64


def test_gap_form_by_hand():
    out = gap_form(
        torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=T), torch.tensor([2.0, -2.0, 2.0, -2.0], dtype=T)
    )
    assert out["corr"].item() == pytest.approx(1.0)
    assert (out["rms_d_rl"].item(), out["rms_gap"].item()) == pytest.approx((1.0, 2.0))
    assert out["gap_form"].item() == pytest.approx(0.5)
    orthogonal = gap_form(
        torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=T), torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=T)
    )
    assert orthogonal["corr"].item() == 0.0 and orthogonal["gap_form"].item() == 0.0
    constant = gap_form(torch.zeros(3, dtype=T), torch.ones(3, dtype=T))
    assert constant["corr"].item() == 0.0 and constant["gap_form"].item() == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_paper_proxy_is_the_gap_form_when_the_gap_dominates(seed):
    """d_mtp = gap + d_rl with |d_rl| << |gap| (zero-mean gap): the proxy equals the gap form."""
    gen = torch.Generator().manual_seed(seed)
    gap = torch.randn(400, generator=gen, dtype=T)
    gap = gap - gap.mean()
    noise = torch.randn(400, generator=gen, dtype=T)
    d_rl = 1e-3 * (0.4 * gap + noise - noise.mean())
    lp_old = torch.full((400,), -2.0, dtype=T)
    lp_main = lp_old + d_rl
    lam = occ_coefficient(lp_old, lp_main, lp_main + gap, torch.ones(400)).lam.item()
    form = gap_form(d_rl, gap)["gap_form"].item()
    assert abs(form) > 1e-4
    assert lam == pytest.approx(form, rel=0.02)


def test_exact_diagnostics_log_the_gap_form_of_the_mini_batch():
    model = tiny_model().train()
    cfg = LossConfig(mtp_regime="occ")
    micros, olds, num_tokens, mtp_tokens = mini_batch(model, make_samples(seed=4))
    out = stats(model, micros, olds, cfg, num_tokens, mtp_tokens)
    d_rl, gap = [], []
    with torch.no_grad():
        for micro, lp_old in zip(micros, olds):
            heads = policy_logprobs(model, micro, temperature=TEMPERATURE)
            valid = heads.mtp_mask(1)
            d_rl.append((heads.heads[0].logprob - lp_old)[valid])
            gap.append((heads.heads[1].logprob - heads.heads[0].logprob)[valid])
    expected = gap_form(torch.cat(d_rl), torch.cat(gap))
    for key in ("corr", "rms_d_rl", "rms_gap", "gap_form"):
        assert out[f"exact/{key}"] == pytest.approx(expected[key].item(), rel=1e-5), key
    assert out["exact/rms_d_rl"] > 0 and out["exact/rms_gap"] > 0


def rows(scale: float) -> list[dict[str, float]]:
    return [
        {"step": s, "lam_proxy": scale * p, "lam_star": st, "gap_form": scale * g, "corr": 0.5, "rms_d_rl": scale,
         "rms_gap": 2.0, "cosine": 0.2, "v2": 1.0}
        for s, (p, st, g) in enumerate([(0.01, 0.3, 0.02), (0.03, -0.1, 0.05), (-0.02, 0.5, -0.03)])
    ]  # fmt: skip


def test_summary_of_rows_by_hand():
    s = proxy.summarize_rows(rows(1.0))
    assert s["rows"] == 3
    assert s["median_lam_proxy"] == pytest.approx(0.01) and s["median_lam_star"] == pytest.approx(0.3)
    assert s["median_abs_lam_proxy"] == pytest.approx(0.02)
    assert s["median_proxy_over_gap_form"] == pytest.approx(0.6)  # ratios 0.5, 0.6, 0.667
    assert s["pearson_proxy_gap_form"] == pytest.approx(
        proxy.pearson([0.01, 0.03, -0.02], [0.02, 0.05, -0.03])
    )
    assert s["sign_agreement_proxy_lam_star"] == pytest.approx(1 / 3)
    assert proxy.summarize_rows([]) == {"rows": 0}
    assert math.isnan(proxy.pearson([1.0], [2.0])) and math.isnan(proxy.pearson([1.0, 1.0], [2.0, 3.0]))


def test_summary_markdown_states_the_scaling(tmp_path):
    results = {
        "command": "python -m occ_fast.experiments.proxy",
        "steps": 40,
        "exact_every": 2,
        "summary": {"1e-4": proxy.summarize_rows(rows(1.0)), "5e-4": proxy.summarize_rows(rows(5.0))},
    }
    proxy.write_summary(tmp_path / "summary.md", results)
    text = (tmp_path / "summary.md").read_text()
    assert "| 1e-4 | 3 | +0.0100 | +0.300 |" in text and "| 5e-4 | 3 | +0.0500 | +0.300 |" in text
    assert "median |proxy lam| goes from 0.0200 to 0.1000 (5.0x)" in text
    to_gap, to_star = (
        float(np.corrcoef([r["lam_proxy"] for r in rows(1.0)], [r[key] for r in rows(1.0)])[0, 1])
        for key in ("gap_form", "lam_star")
    )  # the same at both rates: Pearson ignores the scale
    assert f"Pearson correlation is {to_gap:+.3f} with the gap form and {to_star:+.3f} with lam*" in text
    wider = {**results["summary"], "2e-4": {**proxy.summarize_rows(rows(2.0)), "pearson_proxy_lam_star": 0.5}}
    assert f"and between {to_star:+.3f} and +0.500 with lam* across the rates" in proxy.reading(wider)
    assert "(tiny preset, `occ`, 40 RL steps" in text  # results from before --preset: the tiny preset
    proxy.write_summary(tmp_path / "summary.md", {**results, "preset": "carries"})
    assert "(carries preset, `occ`, 40 RL steps" in (tmp_path / "summary.md").read_text()


def test_every_run_and_the_warm_start_train_the_chosen_preset(tmp_path):
    args = proxy.parse_args(["--preset", "carries", "--runs", str(tmp_path)])
    cfg = parse_config(proxy.run_argv(args, "2e-4"))
    assert (cfg.data.solution, cfg.optim.lr, cfg.mtp.regime) == ("carries", 2e-4, "occ")
    warm = parse_config(seed_argv(SimpleNamespace(preset=args.preset, extra=args.extra, steps=args.steps), 0))
    assert warm.data.solution == "carries" and warm.train.warmup_sft_steps > 0


def test_experiment_end_to_end(tmp_path):
    extra = (
        "--model.tiny.hidden-size 32 --model.tiny.intermediate-size 64 --train.warmup-sft-steps 30 "
        "--data.prompts-per-step 4 --rollout.n 4 --rollout.max-new-tokens 5 --optim.warmup-steps 0"
    )
    argv = ["--lrs", "1e-3", "3e-3", "--steps", "2", "--exact-every", "1", "--output", str(tmp_path / "out"),
            "--runs", str(tmp_path / "runs"), f"--extra={extra}"]  # fmt: skip
    assert proxy.main(argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results["summary"]) == ["1e-3", "3e-3"]
    for lr, lr_rows in results["rows"].items():
        logged = [
            json.loads(line)
            for line in (tmp_path / "runs" / f"lr-{lr}" / "metrics.jsonl").read_text().splitlines()
        ]
        assert len(logged) == 2
        assert [r["step"] for r in lr_rows] == [m["step"] for m in logged if m["exact/v2"] > 0]
    assert (
        (tmp_path / "out" / "summary.md")
        .read_text()
        .startswith("Measured by `python -m occ_fast.experiments.proxy")
    )
    assert proxy.main(argv) == 2  # the run directories exist: never overwritten
