"""Lazy access to Triton. Nothing outside ``mixerzoo/kernels`` imports triton, and nothing here
imports it at module import time: ``import mixerzoo`` works where triton is absent or broken."""

from __future__ import annotations

import functools
import os
from types import ModuleType

__all__ = ["has_triton", "import_triton", "interpreting", "triton_supported_for"]


@functools.cache
def _probe() -> tuple[ModuleType | None, str]:
    try:
        import triton  # noqa: PLC0415 - lazy by design
    except Exception as err:  # any failure means "no triton", never an import error for mixerzoo
        return None, f"triton cannot be imported ({type(err).__name__}: {err})"
    return triton, ""


def has_triton() -> tuple[bool, str]:
    mod, reason = _probe()
    return mod is not None, reason or "ok"


def import_triton() -> ModuleType:
    mod, reason = _probe()
    if mod is None:
        raise ImportError(reason)
    return mod


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels then run on CPU tensors, numerics only)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_supported_for(*tensors) -> tuple[bool, str]:
    """Common checks for launching a Triton kernel on ``tensors``."""
    ok, reason = has_triton()
    if not ok:
        return False, reason
    for t in tensors:
        if t is None:
            continue
        if t.device.type == "meta":
            return False, "meta tensors: shape inference only"
        if t.device.type != "cuda" and not interpreting():
            return False, f"tensors on {t.device.type}, triton needs cuda (or TRITON_INTERPRET=1)"
    return True, "ok"
