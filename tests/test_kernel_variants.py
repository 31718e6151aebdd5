"""Hopper's kernel variants (TMA, warp specialisation, wide tiles): their arithmetic and the rule that picks one.

The arithmetic runs under the Triton interpreter against an fp64 reference written here, at the
variants' own tile sizes on shapes that leave partial row, vocabulary and K tiles (the tensor
descriptors' zero fill past the edges is what keeps those correct). The interpreter executes the
descriptor loads but ignores ``warp_specialize`` and ``flatten`` (scheduling hints), so the
schedule itself is checked in the compiled code (``test_kernel_compiled.py``) and timed by
``benchmarks/gpu_check.sh``. On a GPU machine the same tests run compiled, in bf16 (the variants
serve 16-bit inputs): the reference takes the same bf16 inputs, products are exact in the fp32
accumulator, and the gradients carry the bf16 rounding of ``dlogits`` and of the GEMMs.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from occ_fast.kernels import hopper, linear_logprob, tiling, variants

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter computes bf16 wrongly inside kernels: fp32 there, bf16 (the variants' dtype) on a GPU.
DTYPE, FWD_TOL, GRAD_RTOL, GRAD_ATOL = (
    (torch.bfloat16, 1e-4, 3e-2, 1e-2) if DEVICE == "cuda" else (torch.float32, 2e-5, 2e-4, 2e-5)
)
V39 = (3, 9)


def _fp64(hidden, weight, targets, inv_temp):
    logp = torch.log_softmax((hidden.double() @ weight.double().t()) * inv_temp.double()[:, None], dim=-1)
    valid = targets != -100
    picked = logp.gather(1, torch.where(valid, targets, 0)[:, None]).squeeze(1)
    return torch.where(valid, picked, 0.0), torch.where(valid, -(logp.exp() * logp).sum(-1), 0.0)


def _spy(monkeypatch, name):
    calls = []
    original = getattr(hopper, name)

    def spy(*args):
        launch = original(*args)
        calls.append(args[-2] if name == "forward_launch" else args[-1])
        return launch

    monkeypatch.setattr(hopper, name, spy)
    return calls


@pytest.mark.parametrize(
    ("forward", "dlogits", "entropy_grad", "m", "h", "v"),
    [
        ("tma", "tma", True, 300, 80, 1009),
        ("tma-flat", "tma-ws", True, 129, 48, 257),
        ("tma-ws", "tma-ws", True, 300, 80, 1009),
        ("tma-ws", "tma-ws-256", False, 300, 80, 1009),
    ],
)
def test_variant_matches_fp64_reference(monkeypatch, forward, dlogits, entropy_grad, m, h, v):
    """Log-prob, entropy (when asked) and both gradients on partial tiles, per-row temperature, ignored and strided rows."""
    monkeypatch.setenv(variants.ENV, f"forward={forward},dlogits={dlogits}")
    forward_calls, dlogits_calls = _spy(monkeypatch, "forward_launch"), _spy(monkeypatch, "dlogits_launch")
    gen = torch.Generator().manual_seed(m * v)
    # rows of stride h + 8: TMA-aligned, not contiguous
    padded = (torch.randn(m, h + 8, generator=gen) * 3 / h**0.5).to(DTYPE)
    weight = torch.randn(v, h, generator=gen).to(DTYPE)
    targets = torch.randint(0, v, (m,), generator=gen)
    targets[torch.rand(m, generator=gen) < 0.2] = -100
    temperature = 0.5 + torch.rand(m, generator=gen)
    g1, g2 = torch.randn(m, generator=gen), torch.randn(m, generator=gen) * entropy_grad

    hidden = padded.to(DEVICE)[:, :h].detach().requires_grad_()
    w = weight.to(DEVICE, copy=True).requires_grad_()
    out = linear_logprob(
        hidden,
        w,
        targets.to(DEVICE),
        temperature=temperature.to(DEVICE),
        return_entropy=entropy_grad,
        impl="triton",
    )
    loss = (g1.to(DEVICE) * out.logprob).sum()
    if entropy_grad:
        loss = loss + (g2.to(DEVICE) * out.entropy).sum()
    loss.backward()

    h64, w64 = padded[:, :h].double().requires_grad_(), weight.double().requires_grad_()
    lp, ent = _fp64(h64, w64, targets, 1 / temperature)
    (g1.double() * lp + g2.double() * ent).sum().backward()
    tol = FWD_TOL * (lp.abs().max().item() + 1)
    torch.testing.assert_close(out.logprob.cpu().double(), lp.detach(), rtol=FWD_TOL, atol=tol)
    if entropy_grad:
        torch.testing.assert_close(out.entropy.cpu().double(), ent.detach(), rtol=FWD_TOL, atol=tol)
    for got, want in ((hidden.grad, h64.grad), (w.grad, w64.grad)):
        torch.testing.assert_close(
            got.cpu().double(), want, rtol=GRAD_RTOL, atol=GRAD_ATOL * (want.abs().max().item() + 1)
        )
    assert [v.name for v in forward_calls] == [forward]
    assert {v.name for v in dlogits_calls} == {dlogits}


def test_forced_variant_on_inputs_tma_cannot_load_is_an_error(monkeypatch):
    """Rows of 81 fp32 elements (324 bytes) break TMA's 16-byte rule: the default falls back, a forced TMA fails."""
    hidden, weight = torch.randn(8, 81).to(DEVICE), torch.randn(50, 81).to(DEVICE)
    targets = torch.randint(0, 50, (8,)).to(DEVICE)
    assert not variants.tma_compatible(hidden, weight)
    monkeypatch.setenv(variants.ENV, "tma")
    with pytest.raises(ValueError, match="inputs not TMA-aligned; available: pointer"):
        linear_logprob(hidden, weight, targets, impl="triton")


