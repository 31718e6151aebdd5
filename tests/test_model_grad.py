"""Gradient routing of the MTP objective: detach_trunk, detach_lm_head, and the joint default (K = 2)."""

import pytest
import torch
from model_helpers import make_sequences, packed_batch, tiny_mtp_model

from occ_fast.model import build_head_rows, head_logprobs


def _grads(model, head: str) -> dict[str, torch.Tensor]:
    """Gradients of ``head``'s loss ("main", "mtp" = all MTP depths, or "both") for every parameter."""
    ids, attn, pos, resp, _ = packed_batch(make_sequences())
    model.zero_grad(set_to_none=False)
    out = model(ids, attention_mask=attn, position_ids=pos)
    lps = [lp.logprob for lp in head_logprobs(out, build_head_rows(out, ids, resp))]
    losses = {"main": -lps[0].sum(), "mtp": -sum(lp.sum() for lp in lps[1:])}
    losses["both"] = losses["main"] + losses["mtp"]
    losses[head].backward()
    return {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def _groups(grads: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest |grad| per parameter group."""
    groups = {"trunk": [], "embed": [], "lm_head": [], "mtp": []}
    for name, g in grads.items():
        if name.startswith("mtp."):
            groups["mtp"].append(g)
        elif "embed_tokens" in name:
            groups["embed"].append(g)
        elif "lm_head" in name:
            groups["lm_head"].append(g)
        else:
            groups["trunk"].append(g)
    return {key: max(g.abs().max().item() for g in gs) for key, gs in groups.items()}


@pytest.mark.parametrize(
    ("detach_trunk", "detach_lm_head", "reaches"),
    [
        (False, False, {"trunk", "embed", "lm_head", "mtp"}),
        (True, False, {"lm_head", "mtp"}),
        (True, True, {"mtp"}),
    ],
)
def test_mtp_loss_reaches_only_what_the_switches_allow(detach_trunk, detach_lm_head, reaches):
    model = tiny_mtp_model("qwen2", num_mtp=2, detach_trunk=detach_trunk, detach_lm_head=detach_lm_head)
    model.train()
    largest = _groups(_grads(model, "mtp"))
    for group, value in largest.items():
        if group in reaches:
            assert value > 0, group
        else:
            assert value == 0.0, group  # exactly zero, not small


def test_detach_lm_head_keeps_the_main_head_gradient_and_values():
    joint = tiny_mtp_model("qwen2", num_mtp=2)
    isolated = tiny_mtp_model("qwen2", num_mtp=2, detach_trunk=True, detach_lm_head=True)
    both = _grads(isolated, "both")
    main_only = _grads(isolated, "main")
    joint_main = _grads(joint, "main")
    for name in ("lm_head.weight", "model.embed_tokens.weight"):
        key = "base." + name
        torch.testing.assert_close(both[key], main_only[key], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(main_only[key], joint_main[key], atol=1e-6, rtol=1e-5)
    assert all(g.abs().max() > 0 for n, g in both.items() if n.startswith("mtp."))


def test_shared_and_split_weight_calls_give_the_same_logprobs_with_per_token_temperature():
    """detach_lm_head scores the MTP rows in a second call; the values must not change."""
    ids, attn, pos, resp, _ = packed_batch(make_sequences())
    results = []
    for detach in (False, True):
        model = tiny_mtp_model("qwen2", num_mtp=2, detach_lm_head=detach)
        with torch.no_grad():
            out = model(ids, attention_mask=attn, position_ids=pos)
            rows = build_head_rows(out, ids, resp)
            temperature = torch.linspace(0.5, 1.5, len(rows.token_index))
            lps = head_logprobs(out, rows, temperature=temperature, return_entropy=True)
        assert (out.mtp_weight is out.weight) != detach
        results.append(torch.stack([t for lp in lps for t in (lp.logprob, lp.entropy)]))
        want = torch.log_softmax(
            (rows.hiddens[2] @ out.weight.T).double() / temperature[:, None].double(), -1
        )
        valid = rows.valid(2)
        got = lps[2].logprob[valid].double()
        torch.testing.assert_close(got, want[valid, rows.targets[2][valid]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0], results[1], atol=1e-6, rtol=1e-6)
