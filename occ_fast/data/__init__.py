"""Prompt data: local JSONL/Parquet datasets, the synthetic arithmetic task, a resumable sampler."""

from occ_fast.data.files import DatasetError, DatasetRowError, PromptDataset, load_prompt_file
from occ_fast.data.records import Messages, PromptRecord
from occ_fast.data.sampler import PromptSampler
from occ_fast.data.synthetic import ArithmeticTask

__all__ = [
    "ArithmeticTask",
    "DatasetError",
    "DatasetRowError",
    "Messages",
    "PromptDataset",
    "PromptRecord",
    "PromptSampler",
    "load_prompt_file",
]
