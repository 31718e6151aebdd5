"""Make the Triton interpreter (``TRITON_INTERPRET=1``, CPU) run what compiled Triton runs.

Two gaps of the interpreter, patched here and nowhere else; :func:`install` must run before any
kernel module is imported (``tests/conftest.py`` does it):

- ``@triton.autotune`` with several configs benchmarks them through a GPU driver and fails on a
  machine without one. Under the interpreter every config computes the same result, so the
  decorator keeps only the first.
- ``triton.language.extra.libdevice`` functions lower to CUDA's libdevice, which the interpreter
  cannot call. They are replaced by the NumPy function of the same meaning.

Python-float kernel arguments, a gap of older releases, work in the pinned Triton and need nothing.
"""

from __future__ import annotations

import os

import numpy as np

_LIBDEVICE_AS_NUMPY = {
    "exp": np.exp,
    "exp2": np.exp2,
    "expm1": np.expm1,
    "log": np.log,
    "log2": np.log2,
    "log1p": np.log1p,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x),
    "tanh": np.tanh,
    "pow": np.power,
    "fast_expf": np.exp,
    "fast_logf": np.log,
    "isnan": np.isnan,
    "isinf": np.isinf,
}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def install() -> None:
    """Apply both patches; a no-op unless ``TRITON_INTERPRET=1``."""
    if not interpreting():
        return
    _keep_first_autotune_config()
    _libdevice_through_numpy()


def _keep_first_autotune_config() -> None:
    import triton

    if getattr(triton.autotune, "_occ_fast_patched", False):
        return
    original = triton.autotune

    def autotune(configs, key, *args, **kwargs):
        return original(list(configs)[:1], key, *args, **kwargs)

    autotune._occ_fast_patched = True
    triton.autotune = autotune


def _libdevice_through_numpy() -> None:
    import triton.language as tl
    from triton.language.extra import libdevice
    from triton.runtime.interpreter import TensorHandle

    def through_numpy(np_fn):
        def call(*args, **_ignored):
            ref = next(a for a in args if isinstance(a, tl.tensor))
            data = [a.handle.data if isinstance(a, tl.tensor) else a for a in args]
            out = np.asarray(np_fn(*data))
            out_dtype = tl.int1 if out.dtype == np.bool_ else ref.dtype.scalar
            if out.dtype != np.bool_:
                out = out.astype(ref.handle.data.dtype)
            out_type = ref.type.with_element_ty(out_dtype) if ref.type.is_block() else out_dtype
            return tl.tensor(TensorHandle(out, out_dtype), out_type)

        return call

    for name, np_fn in _LIBDEVICE_AS_NUMPY.items():
        setattr(libdevice, name, through_numpy(np_fn))
