"""mixerzoo.kernels: attention ops shared by every mixer.

Public ops are re-exported lazily; this module never imports triton.
"""

from __future__ import annotations

import importlib
from typing import Any

from mixerzoo.kernels._dispatch import IMPLS, Impl, KernelNotSupportedError, explain

# public name -> submodule that defines it (filled in as ops land)
_LAZY: dict[str, str] = {
    "linear_attention": "mixerzoo.kernels.linear",
    "routed_attention": "mixerzoo.kernels.routed",
    "neighborhood_attention_2d": "mixerzoo.kernels.neighborhood",
    "window_attention_2d": "mixerzoo.kernels.window",
    "window_attention_2d_qkv": "mixerzoo.kernels.window",
}

__all__ = ["IMPLS", "Impl", "KernelNotSupportedError", "explain", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod = importlib.import_module(_LAZY[name])
        return getattr(mod, name)
    raise AttributeError(f"module 'mixerzoo.kernels' has no attribute {name!r}")
