"""Optional backends fail loudly when asked for and missing; auto picks the best available."""

import importlib.util
import sys

import pytest
from model_helpers import tiny_base

from occ_fast.model import MTPModel, apply_liger, choose_attn_implementation

no_flash = importlib.util.find_spec("flash_attn") is None


@pytest.mark.skipif(not no_flash, reason="flash-attn is installed")
def test_flash_attention_asked_for_but_missing_says_what_to_install():
    assert choose_attn_implementation("auto") == "sdpa"
    with pytest.raises(ImportError, match=r"pip install occ-fast\[flash\]"):
        choose_attn_implementation("flash_attention_2")
    with pytest.raises(ImportError, match=r"occ-fast\[flash\]"):
        MTPModel.from_base(tiny_base(), attn_implementation="flash_attention_2")


def test_unknown_attention_implementation_is_rejected():
    with pytest.raises(ValueError, match="'flex'"):
        choose_attn_implementation("flex")


def test_liger_asked_for_but_missing_says_what_to_install(monkeypatch):
    # Make liger-kernel unimportable whether or not it is installed (None in sys.modules = absent).
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)
    with pytest.raises(ImportError, match=r"pip install occ-fast\[liger\]"):
        apply_liger(tiny_base())
