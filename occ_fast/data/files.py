"""Prompt datasets from local JSONL or Parquet files (e.g. the DAPO-Math-17k layout).

A row needs a prompt (a string, or a chat ``messages`` list of ``{role, content}``) and a
ground-truth answer (string or number), possibly nested: field names are dotted paths such as
``reward_model.ground_truth``. A malformed row either stops the load with an error naming file,
row and field, or is skipped and counted; so is a prompt or answer with bytes that are not UTF-8.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from occ_fast.data.records import Messages, PromptRecord

OnError = Literal["raise", "skip"]

# Bytes that are not UTF-8, as reading with errors="surrogateescape" keeps them: U+DC80..U+DCFF.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")


class DatasetError(ValueError):
    """A prompt dataset that cannot be used as configured (missing, unreadable, or a bad row)."""


class DatasetRowError(DatasetError):
    """A dataset row that cannot be used; names the file, the row (1-based) and the field."""

    def __init__(self, path: Path, row: int, field: str | None, problem: str) -> None:
        where = f"{path}, row {row}" + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {problem}")
        self.path, self.row, self.field = path, row, field


@dataclass
class PromptDataset:
    records: list[PromptRecord]
    num_skipped: int = 0
    skipped: list[str] = field(default_factory=list)  # one message per skipped row

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PromptRecord:
        return self.records[index]


def load_prompt_file(
    path: str | Path,
    prompt_field: str = "prompt",
    answer_field: str = "reward_model.ground_truth",
    on_error: OnError = "raise",
) -> PromptDataset:
    """Read every row of a ``.jsonl``/``.json`` (one object per line) or ``.parquet`` file.

    Rows are numbered from 1; for JSONL the row number is the line number.
    """
    path = Path(path)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not path.is_file():
        raise FileNotFoundError(f"prompt dataset {path} does not exist")
    dataset = PromptDataset(records=[])
    for row_number, row in _read_rows(path):
        try:
            if isinstance(row, Exception):
                raise DatasetRowError(path, row_number, None, str(row))
            dataset.records.append(_to_record(path, row_number, row, prompt_field, answer_field))
        except DatasetRowError as e:
            if on_error == "raise":
                raise
            dataset.num_skipped += 1
            dataset.skipped.append(str(e))
    if not dataset.records:
        raise ValueError(f"prompt dataset {path} has no usable rows ({dataset.num_skipped} skipped)")
    return dataset


def _read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | Exception]]:
    """(row number, row) pairs; a row that does not parse is yielded as its exception."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        # A byte-order mark (Windows editors) is skipped; bytes that are not UTF-8 are kept, for the
        # row's check to name its file, row and field.
        with path.open(encoding="utf-8-sig", errors="surrogateescape") as f:
            for line_number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    yield line_number, ValueError(f"invalid JSON: {e}")
                    continue
                yield (
                    line_number,
                    row
                    if isinstance(row, dict)
                    else ValueError(f"expected a JSON object, got {type(row).__name__}"),
                )
    elif suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except Exception as e:
            raise ValueError(f"cannot read Parquet file {path}: {e}") from e
        yield from enumerate(table.to_pylist(), start=1)
    else:
        raise ValueError(f"prompt dataset {path}: unsupported file type {suffix!r} (use .jsonl or .parquet)")


def _lookup(row: dict[str, Any], dotted: str) -> Any:
    """``row[dotted]`` if that key exists, else walk the dotted path; KeyError if absent."""
    if dotted in row:
        return row[dotted]
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def _to_record(
    path: Path, row_number: int, row: dict[str, Any], prompt_field: str, answer_field: str
) -> PromptRecord:
    def fail(field_name: str, problem: str) -> DatasetRowError:
        return DatasetRowError(path, row_number, field_name, problem)

    try:
        prompt = _lookup(row, prompt_field)
    except KeyError:
        raise fail(prompt_field, f"missing (row has keys {sorted(row)})") from None
    try:
        answer = _lookup(row, answer_field)
    except KeyError:
        raise fail(answer_field, f"missing (row has keys {sorted(row)})") from None
    return PromptRecord(
        prompt=_check_prompt(prompt, lambda problem: fail(prompt_field, problem)),
        answer=_check_answer(answer, lambda problem: fail(answer_field, problem)),
        source=f"{path}, row {row_number}",
    )


def _check_prompt(prompt: Any, fail: Callable[[str], DatasetRowError]) -> str | Messages:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise fail("empty prompt")
        if bad := _not_utf8(prompt):
            raise fail(bad)
        return prompt
    if not isinstance(prompt, list) or not prompt:
        raise fail(f"expected a string or a non-empty list of chat messages, got {type(prompt).__name__}")
    for i, message in enumerate(prompt):
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise fail(f"message {i} must be an object with string 'role' and 'content', got {message!r:.80}")
        if bad := _not_utf8(message["content"]):
            raise fail(f"message {i}: {bad}")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _check_answer(answer: Any, fail: Callable[[str], DatasetRowError]) -> str:
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise fail(f"expected a string or number, got {type(answer).__name__}")
    if isinstance(answer, float) and not math.isfinite(answer):
        raise fail(f"answer is {answer}")
    text = str(answer).strip()
    if not text:
        raise fail("empty answer")
    if bad := _not_utf8(text):
        raise fail(bad)
    return text


def _not_utf8(text: str) -> str | None:
    """Where ``text`` holds a byte that is not UTF-8 ("not UTF-8: byte 0xe9 at character 4"), else None."""
    found = _NOT_UTF8.search(text)
    if found is None:
        return None
    return f"not UTF-8: byte 0x{ord(found.group()) - 0xDC00:02x} at character {found.start() + 1}"
