"""The trainer under torchrun (2 CPU processes, gloo, FSDP2) against the same run in one process.

Rollouts are sampled (temperature 0.3), each prompt's from a seed of its own
(``tests/seeded_rollouts.py``), so both runs sample the same completions from the same weights
whichever rank draws the prompt; the reward (``tests/signal_reward.py``) gives groups reward
variance, so advantages, losses and gradients are non-zero (asserted). The regime is ``ce`` (no
per-micro-batch coefficient), so the data-parallel gradient is the single-process one up to
summation order: each rank trains on its half of the groups with the global token normaliser,
padding micro-batches where the ranks' counts differ. Then the 2-rank sharded checkpoint resumes on
2 ranks and in one process, and both must continue as the uninterrupted single-process run does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import background
import pytest
import seeded_rollouts
import torch
import warm_python
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from occ_fast.checkpointing.files import CheckpointError
from occ_fast.checkpointing.resume import load_any_checkpoint
from occ_fast.config import ConfigError, parse_config
from occ_fast.distributed.data_parallel import shard_prompts
from occ_fast.policy.batching import Sample
from occ_fast.train import train
from occ_fast.training.setup import check_world_size
from occ_fast.training.update import mini_batches

TORCHRUN_TIMEOUT_S = 240
TESTS = os.path.dirname(os.path.abspath(__file__))
ARGS = [
    "--model.tiny.hidden-size", "32",
    "--model.tiny.intermediate-size", "64",
    "--model.tiny.num-layers", "2",
    "--train.device", "cpu",
    "--train.warmup-sft-steps", "4",
    "--mtp.regime", "ce",
    "--data.prompts-per-step", "8",
    "--rollout.n", "2",
    "--rollout.max-new-tokens", "5",
    "--rollout.temperature", "0.3",  # sampled, but some completions stop early: lengths differ
    "--reward.fn", "signal_reward:digit_parity",
    "--algorithm.dynamic-sampling",  # zero-variance groups are refilled: rounds agree over ranks
    "--algorithm.dynamic-sampling-max-rounds", "2",
    "--optim.lr", "1e-3",
    "--optim.eps", "1e-3",  # Adam's update ~ linear in small gradients: summation-order noise stays small
    "--optim.mini-batches", "2",
    "--optim.micro-batch-tokens", "22",  # 1 or 2 sequences each: the ranks' micro-batch counts differ
    "--eval.every", "2",
    "--eval.num-problems", "5",  # 3 + 2 over the ranks
    "--run.save-every", "1",
    "--run.plot-every", "0",
]  # fmt: skip
COMPARED = (
    "rollout/rounds",
    "reward/mean",
    "response/length_mean",
    "loss",
    "mtp1/loss",
    "optim/grad_norm",
    "optim/update_ratio",  # the weights' global norm, gathered from the FSDP2 shards
    "eval/avg_at_k",
)


def argv(out, name: str, steps: int, *extra: str) -> list[str]:
    return [*ARGS, "--run.output-dir", str(out), "--run.name", name, "--train.steps", str(steps), *extra]


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


def torchrun(args: list[str], nproc: int = 2, **extra_env: str) -> subprocess.CompletedProcess:
    env = warm_python.environ(background.environ(), **extra_env)
    proc = subprocess.Popen(
        warm_python.torchrun(nproc, os.path.join(TESTS, "seeded_rollouts.py"), *args),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    background.track(proc)
    try:
        stdout, stderr = proc.communicate(timeout=TORCHRUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"torchrun trainer hung for {TORCHRUN_TIMEOUT_S} s:\n{stderr[-6000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def resumed(out, source: str, name: str, steps: int, nproc: int | None = None) -> None:
    """Copy run ``source`` to ``name`` and continue it to ``steps`` (torchrun with ``nproc`` ranks,
    or in this process)."""
    shutil.copytree(out / source, out / name)
    args = argv(out, name, steps, "--run.resume", "auto")
    if nproc is None:
        train(parse_config(args))
        return
    done = torchrun(args, nproc=nproc)
    if done.returncode != 0:
        pytest.fail(f"torchrun resume failed ({done.returncode}):\n{done.stderr[-8000:]}")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process runs use one intra-op thread, as the torchrun ranks do (``OMP_NUM_THREADS=1``): the
    SFT warm-start's AdamW (eps 1e-8) turns reduction-order noise in a near-zero gradient element
    into a whole lr-sized update, so the thread counts must match for the weights to agree."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def two_rank_run(out) -> tuple:
    """2 steps on 2 ranks, under ``out`` (each rank records its exit in ``out/exit``)."""
    (out / "exit").mkdir()
    done = torchrun(argv(out, "dp", 2), SEEDED_ROLLOUTS_EXIT_DIR=str(out / "exit"))
    if done.returncode != 0:
        pytest.fail(f"torchrun trainer failed ({done.returncode}):\n{done.stderr[-8000:]}")
    return out, done


def two_rank_run_resumed_on_two_ranks(_) -> None:
    """The 2-rank run continued to 3 steps on 2 ranks (``dp-on-2`` beside it)."""
    out, _ = background.result(two_rank_run)
    resumed(out, "dp", "dp-on-2", 3, nproc=2)


RUNS, RESUMES = (
    pytest.mark.background(job=two_rank_run),
    pytest.mark.background(job=two_rank_run_resumed_on_two_ranks),
)


@pytest.fixture(scope="module")
def runs():
    """2 steps on 2 ranks (early, as a background job: tests/background.py), and the same 2 steps in one process."""
    out, done = background.result(two_rank_run)
    with pytest.MonkeyPatch.context() as monkeypatch:
        seeded_rollouts.install(monkeypatch)
        train(parse_config(argv(out, "single", 2)))
    return out, done


@pytest.fixture(scope="module")
def resumes(runs):
    """The 2-rank run continued to 3 steps on 2 ranks and in one process (its sharded checkpoint
    resharded), and the reference: 3 uninterrupted steps in one process."""
    out, _ = runs
    with pytest.MonkeyPatch.context() as monkeypatch:
        seeded_rollouts.install(monkeypatch)
        train(parse_config(argv(out, "single-3", 3)))
        resumed(out, "dp", "dp-on-1", 3)
    background.result(two_rank_run_resumed_on_two_ranks)
    return out


@RUNS
@RESUMES
def test_runs_have_reward_variance(resumes):
    """Non-zero advantages at every step: the comparisons below see a real gradient."""
    for m in metrics(resumes / "single-3"):
        assert m["reward/zero_std_groups"] < 8, m
        assert m["optim/grad_norm"] > 0 and m["policy/loss"] != 0, m


@RUNS
def test_two_ranks_train_like_one_process(runs):
    out, _ = runs
    dp, single = metrics(out / "dp"), metrics(out / "single")
    assert [m["step"] for m in dp] == [0, 1]  # rank 0 alone writes, one line per step
    assert sum(m["optim/padding_micro_batches"] for m in dp) >= 1  # the padding path ran
    assert all(m["reward/zero_std_groups"] < 8 and m["policy/loss"] != 0 for m in single)  # a signal
    for got, want in zip(dp, single):
        for key in COMPARED:
            assert (key in got) == (key in want), key
            if key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
        # counters are summed over the ranks, not averaged
        assert got["rollout/truncated"] == want["rollout/truncated"]
        assert got["reward/zero_std_groups"] == want["reward/zero_std_groups"]
    got, want = weights(out / "dp"), weights(out / "single")
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=2e-6, msg=name)


@RUNS
def test_two_rank_run_writes_sharded_checkpoints_and_a_full_export(runs):
    out, done = runs
    checkpoints = sorted((out / "dp" / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step_000000000", "step_000000001"]
    meta = json.loads((checkpoints[-1] / "meta.json").read_text())
    assert (meta["format"], meta["world_size"]) == ("dcp", 2)
    assert {p.name for p in checkpoints[-1].glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}
    assert (out / "dp" / "model" / "config.json").is_file()
    assert done.stderr.count("done 2 steps") == 1  # rank 0 alone reports


@RUNS
@RESUMES
@pytest.mark.parametrize("name", ["dp-on-2", "dp-on-1"])
def test_two_rank_checkpoint_resumes_on_two_ranks_or_one(resumes, name):
    out = resumes
    got_metrics, want_metrics = metrics(out / name), metrics(out / "single-3")
    assert [m["step"] for m in got_metrics] == [0, 1, 2]
    for key in COMPARED:
        got_value, want_value = got_metrics[2][key], want_metrics[2][key]
        assert got_value == pytest.approx(want_value, rel=1e-4, abs=1e-6), key
    got, want = weights(out / name), weights(out / "single-3")
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=4e-6, msg=key)
    meta = json.loads((sorted((out / name / "checkpoints").iterdir())[-1] / "meta.json").read_text())
    assert (meta["step"], meta.get("format")) == (2, "dcp" if name == "dp-on-2" else None)


@RUNS
@pytest.mark.skipif(sys.platform != "linux", reason="reads the rank's threads from /proc")
def test_finished_ranks_leave_without_the_interpreters_teardown(runs):
    """gloo's threads outlive ``destroy_process_group`` (the FSDP2 mesh stays referenced), and tearing
    them down with the interpreter can abort a rank whose run has finished and saved (SIGABRT,
    "terminate called without an active exception": torchrun then reports the job failed). A
    finished rank therefore leaves at once, its output flushed: the interpreter's teardown never runs."""
    out, done = runs
    for rank in (0, 1):
        threads = (out / "exit" / f"threads-{rank}").read_text().split()
        assert "pt_gloo_runloop" in threads, (
            f"torch now ends gloo's threads ({threads}): the fast exit can go"
        )
        assert not (out / "exit" / f"teardown-{rank}").exists(), f"rank {rank} ran the interpreter's teardown"
    assert done.returncode == 0 and done.stderr.rstrip().endswith(f"run directory: {out / 'dp'}")


