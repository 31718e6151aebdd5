"""``linear_logprob`` against an fp64 PyTorch reference written here.

Fixed-seed cases (each test its own seed, so a failure reproduces), then a property-based layer
(hypothesis) over shapes, temperatures, logit scales, chunk sizes and ignore patterns. The Triton
path runs under the interpreter on CPU and compiled on a GPU machine (inputs are moved there and
outputs back, so gradients still land on the CPU leaves); fp32 inputs here (fp16 for the dW
accumulation check), bf16 in ``test_linear_logprob_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import occ_fast.kernels.logprob_triton as logprob_triton
from occ_fast.kernels import LinearLogprobOutput
from occ_fast.kernels import heads_logprob as _heads_logprob
from occ_fast.kernels import linear_logprob as _linear_logprob

IMPLS = ["triton", "torch_chunked"]
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _to(device, x):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return [_to(device, t) for t in x]
    return x


def _back(out):
    entropy = None if out.entropy is None else out.entropy.cpu()
    return LinearLogprobOutput(out.logprob.cpu(), entropy, out.max_logprob.cpu())


def linear_logprob(hidden, weight, targets, *, impl="auto", **kwargs):
    """The op on the device its impl runs on (Triton: CUDA when present), outputs back on CPU."""
    dev = TRITON_DEVICE if impl == "triton" else "cpu"
    kwargs = {k: _to(dev, v) for k, v in kwargs.items()}
    return _back(_linear_logprob(_to(dev, hidden), _to(dev, weight), _to(dev, targets), impl=impl, **kwargs))


def heads_logprob(hiddens, weight, targets, *, impl="auto", **kwargs):
    dev = TRITON_DEVICE if impl == "triton" else "cpu"
    kwargs = {k: _to(dev, v) for k, v in kwargs.items()}
    outs = _heads_logprob(_to(dev, hiddens), _to(dev, weight), _to(dev, targets), impl=impl, **kwargs)
    return [_back(o) for o in outs]


def reference_fp64(hidden, weight, targets, temperature, ignore_index=-100):
    """Log-prob and entropy of softmax(h W^T / T) in fp64; zero on ignored rows."""
    z = hidden.double() @ weight.double().t()
    z = z / temperature.double()[:, None] if isinstance(temperature, torch.Tensor) else z / temperature
    logp = torch.log_softmax(z, dim=-1)
    valid = targets != ignore_index
    picked = logp.gather(1, torch.where(valid, targets, 0)[:, None]).squeeze(1)
    entropy = -(logp.exp() * logp).sum(-1)
    return torch.where(valid, picked, 0.0), torch.where(valid, entropy, 0.0)


def make_inputs(m, h, v, *, scale=1.0, ignore_frac=0.2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(m, h, generator=gen) * scale / h**0.5
    weight = torch.randn(v, h, generator=gen)
    targets = torch.randint(0, v, (m,), generator=gen)
    targets[torch.rand(m, generator=gen) < ignore_frac] = -100
    return hidden, weight, targets


def check_against_reference(
    impl, hidden, weight, targets, temperature=1.0, chunk_rows=None, tol=2e-5, ignore_index=-100, seed=0
):
    """Outputs and the gradients of sum(g1 * logprob + g2 * entropy) match fp64."""
    m = hidden.shape[0]
    gen = torch.Generator().manual_seed(seed)
    g1, g2 = torch.randn(m, generator=gen), torch.randn(m, generator=gen)
    h32 = hidden.clone().requires_grad_()
    w32 = weight.clone().requires_grad_()
    out = linear_logprob(
        h32,
        w32,
        targets,
        temperature=temperature,
        return_entropy=True,
        impl=impl,
        chunk_rows=chunk_rows,
        ignore_index=ignore_index,
    )
    h64 = hidden.double().requires_grad_()
    w64 = weight.double().requires_grad_()
    ref_lp, ref_ent = reference_fp64(h64, w64, targets, temperature, ignore_index)
    assert out.logprob.dtype == torch.float32 and out.entropy.dtype == torch.float32
    assert torch.isfinite(out.logprob).all() and torch.isfinite(out.entropy).all()
    scale_lp = ref_lp.abs().max().item() + 1.0
    torch.testing.assert_close(out.logprob.double(), ref_lp.detach(), rtol=tol, atol=tol * scale_lp)
    torch.testing.assert_close(out.entropy.double(), ref_ent.detach(), rtol=tol, atol=tol * scale_lp)

    (g1 * out.logprob + g2 * out.entropy).sum().backward()
    (g1.double() * ref_lp + g2.double() * ref_ent).sum().backward()
    for name, got, want in (("hidden", h32.grad, h64.grad), ("weight", w32.grad, w64.grad)):
        assert got.dtype == torch.float32, name
        atol = tol * (want.abs().max().item() + 1.0)
        torch.testing.assert_close(got.double(), want, rtol=tol * 10, atol=atol, msg=f"grad {name}")
    return out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("m", "h", "v", "chunk_rows"),
    [(37, 48, 1009, None), (37, 48, 1009, 10), (1, 16, 33, None), (70, 20, 257, 33), (5, 80, 64, 2)],
)
def test_matches_fp64_reference(impl, m, h, v, chunk_rows):
    hidden, weight, targets = make_inputs(m, h, v, scale=3.0, seed=m * v)
    check_against_reference(impl, hidden, weight, targets, chunk_rows=chunk_rows)


@pytest.mark.parametrize("impl", IMPLS)
def test_per_row_and_scalar_temperature(impl):
    hidden, weight, targets = make_inputs(29, 32, 300, scale=4.0, seed=1)
    temperature = torch.rand(29, generator=torch.Generator().manual_seed(2)) * 1.5 + 0.3
    check_against_reference(impl, hidden, weight, targets, temperature=temperature)
    check_against_reference(impl, hidden, weight, targets, temperature=0.7)


def _rel_err(got, want):
    return ((got.double() - want).norm() / want.norm().clamp_min(1e-300)).item()


def _outputs_and_grads(impl, hidden, weight, targets, g1, g2):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    out = linear_logprob(h, w, targets, return_entropy=True, impl=impl)
    (g1 * out.logprob + g2 * out.entropy).sum().backward()
    return out.logprob.detach(), out.entropy.detach(), h.grad, w.grad


@pytest.mark.parametrize("impl", IMPLS)
def test_large_logits_no_worse_than_torch_fp32(impl):
    """|z| ~ 1e3: finite, and within 10x of PyTorch's own fp32 error (one ulp of 1e3 is 6e-5)."""
    hidden, weight, targets = make_inputs(19, 24, 211, scale=1.0, ignore_frac=0.0, seed=3)
    hidden = hidden * (1e3 / (hidden @ weight.t()).abs().max())
    gen = torch.Generator().manual_seed(4)
    g1, g2 = torch.randn(19, generator=gen), torch.randn(19, generator=gen)
    h64 = hidden.double().requires_grad_()
    w64 = weight.double().requires_grad_()
    ref_lp, ref_ent = reference_fp64(h64, w64, targets, 1.0)
    (g1.double() * ref_lp + g2.double() * ref_ent).sum().backward()
    reference = (ref_lp.detach(), ref_ent.detach(), h64.grad, w64.grad)
    assert ref_lp.min() < -10  # far from uniform: the regime where fp32 cancellation bites
    ours = _outputs_and_grads(impl, hidden, weight, targets, g1, g2)
    naive = _outputs_and_grads("torch", hidden, weight, targets, g1, g2)
    for name, o, n, r in zip(("logprob", "entropy", "grad_hidden", "grad_weight"), ours, naive, reference):
        assert torch.isfinite(o).all(), name
        assert _rel_err(o, r) <= 10 * _rel_err(n, r) + 1e-6, (name, _rel_err(o, r), _rel_err(n, r))


