"""Chat prompts as the DAPO presets feed them: a ChatML tokenizer saved as a model directory (as
Qwen2.5's and MiMo's are), its chat template applied by ``encode_prompt``; and a MiMo-style
directory (``auto_map`` to remote code) loads its tokenizer without asking to run that code."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from rehearsal import IM_START, MIMO_CONFIG, chat_tokenizer

from occ_fast.data.records import PromptRecord
from occ_fast.prompts import encode_prompt
from occ_fast.tokenizer import load_tokenizer


def test_chat_messages_encode_to_the_template_token_ids(tmp_path):
    chat_tokenizer().save_pretrained(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    messages = [{"role": "user", "content": "What is 3 + 4?"}]
    ids = encode_prompt(tokenizer, PromptRecord(prompt=messages, answer="7", source="row 0"))
    text = f"{IM_START}user\nWhat is 3 + 4?<|im_end|>\n{IM_START}assistant\n"
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert all(isinstance(i, int) for i in ids)


def test_a_remote_code_model_directory_loads_its_tokenizer_without_a_question(tmp_path):
    chat_tokenizer().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(MIMO_CONFIG))
    code = (
        f"from occ_fast.tokenizer import load_tokenizer; load_tokenizer({str(tmp_path)!r}); print('loaded')"
    )
    start = time.monotonic()
    # stdin open and silent, as under a job scheduler or a pipe: a question would wait on it.
    proc = subprocess.run([sys.executable, "-c", code], input="", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("loaded"), proc.stderr[-3000:]
    assert "[y/N]" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert time.monotonic() - start < 60
