"""Distributed building blocks on CPU (gloo): FSDP2 over 2 processes gives the single-process loss and
gradients when the token-mean normaliser is global; a sharded checkpoint saved on 2 ranks loads on
1; torchrun's environment is checked.

The 2-process half runs once per session: this file is also the torchrun worker (``__main__``
below), which writes what it computed to a directory that the tests compare with a
single-process run of the same batch.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from gloo_group import RANK_ENV, gloo_ranks, run_two_ranks
from model_helpers import small_qwen2_mtp
from test_batching import VOCAB, random_samples, tiny_model
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
)

from occ_fast.algorithm import LossConfig, compute_loss
from occ_fast.checkpointing.files import CheckpointError
from occ_fast.checkpointing.sharded import (
    export_hf,
    is_sharded_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)
from occ_fast.checkpointing.single_process import load_checkpoint, save_checkpoint
from occ_fast.config import OptimConfig
from occ_fast.distributed.collectives import all_gather_ints, gather_metrics, global_sum
from occ_fast.distributed.data_parallel import global_positions, pad_micro_batches, shard_prompts
from occ_fast.distributed.fsdp import clip_grad_norm, shard_model
from occ_fast.distributed.process_group import DistributedEnvError, exit_rank, init_distributed
from occ_fast.model import MTPModel, load_mtp_model
from occ_fast.policy.batching import MicroBatch, Sample, make_micro_batches
from occ_fast.policy.forward import policy_logprobs
from occ_fast.training.optim import build_optimizer, build_scheduler
from occ_fast.training.update import update_mini_batch
from occ_fast.training.update_stats import UpdateStats

SEED = 4
GROUP = 3  # completions per prompt
NUM_SAMPLES = 15  # 5 groups: ranks get 3 and 2, with different micro-batch counts
TOKEN_BUDGET = 20
STEP = 7
LOSS_CFG = LossConfig(mtp_regime="policy", mtp_coef=0.5)  # a fixed coefficient: grouping-independent
OCC_CFG = LossConfig(mtp_regime="occ", occ_lam_plus=5.0)  # one coefficient per micro-batch
OPTIM_CFG = OptimConfig(lr=1e-2, warmup_steps=0)
TORCHRUN_TIMEOUT_S = 150


def tied_model(seed: int) -> MTPModel:
    """A model whose lm_head is the embedding (as in small Qwen2.5 models): one shared FSDP parameter."""
    return small_qwen2_mtp(vocab=VOCAB, num_mtp=1, seed=seed, tie=True)


def token_counts(samples: list[Sample], num_mtp: int) -> tuple[float, list[float]]:
    return float(sum(len(s.response_ids) for s in samples)), [
        float(sum(s.mtp_rows(k) for s in samples)) for k in range(1, num_mtp + 1)
    ]


def train_micro_batches(
    model: MTPModel,
    micros: list[tuple[MicroBatch, bool]],
    num_tokens: torch.Tensor | float,
    mtp_tokens: list[torch.Tensor | float],
    loss_cfg: LossConfig = LOSS_CFG,
) -> torch.Tensor:
    """Backward every micro-batch's share of the token-mean loss (padding ones scaled by 0); the
    summed loss, detached."""
    total = torch.zeros(())
    for micro, real in micros:
        heads = policy_logprobs(model, micro, temperature=1.0)
        lp = heads.heads[0].logprob
        adv = heads.gather(micro.advantages)
        loss, _ = compute_loss(
            loss_cfg,
            (lp - 0.05 * adv).detach(),
            lp,
            adv,
            torch.ones_like(lp),
            lp_mtp=[h.logprob for h in heads.heads[1:]],
            mtp_masks=[heads.mtp_mask(k) for k in range(1, model.num_mtp + 1)],
            num_tokens=num_tokens,
            mtp_num_tokens=mtp_tokens,
        )
        (loss if real else loss * 0.0).backward()
        if real:
            total = total + loss.detach()
    return total


def single_micro_batches(samples: list[Sample]) -> list[MicroBatch]:
    return make_micro_batches(samples, token_budget=TOKEN_BUDGET)


def single_process_step(model: MTPModel, samples: list[Sample]) -> torch.Tensor:
    micros = single_micro_batches(samples)
    num_tokens, mtp_tokens = token_counts(samples, model.num_mtp)
    return train_micro_batches(model, [(m, True) for m in micros], num_tokens, mtp_tokens)


def metrics_run(model: MTPModel) -> SimpleNamespace:
    """What ``update_mini_batch`` reads of a run; lr 0: only the step's metrics are of interest."""
    return SimpleNamespace(
        cfg=SimpleNamespace(
            rollout=SimpleNamespace(temperature=1.0, max_new_tokens=8), optim=SimpleNamespace(grad_clip=1.0)
        ),
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        loss_cfg=LOSS_CFG,
        autocast_dtype=None,
    )