def _choose(
    kernel, m=32768, dtype=torch.bfloat16, entropy=True, tma_ok=True, version=V39, capability=90, forced=None
):
    return variants.choose(kernel, capability, m, dtype, entropy, tma_ok, version, forced)


def test_rule_on_hopper_prefers_warp_specialised_tma_and_the_wide_tile_where_it_fits():
    assert _choose("forward").name == "tma-ws" and _choose("forward", entropy=False).name == "tma-ws"
    assert _choose("dlogits").name == "tma-ws"  # 128x256 spills with the entropy terms
    wide = _choose("dlogits", entropy=False)
    assert wide.name == "tma-ws-256" and (wide.tile.block_m, wide.tile.block_v) == (128, 256)
    assert _choose("forward", dtype=torch.float16).tma


@pytest.mark.parametrize(
    "why",
    [
        dict(capability=80),
        dict(capability=89),
        dict(dtype=torch.float32),
        dict(m=128 * 132 // 8 - 1),
        dict(tma_ok=False),
        dict(version=(3, 5)),
    ],
)
def test_rule_keeps_the_pointer_kernel_where_no_hopper_variant_applies(why):
    capability = why.get("capability", 90)
    m = why.get("m", 32768)
    dtype = why.get("dtype", torch.bfloat16)
    for kernel in variants.KERNELS:
        for entropy in (True, False):
            got = _choose(kernel, entropy=entropy, **why)
            assert got.name == variants.POINTER and not got.tma
            assert got.tile == tiling.choose(capability, m, dtype)


def test_rule_skips_variants_newer_than_the_installed_triton(monkeypatch):
    """A variant checked only from Triton 3.10 on is never offered by 3.9, which still gets the others."""
    newer = dataclasses.replace(variants.HOPPER[2], min_triton=(3, 10))
    assert newer.name == "tma-ws" and newer.kernel == "forward"
    monkeypatch.setattr(variants, "HOPPER", (*variants.HOPPER[:2], newer, *variants.HOPPER[3:]))
    found = variants.candidates("forward", 90, 32768, torch.bfloat16, True, V39)
    assert [v.name for v in found] == ["tma-flat", "tma", variants.POINTER]
    assert _choose("forward").name == "tma-flat"
    assert variants.candidates("forward", 90, 32768, torch.bfloat16, True, (3, 10))[0] == newer
    with pytest.raises(ValueError, match="available: tma-flat, tma, pointer"):
        _choose("forward", forced="tma-ws")


def test_every_hopper_variant_is_reachable_and_the_interpreter_defaults_to_the_small_tile():
    reachable = {
        _choose(kernel, entropy=entropy, forced=v.name)
        for kernel in variants.KERNELS
        for entropy in (True, False)
        for v in variants.candidates(kernel, 90, 32768, torch.bfloat16, entropy, V39)
    }
    assert set(variants.HOPPER) <= reachable
    default = variants.choose("forward", None, 37, torch.float32, True, True, V39)
    assert default.tile == tiling.INTERPRETER_TILE and not default.tma


def test_forcing_parses_both_forms_and_names_what_is_available(monkeypatch):
    monkeypatch.setenv(variants.ENV, "forward=tma-flat,dlogits=tma")
    assert (variants.forced("forward"), variants.forced("dlogits")) == ("tma-flat", "tma")
    monkeypatch.setenv(variants.ENV, "tma-ws")
    assert variants.forced("forward") == variants.forced("dlogits") == "tma-ws"
    monkeypatch.setenv(variants.ENV, "backward=tma")
    with pytest.raises(ValueError, match="unknown kernel"):
        variants.forced("forward")
    with pytest.raises(ValueError, match="available: tma-ws, tma-flat, tma, pointer"):
        _choose("forward", forced="tma-ws-256")
    few = (
        128 * 132 // 8 - 1
    )  # below it the 64-row pointer tile is the default, a Hopper variant may be forced
    assert _choose("forward", m=few).name == variants.POINTER
    assert _choose("forward", m=few, forced="tma-ws").name == "tma-ws"
    with pytest.raises(ValueError, match="available: pointer$"):
        _choose("forward", dtype=torch.float32, forced="tma")


def test_tma_launch_provides_scratch_memory_unless_an_allocator_is_set():
    """The kernels build their descriptors in scratch memory that Triton asks an allocator for; a user's stays."""
    import contextvars

    import triton
    from triton.runtime import _allocation

    def fresh():
        hopper._ensure_allocator()
        return _allocation._allocator.get()

    def users():
        def mine(size, alignment, stream):
            return None

        triton.set_allocator(mine)
        hopper._ensure_allocator()
        return _allocation._allocator.get() is mine

    assert contextvars.Context().run(fresh) is hopper._scratch
    assert contextvars.Context().run(users)
