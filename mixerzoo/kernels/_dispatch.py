"""Implementation selection for every kernel op.

Each public op lists its candidate implementations in priority order, each with an
``is_supported(...) -> (ok, reason)`` check. ``impl="auto"`` (the default, or the value of the
environment variable ``MIXERZOO_KERNEL_IMPL``) takes the first supported candidate and records why
the others declined (:func:`explain`). An explicitly requested implementation never falls back: if it
cannot run it raises :class:`KernelNotSupportedError` with the reason.

While a tracer records the model (:func:`tracing`: ``torch.compile``, ``torch.export`` and the ONNX exporter
built on it, ``torch.jit.trace``, ``torch.fx``), the hand-written CPU fast paths step aside for plain,
traceable PyTorch ops with the same maths (no autograd Functions, ``out=`` writes, Python loops over the
batch, or tensor caches), Triton kernels without a fake implementation are declined by ``auto``, and the
dispatcher neither logs nor records (a log call would break the ``torch.compile`` graph at every op).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.fx._symbolic_trace as _fx_trace

__all__ = [
    "IMPLS",
    "Impl",
    "KernelNotSupportedError",
    "explain",
    "export_contiguous",
    "resolve_impl",
    "tracing",
]

Impl = Literal["auto", "reference", "torch", "triton"]
IMPLS: tuple[str, ...] = ("auto", "reference", "torch", "triton")
ENV_VAR = "MIXERZOO_KERNEL_IMPL"

_log = logging.getLogger("mixerzoo.kernels")
# torch.fx symbolic tracing and make_fx (``is_fx_tracing`` itself logs a warning on every positive call)
_fx_tracing = getattr(_fx_trace, "is_fx_symbolic_tracing", _fx_trace.is_fx_tracing)
_last: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {}


class KernelNotSupportedError(RuntimeError):
    """An explicitly requested kernel implementation cannot run these inputs."""


Candidate = tuple[str, Callable[[], tuple[bool, str]]]

TRACING_REASON = "tracing (torch.compile/export/jit/fx): this kernel has no fake implementation"


def tracing() -> bool:
    """True while ``torch.compile``/``torch.export`` (strict or not; also ``torch.onnx.export(dynamo=True)``),
    ``torch.jit.trace`` or ``torch.fx`` (``symbolic_trace``, ``make_fx``) records the call.

    Fast paths use it to step aside for traceable ops: a recorded ``out=`` write into a view, a loop over the
    batch (which fixes the batch size) or a cached tensor built under a fake mode would break the trace or the
    program it produces.
    """
    if torch.jit.is_scripting():
        return False
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or _fx_tracing()


def export_contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a recorded contiguous copy under ``torch.export`` (and the ONNX exporter on it); ``t`` otherwise.

    For the output of ``scaled_dot_product_attention``: export records it with the CPU flash kernel's strides,
    the ONNX exporter's decompositions replay it with the math kernel's, and a later ``reshape`` recorded as a
    view of the first layout then fails ("Cannot view a tensor ..."). A copy fixes the layout for both.
    """
    if torch.compiler.is_exporting():
        return t.clone(memory_format=torch.contiguous_format)
    return t


def _requested(impl: str | None) -> str:
    if impl is None or impl == "auto":
        env = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if env not in IMPLS:
            raise ValueError(f"{ENV_VAR}={env!r} is not one of {IMPLS}")
        return env
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {IMPLS}")
    return impl


def resolve_impl(op: str, impl: str | None, candidates: Sequence[Candidate]) -> str:
    """Pick the implementation of ``op`` to run.

    Args:
        op: public op name, used in messages and by :func:`explain`.
        impl: ``"auto"``/``None`` or an explicit implementation name.
        candidates: ``(name, is_supported)`` pairs in priority order for ``auto``. ``is_supported``
            returns ``(ok, reason)``; it is only called when needed.
    """
    want = _requested(impl)
    names = [name for name, _ in candidates]
    if want != "auto":
        for name, check in candidates:
            if name == want:
                ok, reason = check()
                if not ok:
                    raise KernelNotSupportedError(f"{op}: impl={want!r} cannot run these inputs: {reason}")
                if not torch.compiler.is_compiling():  # no side effects in a compiled graph
                    _last[op] = (name, ())
                return name
        raise KernelNotSupportedError(f"{op}: impl={want!r} is not available for this op (has {names})")
    declined: list[tuple[str, str]] = []
    for name, check in candidates:
        ok, reason = check()
        if ok:
            if not torch.compiler.is_compiling():  # a log call is a graph break under torch.compile
                if declined:
                    _log.debug("%s: auto chose %r; declined: %s", op, name, declined)
                _last[op] = (name, tuple(declined))
            return name
        declined.append((name, reason))
    raise KernelNotSupportedError(f"{op}: no implementation can run these inputs: {declined}")


def explain(op: str) -> str:
    """Say which implementation ``op`` last ran and why ``auto`` declined the others."""
    if op not in _last:
        return f"{op}: not called yet"
    name, declined = _last[op]
    why = "; ".join(f"{n}: {r}" for n, r in declined) or "nothing declined"
    return f"{op}: ran {name!r} ({why})"
