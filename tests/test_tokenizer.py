"""Offline BPE tokenizer: trains fast, round-trips text, saves and loads from a directory."""

from __future__ import annotations

import time

import pytest

from occ_fast.tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, load_tokenizer, train_bpe_tokenizer

CORPUS = [f"Question: what is {a} + {b}? Answer: {a + b}" for a in range(40) for b in range(25)]


def test_train_save_load_round_trip(tmp_path):
    start = time.perf_counter()
    tokenizer = train_bpe_tokenizer(CORPUS, vocab_size=400)
    assert time.perf_counter() - start < 1.0
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == (
        PAD_TOKEN,
        BOS_TOKEN,
        EOS_TOKEN,
    )
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert 259 < len(tokenizer) <= 400

    text = "Question: what is 123 + 45?  Answer: 168\n(unseen: é, ∑)"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges learned from the corpus actually apply

    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded(text)["input_ids"] == ids
    assert (loaded.pad_token_id, loaded.eos_token_id) == (0, 2)
    assert loaded.decode(ids + [loaded.eos_token_id], skip_special_tokens=True) == text
    batch = loaded(["1 + 1", "Question: what is 3 + 4?"], padding=True)
    assert batch["input_ids"][0].count(0) > 0 and min(map(sum, batch["attention_mask"])) > 0


def test_load_without_pad_token_uses_eos(tmp_path):
    tokenizer = train_bpe_tokenizer(CORPUS[:50], vocab_size=300)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path).pad_token == EOS_TOKEN


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer directory not found: .*missing"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="corpus is empty"):
        train_bpe_tokenizer([])
    with pytest.raises(ValueError, match="vocab_size=100 is below 259"):
        train_bpe_tokenizer(CORPUS, vocab_size=100)


def test_split_digits_writes_numbers_digit_by_digit():
    tok = train_bpe_tokenizer(["12 + 34 = 46", "99 + 1 = 100"] * 50, split_digits=True)
    ids = tok(" 100", add_special_tokens=False)["input_ids"]
    assert [tok.decode([i]) for i in ids][-3:] == ["1", "0", "0"]
    assert tok.decode(ids) == " 100"