@pytest.mark.parametrize("impl", IMPLS + ["torch"])
def test_max_logprob_marks_argmax_targets(impl):
    hidden, weight, targets = make_inputs(45, 24, 97, scale=6.0, seed=5)
    logits = hidden.double() @ weight.double().t()
    argmax = logits.argmax(-1)
    targets[::2] = argmax[::2]  # half the rows target their most likely token
    targets[5] = -100
    out = linear_logprob(hidden, weight, targets, impl=impl)
    valid = targets != -100
    want = torch.where(valid, torch.log_softmax(logits, -1).amax(-1), 0.0)
    torch.testing.assert_close(out.max_logprob.double(), want, rtol=1e-5, atol=1e-5)
    hit = (out.logprob >= out.max_logprob - 1e-6) & valid
    assert torch.equal(hit, (targets == argmax) & valid)
    assert out.max_logprob.grad_fn is None


@pytest.mark.parametrize("impl", IMPLS)
def test_all_rows_ignored_gives_zeros(impl):
    hidden, weight, _ = make_inputs(9, 16, 50, seed=6)
    targets = torch.full((9,), -100)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    out = linear_logprob(h, w, targets, return_entropy=True, impl=impl)
    assert torch.equal(out.logprob, torch.zeros(9)) and torch.equal(out.entropy, torch.zeros(9))
    (2.0 * out.logprob - 3.0 * out.entropy).sum().backward()
    assert torch.equal(h.grad, torch.zeros_like(h)) and torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("impl", IMPLS)
