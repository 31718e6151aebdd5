"""Tiny random-init models, batches and an independent plain-PyTorch MTP reference for the model tests."""

from __future__ import annotations

import math

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen2ForCausalLM, Qwen3Config

from occ_fast.model import MTPModel

VOCAB = 96
TINY = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.2,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
# The engine tests' model: large enough for vLLM's CPU kernels (hidden 128 in 2 heads: vLLM's CPU
# attention needs a head dimension of at least 32), small enough to load fast. The preset rehearsals
# (``rehearsal.py``) build their tiny models in these sizes too, with their own tokenizer's vocabulary.
ENGINE_SIZES = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=512,
)
ENGINE_QWEN2 = dict(vocab_size=512, **ENGINE_SIZES)
CONFIGS = {
    "qwen2": lambda: Qwen2Config(**TINY),
    "llama": lambda: LlamaConfig(**TINY),
    "qwen3": lambda: Qwen3Config(**TINY, head_dim=8),
}


def tiny_base(arch: str = "qwen2", seed: int = 0, attn: str = "sdpa"):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(CONFIGS[arch](), attn_implementation=attn).eval()


@torch.no_grad()
def randomize_mtp(model: MTPModel, seed: int = 1) -> MTPModel:
    """Move the MTP weights away from the fresh init, so concat order and norms show in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.mtp.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        p.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else 0.2 * noise)
    return model


def tiny_mtp_model(arch: str = "qwen2", num_mtp: int = 1, seed: int = 0, **kwargs) -> MTPModel:
    return randomize_mtp(
        MTPModel.from_base(tiny_base(arch, seed), num_mtp, attn_implementation="sdpa", **kwargs)
    )


def small_qwen2_mtp(
    *,
    vocab: int,
    num_mtp: int = 2,
    seed: int = 0,
    tie: bool = False,
    attention_dropout: float = 0.0,
    **wrapper,
) -> MTPModel:
    """A 32-wide Qwen2 with fresh MTP heads, for the loop-level tests (batching, diagnostics, FSDP)."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
        attention_dropout=attention_dropout,
    )
    return MTPModel.from_base(Qwen2ForCausalLM(config), num_mtp, attn_implementation="sdpa", **wrapper)


# Three sequences (prompt length, response length); the third has a one-token prompt, so its first
# response token has a main row but no MTP row.
SEQUENCES = [(3, 4), (2, 3), (1, 6)]


def make_sequences(seed: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (p + r,), generator=gen) for p, r in SEQUENCES]


