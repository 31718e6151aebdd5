"""FSDP2's units on CPU (gloo, 2 ranks): the token embedding is a unit of its own, sharded outside its
own forward and backward; lm_head stays in the root, unsharded from the forward to the end of backward
(the fused head reads the whole ``[V, H]`` matrix then: ``shard_model``'s memory model says why).

This file is also the torchrun worker (``__main__``): it writes what it saw for the test to read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from gloo_group import gloo_ranks, run_two_ranks
from model_helpers import small_qwen2_mtp
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, Shard

from occ_fast.distributed.fsdp import shard_model
from occ_fast.distributed.process_group import exit_rank

VOCAB, TIMEOUT_S = 96, 150


def _state(param: torch.Tensor) -> str:
    if isinstance(param, DTensor):
        return "sharded" if param.placements == (Shard(0),) else f"DTensor {param.placements}"
    return "unsharded"


def observe(tie: bool) -> dict:
    """The embedding's and lm_head's state through one forward and backward of a sharded model."""
    model = shard_model(small_qwen2_mtp(vocab=VOCAB, num_mtp=1, seed=0, tie=tie), mixed_precision=True)
    embed, head = model.base.get_input_embeddings(), model.base.get_output_embeddings()
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    at_rest = (_state(embed.weight), _state(head.weight), isinstance(embed, FSDPModule))
    out = model(ids)
    after_forward = (_state(embed.weight), _state(head.weight))
    in_backward = []  # as the trunk's backward starts
    out.hidden.register_hook(lambda _: in_backward.append((_state(embed.weight), _state(head.weight))))
    (out.hidden.float().sum() + out.mtp_hidden[0].float().sum() + out.weight.float().sum()).backward()
    return dict(
        at_rest=at_rest,
        after_forward=after_forward,
        in_backward=in_backward[0],
        after_backward=(_state(embed.weight), _state(head.weight), _state(embed.weight.grad)),
    )


def worker(out: Path) -> None:
    with gloo_ranks() as info:
        seen = {tie: observe(tie) for tie in (False, True)}
        if info.rank == 0:
            torch.save(seen, out / "seen.pt")


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("units")
    run_two_ranks(__file__, out, TIMEOUT_S)
    return torch.load(out / "seen.pt", weights_only=False)


def test_the_embedding_is_its_own_unit_sharded_outside_its_forward_and_backward(seen):
    untied = seen[False]
    assert untied["at_rest"] == ("sharded", "sharded", True)
    assert untied["after_forward"] == ("sharded", "unsharded")  # the root keeps lm_head for the head
    assert untied["in_backward"] == ("sharded", "unsharded")  # the trunk's backward: embedding sharded
    assert untied["after_backward"] == ("sharded", "sharded", "sharded")


def test_a_tied_embedding_is_lm_head_and_stays_in_the_root(seen):
    tied = seen[True]
    assert tied["at_rest"] == ("sharded", "sharded", False)
    assert tied["after_forward"] == ("unsharded", "unsharded")
    assert tied["after_backward"] == ("sharded", "sharded", "sharded")


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
    exit_rank(0)  # as the trainer's ranks leave (occ_fast/distributed/process_group.py)