@RUNS
def test_single_process_checkpoint_does_not_load_under_fsdp(runs):
    out, _ = runs
    checkpoint = sorted((out / "single" / "checkpoints").iterdir())[-1]
    with pytest.raises(CheckpointError, match="single-process run: resume it without torchrun"):
        load_any_checkpoint(checkpoint, None, None, None, sharded=True)


def test_world_size_must_split_the_mini_batches(tmp_path):
    done = torchrun(argv(tmp_path, "bad", 1, "--data.prompts-per-step", "6"))
    assert done.returncode != 0
    message = " ".join(done.stderr.split())  # the console wraps long lines
    assert "data.prompts_per_step=6 must be a multiple of WORLD_SIZE x optim.mini_batches = 2 x 2" in message


def test_exact_diagnostics_refuse_torchrun(tmp_path):
    cfg = parse_config(argv(tmp_path, "x", 1, "--mtp.exact-every", "2"))
    with pytest.raises(ConfigError, match="single process"):
        check_world_size(cfg, 2)
    check_world_size(parse_config(argv(tmp_path, "y", 1)), 2)  # 8 prompts = 2 ranks x 2 mini-batches x 2


@settings(max_examples=25, deadline=None)
@given(
    world=st.integers(1, 3),
    minis=st.integers(1, 4),
    per_mini=st.integers(1, 3),
    n=st.integers(2, 3),
)
def test_rank_mini_batches_are_their_share_of_the_single_process_ones(world, minis, per_mini, n):
    """Group g (its position in the step's draw order) goes to mini-batch g mod M, so rank r's
    mini-batch i is exactly its share (:func:`shard_prompts`) of the single-process mini-batch i: data
    parallelism keeps the algorithm."""
    groups = world * minis * per_mini
    sizes = {"data.prompts-per-step": groups, "optim.mini-batches": minis, "rollout.n": n, "mtp.regime": "ce"}
    cfg = parse_config([a for k, v in sizes.items() for a in (f"--{k}", str(v))])
    run = SimpleNamespace(cfg=cfg, tokenizer=SimpleNamespace(pad_token_id=0), device=torch.device("cpu"))
    # sample s of group g: prompt [g], response [s]; advantages name the group too
    samples = [Sample([g + 3], [s + 3], torch.zeros(1), float(g)) for g in range(groups) for s in range(n)]

    def group_ids(chunk: list[Sample]) -> list[int]:
        return [s.prompt_ids[0] - 3 for s in chunk[::n]]

    single = [group_ids(chunk) for chunk, _ in mini_batches(run, samples, [g % minis for g in range(groups)])]
    assert single == [list(range(i, groups, minis)) for i in range(minis)]
    for rank in range(world):
        share = list(shard_prompts(range(groups), rank, world))
        mine = [s for s in samples if s.prompt_ids[0] - 3 in share]
        for i, (chunk, micros) in enumerate(mini_batches(run, mine, [g % minis for g in share])):
            assert group_ids(chunk) == [g for g in single[i] if g in share], (rank, i)
            assert sum(m.num_samples for m, real in micros if real) == len(chunk)