def signal_model() -> MTPModel:
    """The tiny model with a sharpened head: its entropy differs from context to context."""
    model = tiny_model(SEED)
    with torch.no_grad():
        model.base.lm_head.weight.mul_(20.0)
    return model


def signal_samples() -> list[Sample]:
    """``random_samples`` whose first 3 groups (rank 0's) answer with MTP depth 1's own greedy drafts,
    and whose rollout log-probs are the trainer's own in group 0 and drift further from them group by
    group after it: the two ranks' MTP accuracy, forecast, entropy and mismatch differ, as their token
    counts do."""
    model = signal_model().eval()
    samples = []
    for i, s in enumerate(random_samples(NUM_SAMPLES, seed=SEED)):
        response, rollout = s.response_ids, s.rollout_logprobs * (1 + 3 * (i // GROUP))
        if i < 3 * GROUP and len(response) > 1:
            ids = s.prompt_ids + response[:1]
            while len(ids) < len(s.prompt_ids) + len(response):
                with torch.no_grad():
                    out = model(torch.tensor([ids]))
                ids.append(int((out.mtp_weight @ out.mtp_hidden[0][0, -2]).argmax()))
            response = ids[len(s.prompt_ids) :]
        if i < GROUP:
            (micro,) = make_micro_batches([Sample(s.prompt_ids, response, rollout, 0.0)], token_budget=64)
            with torch.no_grad():
                rollout = policy_logprobs(model, micro, temperature=1.0).heads[0].logprob
        samples.append(Sample(s.prompt_ids, response, rollout, s.advantage))
    return samples


# ---- the torchrun worker -------------------------------------------------------------------------


def rank_share(
    rank: int, world: int, samples: list[Sample] | None = None
) -> tuple[list[Sample], list[MicroBatch]]:
    """Rank ``rank``'s share (whole groups) of the batch (default: ``random_samples``) and the
    micro-batches it packs from it."""
    samples = random_samples(NUM_SAMPLES, seed=SEED) if samples is None else samples
    groups = shard_prompts(range(NUM_SAMPLES // GROUP), rank, world)
    mine = [s for g in groups for s in samples[g * GROUP : (g + 1) * GROUP]]
    return mine, make_micro_batches(mine, token_budget=TOKEN_BUDGET)


def rank_step(
    model: MTPModel, rank: int, world: int, loss_cfg: LossConfig = LOSS_CFG
) -> tuple[torch.Tensor, int]:
    """This rank's share of the batch, normalised by the global token counts."""
    mine, micros = rank_share(rank, world)
    num_tokens, mtp_tokens = token_counts(mine, model.num_mtp)
    loss = train_micro_batches(
        model,
        pad_micro_batches(micros),
        global_sum(num_tokens),
        [global_sum(t) for t in mtp_tokens],
        loss_cfg,
    )
    return global_sum(loss), len(micros)


def full_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}


def worker(out: Path) -> None:
    with gloo_ranks() as info:
        results = rank_results(info.rank, info.world_size, out)
        if info.rank == 0:
            torch.save(results, out / "results.pt")


def rank_results(rank: int, world: int, out: Path) -> dict:
    """What rank ``rank`` computes for the tests; the checkpoints it saves and exports go under ``out``."""
    results: dict = {"world_size": world}

    model = shard_model(tiny_model(SEED), mixed_precision=False)
    loss, micros = rank_step(model, rank, world)
    results["micros"] = gather_metrics({f"micros/rank{rank}": micros})
    results["loss"], results["grads"] = float(loss), full_grads(model)
    results["grad_norm"] = float(clip_grad_norm(model, float("inf")))

    occ = shard_model(tiny_model(SEED), mixed_precision=False)
    rank_step(occ, rank, world, OCC_CFG)
    results["occ_grads"] = full_grads(occ)

    stats = UpdateStats()
    mine, micros = rank_share(rank, world, signal_samples())
    update_mini_batch(metrics_run(signal_model()), mine, pad_micro_batches(micros), None, stats)
    results["token_metrics"] = gather_metrics(stats.summary(), weights=stats.token_weights())

    ac = shard_model(tiny_model(SEED), mixed_precision=False, activation_checkpointing=True)
    rank_step(ac, rank, world)
    results["ac_active"] = all(layer.gradient_checkpointing for layer in ac.base.model.layers)
    results["ac_grads"] = full_grads(ac)

    metrics = {"mean": float(rank), "count": float(rank + 1), "low": 3.0 - rank, "high": 3.0 - rank}
    metrics |= {"only0": 5.0} if rank == 0 else {}
    results["metrics"] = gather_metrics(metrics, sums={"count"}, mins={"low"}, maxs={"high"})
    results["ints"] = all_gather_ints(10 * rank + 1)
    results["positions"] = global_positions([7, 2] if rank == 0 else [5, 0, 9])  # rank 0's saved
    results["padded"] = pad_micro_batches([] if rank == 0 else ["a", "b"], filler="f")

    # One optimizer step on a tied model, then a sharded checkpoint, a reload on 2 ranks and an export.
    tied = shard_model(tied_model(SEED), mixed_precision=False)
    optimizer = build_optimizer(tied, OPTIM_CFG)
    scheduler = build_scheduler(optimizer, OPTIM_CFG, total_steps=10)
    rank_step(tied, rank, world)
    optimizer.step()
    scheduler.step()
    extra = {"next_step": STEP + 1, "sampler": {"position": 11}}
    torch.manual_seed(100 + rank)  # a stream of each rank's own, as the trainer's ranks have
    save_sharded_checkpoint(out / "run", STEP, tied, optimizer, scheduler, extra=extra)
    draws_after_save = torch.rand(4)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    results["full_model"] = get_model_state_dict(tied, options=full)
    results["full_optim"] = get_optimizer_state_dict(tied, optimizer, options=full)
    export_hf(tied, out / "hf")

    again = shard_model(tied_model(SEED + 1), mixed_precision=False)
    again_optimizer = build_optimizer(again, OPTIM_CFG)
    build_scheduler(again_optimizer, OPTIM_CFG, total_steps=10)  # as a resumed run builds it (initial_lr)
    load_sharded_checkpoint(out / "run" / "checkpoints" / f"step_{STEP:09d}", again, again_optimizer)
    results["rng_draws"] = [None] * world  # per rank: after the save, after the reload
    dist.all_gather_object(results["rng_draws"], (draws_after_save, torch.rand(4)))
    results["reloaded_model"] = get_model_state_dict(again, options=full)
    results["reloaded_optim"] = get_optimizer_state_dict(again, again_optimizer, options=full)

    mixed = shard_model(tiny_model(SEED), mixed_precision=True)
    micro = make_micro_batches(random_samples(4, seed=SEED), token_budget=1000)[0]
    head_weight = mixed(micro.input_ids, micro.attention_mask, micro.position_ids).weight
    mixed.reshard()  # the root keeps its bf16 unsharded parameters after forward until resharded
    sharded = mixed.base.lm_head.weight
    results["mixed_dtypes"] = (head_weight.dtype, type(sharded).__name__, sharded.dtype)
    return results


# ---- the tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("dist")
    run_two_ranks(__file__, out, TORCHRUN_TIMEOUT_S)
    return out, torch.load(out / "results.pt", weights_only=False)


def test_fsdp_two_ranks_match_single_process_loss_and_gradients(two_ranks):
    _, res = two_ranks
    assert res["world_size"] == 2
    counts = res["micros"]
    assert counts["micros/rank0"] != counts["micros/rank1"]  # padding micro-batches were needed
    model = tiny_model(SEED)
    loss = single_process_step(model, random_samples(NUM_SAMPLES, seed=SEED))
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert res["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert res["grads"].keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(res["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    expected_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    assert res["grad_norm"] == pytest.approx(float(expected_norm), rel=1e-5)


def test_occ_under_two_ranks_is_one_process_with_the_ranks_micro_batches(two_ranks):
    """OCC's coefficient is one per micro-batch, and each rank packs its own: 2 ranks give the
    gradient of one process that trains on the ranks' micro-batches, not that of one process packing
    the whole batch (the fixed-coefficient ``policy`` gradient is the same either way, above)."""
    _, res = two_ranks
    samples = random_samples(NUM_SAMPLES, seed=SEED)
    num_tokens, mtp_tokens = token_counts(samples, tiny_model(SEED).num_mtp)
    per_rank = [(m, True) for rank in range(2) for m in rank_share(rank, 2)[1]]
    grads = {}
    for name, micros in (("ranks", per_rank), ("one", [(m, True) for m in single_micro_batches(samples)])):
        model = tiny_model(SEED)
        train_micro_batches(model, micros, num_tokens, mtp_tokens, OCC_CFG)
        grads[name] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert res["occ_grads"].keys() == grads["ranks"].keys()
    for name, grad in grads["ranks"].items():
        torch.testing.assert_close(res["occ_grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    change = relative_change(grads["ranks"], grads["one"])
    assert change > 1e-3  # far above the 1e-4 summation-order tolerance: the grouping matters


TOKEN_MEANS = (
    "policy/entropy", "mtp/accuracy", "mtp/top1_depth1", "mtp/top1_depth2",
    "mismatch/abs_diff_mean", "mismatch/kl_k1", "mismatch/kl_k3", "mismatch/frac_above_threshold",
    "spec/forecast_acceptance_rate_n1", "spec/forecast_acceptance_rate_n2",
    "spec/forecast_mean_acceptance_length_n2",
)  # fmt: skip


def test_token_means_over_two_ranks_are_the_single_process_ones(two_ranks):
    """The ranks hold different token counts (3 groups and 2): their token means combine weighted by
    those counts, so that the logged entropy, mismatch, MTP accuracy and forecast are one process's."""
    _, res = two_ranks
    samples = signal_samples()
    stats = UpdateStats()
    micros = [(m, True) for m in single_micro_batches(samples)]
    update_mini_batch(metrics_run(signal_model()), samples, micros, None, stats)
    want = stats.summary()
    per_rank = []
    for rank in range(2):
        share = UpdateStats()
        mine, rank_micros = rank_share(rank, 2, samples)
        update_mini_batch(metrics_run(signal_model()), mine, [(m, True) for m in rank_micros], None, share)
        per_rank.append(share.summary())
    for key in TOKEN_MEANS:
        tolerance = 2e-6 * abs(want[key]) + 1e-7
        unweighted = (per_rank[0][key] + per_rank[1][key]) / 2
        assert abs(unweighted - want[key]) > 10 * tolerance, key  # the test can tell them apart
        assert res["token_metrics"][key] == pytest.approx(want[key], rel=0, abs=tolerance), key


def relative_change(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """``||a - b|| / ||b||`` over every parameter's gradient."""
    diff = sum(float((a[n] - b[n]).square().sum()) for n in b)
    return (diff / sum(float(g.square().sum()) for g in b.values())) ** 0.5


def test_activation_checkpointing_keeps_gradients(two_ranks):
    _, res = two_ranks
    assert res["ac_active"]
    for name, grad in res["grads"].items():
        torch.testing.assert_close(res["ac_grads"][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_mixed_precision_computes_in_bf16_with_fp32_master_weights(two_ranks):
    _, res = two_ranks
    assert res["mixed_dtypes"] == (torch.bfloat16, "DTensor", torch.float32)


def test_gather_metrics_means_and_sums_over_ranks(two_ranks):
    _, res = two_ranks
    assert res["metrics"] == {"mean": 0.5, "count": 3.0, "low": 2.0, "high": 3.0, "only0": 5.0}
    assert res["ints"] == [1, 11]
    assert res["positions"] == [3, 1]  # 7 and 2 among 0, 2, 5, 7, 9
    assert res["padded"] == [("f", False), ("f", False)]  # no chunk here: joins rank 1's two


def assert_optim_equal(actual: dict, expected: dict) -> None:
    assert actual["state"].keys() == expected["state"].keys()
    for fqn, state in expected["state"].items():
        assert actual["state"][fqn].keys() == state.keys(), fqn
        for key, value in state.items():
            torch.testing.assert_close(actual["state"][fqn][key], value, rtol=0, atol=0, msg=f"{fqn} {key}")
    strip = lambda groups: [{k: v for k, v in g.items() if k != "params"} for g in groups]  # noqa: E731
    assert strip(actual["param_groups"]) == strip(expected["param_groups"])
    assert [sorted(g["params"]) for g in actual["param_groups"]] == [
        sorted(g["params"]) for g in expected["param_groups"]
    ]


def test_sharded_checkpoint_resumes_on_two_ranks(two_ranks):
    _, res = two_ranks
    assert res["reloaded_model"].keys() == res["full_model"].keys()
    for key, value in res["full_model"].items():
        assert torch.equal(res["reloaded_model"][key], value), key
    assert_optim_equal(res["reloaded_optim"], res["full_optim"])


def test_sharded_checkpoint_gives_every_rank_its_own_rng_back(two_ranks):
    _, res = two_ranks
    (saved0, reloaded0), (saved1, reloaded1) = res["rng_draws"]
    assert not torch.equal(saved0, saved1)  # the ranks' streams differ, so a mix-up shows
    assert torch.equal(reloaded0, saved0) and torch.equal(reloaded1, saved1)


def test_sharded_checkpoint_from_two_ranks_loads_in_one_process(two_ranks, caplog):
    out, res = two_ranks
    path = out / "run" / "checkpoints" / f"step_{STEP:09d}"
    assert is_sharded_checkpoint(path)
    assert not list(path.parent.glob(".tmp-*"))
    model = tied_model(SEED + 2)  # different weights, overwritten by the load
    optimizer = build_optimizer(model, OPTIM_CFG)
    scheduler = build_scheduler(optimizer, OPTIM_CFG, total_steps=10)
    with caplog.at_level(logging.WARNING, logger="occ_fast.checkpointing.sharded"):
        loaded = load_sharded_checkpoint(path, model, optimizer, scheduler)
    assert not dist.is_initialized()
    assert "RNG state not restored" in caplog.text
    assert loaded.step == STEP and loaded.extra == {"next_step": STEP + 1, "sampler": {"position": 11}}
    assert scheduler.last_epoch == 1
    assert model.base.lm_head.weight is model.base.model.embed_tokens.weight
    state = model.state_dict()
    for key, value in res["full_model"].items():
        assert torch.equal(state[key], value), key
    assert_optim_equal(get_optimizer_state_dict(model, optimizer), res["full_optim"])


def test_export_hf_writes_the_full_model(two_ranks):
    out, res = two_ranks
    exported = load_mtp_model(out / "hf", attn_implementation="sdpa")
    assert exported.num_mtp == 1
    state = exported.state_dict()
    for key, value in res["full_model"].items():
        assert torch.equal(state[key], value), key


def test_sharded_checkpoint_in_one_process_restores_rng_and_prunes(tmp_path):
    model = tied_model(SEED)
    optimizer = build_optimizer(model, OPTIM_CFG)
    single_process_step(model, random_samples(6, seed=SEED))
    optimizer.step()
    for step in (1, 2):
        path = save_sharded_checkpoint(tmp_path, step, model, optimizer, extra={"step": step}, keep_last=1)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    expected = torch.rand(3)
    fresh = tied_model(SEED + 1)
    fresh_optimizer = build_optimizer(fresh, OPTIM_CFG)
    loaded = load_sharded_checkpoint(path, fresh, fresh_optimizer)
    assert torch.equal(torch.rand(3), expected)  # the RNG is back where it was when saved
    assert loaded.extra == {"step": 2}
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert_optim_equal(
        get_optimizer_state_dict(fresh, fresh_optimizer), get_optimizer_state_dict(model, optimizer)
    )
    with pytest.raises(CheckpointError, match="has no scheduler.pt"):
        load_sharded_checkpoint(path, fresh, scheduler=build_scheduler(fresh_optimizer, OPTIM_CFG, 10))
    assert is_sharded_checkpoint(path) and not is_sharded_checkpoint(tmp_path / "missing")
    with pytest.raises(
        CheckpointError, match="dcp \\(sharded\\) checkpoint: load it with occ_fast.checkpointing.sharded"
    ):
        load_checkpoint(path, fresh)
    plain = save_checkpoint(tmp_path / "plain", 0, fresh)
    assert not is_sharded_checkpoint(plain)
    with pytest.raises(CheckpointError, match="not a sharded \\(DCP\\) checkpoint"):
        load_sharded_checkpoint(plain, fresh)


def test_init_distributed_single_process(monkeypatch):
    for name in RANK_ENV:
        monkeypatch.delenv(name, raising=False)
    info = init_distributed(device_type="cpu", timeout_s=60)
    assert (info.rank, info.world_size, info.local_rank, info.device, info.is_main) == (
        0,
        1,
        0,
        torch.device("cpu"),
        True,
    )
    assert not dist.is_initialized()
    assert float(global_sum(3)) == 3.0
    assert gather_metrics({"a": 1.0}, sums={"a"}) == {"a": 1.0}
    assert all_gather_ints(7) == [7]
    assert pad_micro_batches(["x", "y"]) == [("x", True), ("y", True)]
    assert pad_micro_batches([], filler="f") == []
    with pytest.raises(ValueError, match="no micro-batches and no filler"):
        pad_micro_batches([])
    assert global_positions([30, 10, 20]) == [2, 0, 1]
    with pytest.raises(ValueError, match="keys repeat"):
        global_positions([1, 1])


GOOD_ENV = {
    "WORLD_SIZE": "2",
    "RANK": "1",
    "LOCAL_RANK": "1",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"WORLD_SIZE": None}, "RANK and LOCAL_RANK set but WORLD_SIZE is not"),
        ({"RANK": None}, "WORLD_SIZE is set but RANK is not"),
        ({"RANK": "one"}, "RANK='one' is not an integer"),
        ({"RANK": "2"}, r"RANK=2 is outside \[0, WORLD_SIZE=2\)"),
        ({"WORLD_SIZE": "0", "RANK": "0", "LOCAL_RANK": "0"}, "WORLD_SIZE=0 must be >= 1"),
        ({"LOCAL_RANK": "-1"}, r"LOCAL_RANK=-1 must lie in \[0, RANK=1\]"),
        ({"MASTER_ADDR": None}, "MASTER_ADDR is not"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000 is not a valid port"),
    ],
)
def test_init_distributed_rejects_bad_env(monkeypatch, change, message):
    for name, value in (GOOD_ENV | change).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(DistributedEnvError, match=message):
        init_distributed(device_type="cpu")
    assert not dist.is_initialized()


def test_shard_prompts_gives_every_prompt_to_exactly_one_rank():
    prompts = list(range(10, 21))  # 11 prompts
    shares = [shard_prompts(prompts, r, 3) for r in range(3)]
    assert shares == [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19, 20]]
    assert shard_prompts(prompts, 0, 1) == prompts
    with pytest.raises(ValueError, match="rank 3 is outside"):
        shard_prompts(prompts, 3, 3)
    with pytest.raises(ValueError, match="2 prompts cannot give each of 4 ranks one"):
        shard_prompts([1, 2], 0, 4)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    worker(Path(sys.argv[1]))
    exit_rank(0)  # as the trainer's ranks leave (occ_fast/distributed/process_group.py)