def test_custom_ignore_index(impl):
    hidden, weight, targets = make_inputs(12, 16, 40, ignore_frac=0.0, seed=7)
    targets[::3] = 7  # a real token id used as the ignore marker
    out = linear_logprob(hidden, weight, targets, ignore_index=7, impl=impl)
    ref, _ = reference_fp64(hidden, weight, targets, 1.0, ignore_index=7)
    torch.testing.assert_close(out.logprob.double(), ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.logprob[::3], torch.zeros(4))


@pytest.mark.parametrize("impl", IMPLS)
def test_logprob_only_gradient_and_frozen_weight(impl):
    """Without entropy, only the log-prob path runs; a weight without grad gets none."""
    hidden, weight, targets = make_inputs(23, 32, 150, scale=3.0, seed=8)
    h = hidden.clone().requires_grad_()
    out = linear_logprob(h, weight, targets, impl=impl)
    assert out.entropy is None
    g = torch.randn(23, generator=torch.Generator().manual_seed(9))
    (g * out.logprob).sum().backward()
    h64 = hidden.double().requires_grad_()
    ref, _ = reference_fp64(h64, weight, targets, 1.0)
    (g.double() * ref).sum().backward()
    torch.testing.assert_close(h.grad.double(), h64.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_stacked_heads_equal_separate_calls_and_reference(impl):
    """Main head + 2 MTP heads in one call: per-head outputs and the shared weight's grad add up."""
    gen = torch.Generator().manual_seed(10)
    weight = torch.randn(173, 40, generator=gen)
    heads = [make_inputs(m, 40, 173, scale=3.0, seed=m)[::2] for m in (31, 30, 29)]
    hiddens = [h.clone().requires_grad_() for h, _ in heads]
    targets = [t for _, t in heads]
    w = weight.clone().requires_grad_()
    outs = heads_logprob(hiddens, w, targets, return_entropy=True, impl=impl)
    grads = [(torch.randn(len(t), generator=gen), torch.randn(len(t), generator=gen)) for t in targets]
    sum((g1 * o.logprob + g2 * o.entropy).sum() for (g1, g2), o in zip(grads, outs)).backward()

    w64 = weight.double().requires_grad_()
    for k, ((hidden, t), (g1, g2)) in enumerate(zip(heads, grads)):
        h64 = hidden.double().requires_grad_()
        ref_lp, ref_ent = reference_fp64(h64, w64, t, 1.0)
        torch.testing.assert_close(outs[k].logprob.double(), ref_lp.detach(), rtol=2e-5, atol=1e-4)
        torch.testing.assert_close(outs[k].entropy.double(), ref_ent.detach(), rtol=2e-5, atol=1e-4)
        (g1.double() * ref_lp + g2.double() * ref_ent).sum().backward()
        torch.testing.assert_close(hiddens[k].grad.double(), h64.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-4, atol=1e-4)


def test_heads_per_head_temperatures_and_errors():
    gen = torch.Generator().manual_seed(11)
    weight = torch.randn(50, 16, generator=gen)
    hiddens = [torch.randn(4, 16, generator=gen), torch.randn(3, 16, generator=gen)]
    targets = [torch.randint(0, 50, (4,), generator=gen), torch.randint(0, 50, (3,), generator=gen)]
    temps = [torch.full((4,), 0.5), torch.full((3,), 2.0)]
    outs = heads_logprob(hiddens, weight, targets, temperature=temps)
    for h, t, temp, o in zip(hiddens, targets, temps, outs):
        ref, _ = reference_fp64(h, weight, t, temp)
        torch.testing.assert_close(o.logprob.double(), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="2 hidden tensors but 1 target"):
        heads_logprob(hiddens, weight, targets[:1])
    with pytest.raises(ValueError, match="at least one head"):
        heads_logprob([], weight, [])


def test_impls_agree_with_each_other():
    hidden, weight, targets = make_inputs(40, 32, 500, scale=5.0, seed=12)
    outs = {
        i: linear_logprob(hidden, weight, targets, return_entropy=True, impl=i) for i in IMPLS + ["torch"]
    }
    for impl in IMPLS:
        torch.testing.assert_close(outs[impl].logprob, outs["torch"].logprob, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(outs[impl].entropy, outs["torch"].entropy, rtol=1e-5, atol=1e-5)


def test_auto_uses_chunked_path_on_cpu():
    hidden, weight, targets = make_inputs(8, 16, 30, seed=13)
    out = _linear_logprob(hidden.requires_grad_(), weight, targets, impl="auto")
    assert out.logprob.grad_fn is not None and "Chunked" in type(out.logprob.grad_fn).__name__


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(hidden=torch.randn(4, 8, 2)), ValueError, "hidden must be"),
        (dict(weight=torch.randn(10, 7)), ValueError, "disagree on H"),
        (dict(targets=torch.zeros(5, dtype=torch.long)), ValueError, "targets must be"),
        (dict(targets=torch.zeros(4)), TypeError, "targets must be int64"),
        (dict(hidden=torch.randn(4, 8, dtype=torch.float64)), TypeError, "hidden must be float32"),
        (dict(weight=torch.randn(10, 8, dtype=torch.bfloat16)), TypeError, "weight dtype"),
        (dict(targets=torch.tensor([0, 1, 10, 2])), ValueError, r"targets must lie in \[0, 10\)"),
        (dict(targets=torch.tensor([0, -1, 3, 2])), ValueError, r"targets must lie in \[0, 10\)"),
        (dict(temperature=0.0), ValueError, "temperature must be > 0"),
        (dict(temperature=torch.tensor([1.0, -1.0, 1.0, 1.0])), ValueError, "temperature must be > 0"),
        (dict(temperature=torch.ones(3)), ValueError, "temperature tensor must be"),
        (dict(impl="cuda"), ValueError, "impl must be one of"),
        (dict(chunk_rows=0), ValueError, "chunk_rows must be"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, error, match):
    args = dict(hidden=torch.randn(4, 8), weight=torch.randn(10, 8), targets=torch.tensor([0, 1, 9, -100]))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        _linear_logprob(args.pop("hidden"), args.pop("weight"), args.pop("targets"), **args)


# ---- dW accumulation over backward chunks ----


def test_bf16_weight_gradient_is_accumulated_in_fp32_across_chunks(monkeypatch):
    """Half-precision inputs, 128 backward chunks of 2 rows: ``dW`` sums every chunk's share in
    fp32. Summed in the input dtype instead, the many small same-sign shares get rounded away
    (relative error ~2e-3 here against ~2e-4, the rounding of ``dlogits`` itself).

    fp16 stands in for bf16: the Triton interpreter computes bf16 dots wrongly (a CPU-only gap;
    bf16 runs compiled in ``test_linear_logprob_gpu.py``), and fp16 takes the same code path. On
    CPU the probe for torch's fp32-output ``addmm`` is answered "absent", as a CPU build may answer
    (``tests/test_kernel_hazards.py`` runs the half-precision backward on CPU with the real probe),
    so the per-chunk products are rounded once each and added in fp32."""
    if TRITON_DEVICE == "cpu":
        monkeypatch.setattr(logprob_triton, "_has_fp32_out_addmm", lambda device_type: False)
    gen = torch.Generator().manual_seed(14)
    m, h, v = 256, 16, 64
    hidden = (torch.randn(m, h, generator=gen) * 0.3 + 1.0).half()  # same-sign rows: dW shares add up
    weight = (torch.randn(v, h, generator=gen) * 0.5).half()
    targets = torch.randint(0, 4, (m,), generator=gen)
    w = weight.clone().requires_grad_()
    out = linear_logprob(hidden, w, targets, impl="triton", chunk_rows=2)
    out.logprob.sum().backward()
    assert w.grad.dtype == torch.float16
    w64 = weight.double().requires_grad_()
    ref, _ = reference_fp64(hidden, w64, targets, 1.0)
    ref.sum().backward()
    assert _rel_err(w.grad, w64.grad) < 6e-4


# ---- property-based layer ----


@st.composite
def kernel_cases(draw):
    m = draw(st.integers(1, 40))
    case = {
        "impl": draw(st.sampled_from(IMPLS)),
        "m": m,
        "h": draw(st.integers(1, 40)),
        "v": draw(st.integers(1, 300)),
        "scale": draw(st.sampled_from([0.1, 1.0, 4.0, 30.0])),
        "seed": draw(st.integers(0, 2**31 - 1)),
        "chunk_rows": draw(st.none() | st.integers(1, m + 3)),
    }
    kind = draw(st.sampled_from(["scalar", "per_row"]))
    if kind == "scalar":
        case["temperature"] = draw(st.floats(0.25, 3.0))
    else:
        temps = draw(st.lists(st.floats(0.25, 3.0), min_size=m, max_size=m))
        case["temperature"] = torch.tensor(temps, dtype=torch.float32)
    case["ignored"] = draw(
        st.sampled_from(["none", "all", "mixed"]).flatmap(
            lambda p: (
                st.just([p == "all"] * m) if p != "mixed" else st.lists(st.booleans(), min_size=m, max_size=m)
            )
        )
    )
    case["ignore_index"] = draw(st.sampled_from([-100, -1, 0]))
    return case


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kernel_cases())
def test_property_matches_fp64_reference(case):
    """Any shape (V and H down to 1, chunks of any size), scalar or per-row temperature, logit
    scale, and ignore pattern (none, all, mixed; ignore_index negative or a real token id)."""
    m, v, ignore_index = case["m"], case["v"], case["ignore_index"]
    hidden, weight, targets = make_inputs(
        m, case["h"], v, scale=case["scale"], ignore_frac=0.0, seed=case["seed"]
    )
    if ignore_index >= 0:
        targets = torch.where(targets == ignore_index, (ignore_index + 1) % v, targets)
    if v == 1 and ignore_index == 0:
        ignore_index = -100  # the only token cannot also be the ignore marker
    targets = torch.where(torch.tensor(case["ignored"]), ignore_index, targets)
    out = check_against_reference(
        case["impl"],
        hidden,
        weight,
        targets,
        temperature=case["temperature"],
        chunk_rows=case["chunk_rows"],
        ignore_index=ignore_index,
        tol=5e-5,
        seed=case["seed"],
    )
    ignored = targets == ignore_index
    assert torch.equal(out.logprob[ignored], torch.zeros(int(ignored.sum())))
    assert bool((out.logprob[~ignored] <= 1e-6).all())
    assert bool((out.entropy[~ignored] >= -1e-6).all())
    assert bool((out.entropy[~ignored] <= torch.log(torch.tensor(float(v))) + 1e-4).all())
