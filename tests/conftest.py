"""Test session setup: without a CUDA device, Triton kernels run under the interpreter.

``TRITON_INTERPRET`` must be set before any Triton kernel module is imported, hence at the top of
this file, which pytest loads before collecting the tests.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from triton_interpreter import install  # noqa: E402

install()