def padded_batch(seqs: list[torch.Tensor], left: bool = False):
    """``(ids, attention_mask, response_mask, where)``; ``where[s][o]`` = (row, col) of token o of sequence s."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    attn = torch.zeros_like(ids)
    resp = torch.zeros_like(ids)
    where = []
    for b, (seq, (prompt, _)) in enumerate(zip(seqs, SEQUENCES)):
        start = width - len(seq) if left else 0
        ids[b, start : start + len(seq)] = seq
        attn[b, start : start + len(seq)] = 1
        resp[b, start + prompt : start + len(seq)] = 1
        where.append([(b, start + o) for o in range(len(seq))])
    return ids, attn, resp, where


def packed_batch(seqs: list[torch.Tensor], trailing_pad: int = 2):
    """One row, sequences back to back with restarting positions, then padding."""
    width = sum(len(s) for s in seqs) + trailing_pad
    ids = torch.zeros(1, width, dtype=torch.long)
    attn = torch.zeros_like(ids)
    resp = torch.zeros_like(ids)
    pos = torch.zeros_like(ids)
    where, col = [], 0
    for seq, (prompt, _) in zip(seqs, SEQUENCES):
        n = len(seq)
        ids[0, col : col + n] = seq
        attn[0, col : col + n] = 1
        resp[0, col + prompt : col + n] = 1
        pos[0, col : col + n] = torch.arange(n)
        where.append([(0, col + o) for o in range(n)])
        col += n
    return ids, attn, pos, resp, where


# ---- plain-PyTorch reference of docs/method.md section 2 (nothing from occ_fast.model) ----


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """``x`` ``[heads, T, d]`` rotated by the half-split convention at ``positions`` ``[T]``."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = positions.float()[:, None] * inv_freq[None]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def decoder_layer(p: dict, x: torch.Tensor, positions: torch.Tensor, config) -> torch.Tensor:
    """One causal pre-norm decoder layer (GQA attention with RoPE, SwiGLU MLP) on ``x`` ``[T, H]``."""
    eps, heads, kv_heads = config.rms_norm_eps, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    theta = config.rope_parameters["rope_theta"]

    def proj(name, inp):
        out = inp @ p[f"self_attn.{name}.weight"].T
        bias = p.get(f"self_attn.{name}.bias")
        return out if bias is None else out + bias

    t = x.shape[0]
    h = rms_norm(x, p["input_layernorm.weight"], eps)
    q = proj("q_proj", h).view(t, heads, head_dim).transpose(0, 1)
    k = proj("k_proj", h).view(t, kv_heads, head_dim).transpose(0, 1)
    v = proj("v_proj", h).view(t, kv_heads, head_dim).transpose(0, 1)
    if "self_attn.q_norm.weight" in p:
        q = rms_norm(q, p["self_attn.q_norm.weight"], eps)
        k = rms_norm(k, p["self_attn.k_norm.weight"], eps)
    q, k = rope(q, positions, theta), rope(k, positions, theta)
    k = k.repeat_interleave(heads // kv_heads, 0)
    v = v.repeat_interleave(heads // kv_heads, 0)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    attn = (scores.softmax(-1) @ v).transpose(0, 1).reshape(t, heads * head_dim)
    x = x + proj("o_proj", attn)
    h = rms_norm(x, p["post_attention_layernorm.weight"], eps)
    gate, up = h @ p["mlp.gate_proj.weight"].T, h @ p["mlp.up_proj.weight"].T
    return x + (torch.nn.functional.silu(gate) * up) @ p["mlp.down_proj.weight"].T


@torch.no_grad()
def reference_mtp(model: MTPModel, seq: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Trunk hidden ``[L, H]`` after the final norm and, per depth k, MTP outputs ``[L - k, H]`` for one
    unpadded sequence, written from MiMo's MTP layer definition (vLLM's ``MiMoMultiTokenPredictorLayer``):
    ``e = token_layernorm(E[s_{i+k}])`` (zero embedding on the row at position 0 for depth 1),
    ``h = hidden_layernorm(h_i)``, ``z = input_proj(cat[h, e])``, one causal decoder layer at positions
    ``i + k``, ``o = final_layernorm(u)``; depth k+1 consumes depth k's ``o``. Depth 1 reads the trunk's
    last decoder-layer output before the final norm for MiMo naming, after it for DeepSeek naming.
    The trunk runs here too, layer by layer, from the embedding."""
    base, config = model.base, model.base.config
    embed = base.model.embed_tokens.weight
    eps, length = config.rms_norm_eps, len(seq)
    x = embed[seq]
    for trunk_layer in base.model.layers:
        x = decoder_layer(dict(trunk_layer.state_dict()), x, torch.arange(length), config)
    trunk = rms_norm(x, base.model.norm.weight, eps)
    previous, outs = (x if model.naming == "mimo" else trunk), []
    for k, layer in enumerate(model.mtp, start=1):
        p = {name: t.detach() for name, t in layer.state_dict().items()}
        rows = length - k
        tokens = embed[seq[k:]].clone()
        if k == 1:
            tokens[0] = 0.0  # the row at position 0
        z = (
            torch.cat(
                [
                    rms_norm(previous[:rows], p["hidden_layernorm.weight"], eps),
                    rms_norm(tokens, p["token_layernorm.weight"], eps),
                ],
                -1,
            )
            @ p["input_proj.weight"].T
        )
        layer_p = {name[len("layer.") :]: t for name, t in p.items() if name.startswith("layer.")}
        u = decoder_layer(layer_p, z, torch.arange(rows) + k, config)
        previous = rms_norm(u, p["final_layernorm.weight"], eps)
        outs.append(previous)
    return trunk, outs
