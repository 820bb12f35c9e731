"""Ahead-of-time compile a ``@triton.jit`` kernel for an NVIDIA target without a GPU (test helper).

Triton can run its whole NVIDIA pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin, with the bundled
``ptxas``) on a machine without a GPU. This module wraps that so kernel tests can assert what only a
real compile reveals: the kernel compiles for the architecture at all (``tl.dot`` shape rules, register
allocation), its dynamic shared memory fits the architecture, nothing spills to local memory, and the
matmuls were lowered to tensor-core instructions (``mma.sync`` on sm_80, ``wgmma`` on sm_90).

Usage::

    from _aot import aot_compile, SMEM_LIMIT   # tests/kernels is on sys.path (rootdir-less pytest)

    r = aot_compile(
        my_kernel,                                   # the @triton.jit function (not a launcher)
        signature={"q_ptr": "*fp16", "n": "i32", "BLOCK": "constexpr"},
        constexprs={"BLOCK": 64},
        arch=90, num_warps=4, num_stages=2,
    )
    assert r.shared <= SMEM_LIMIT[90] and r.spill_bytes == 0 and r.has_mma

``signature`` must name every argument of the kernel in order, with Triton type strings
(``"*fp32"``, ``"*bf16"``, ``"i32"``, ``"fp32"``, ...) and ``"constexpr"`` for constexpr arguments,
whose values go in ``constexprs``. Register and spill counts are read from the cubin with the
``cuobjdump --dump-resource-usage`` that ships with Triton (the driver fills ``n_regs``/``n_spills`` only
at load time, which needs a GPU). Compiling costs ~0.2-1 s per kernel and config on one CPU core.

The import of triton happens inside :func:`aot_compile`, so importing this module is cheap; tests
should ``pytest.importorskip("triton")`` first.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from typing import Any

__all__ = ["SMEM_LIMIT", "AotResult", "aot_compile", "cuobjdump_path"]

#: Maximum dynamic shared memory per block (opt-in), bytes.
SMEM_LIMIT: dict[int, int] = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448}


@dataclasses.dataclass(frozen=True)
class AotResult:
    """What one AOT compile produced.

    Attributes:
        name: kernel symbol name.
        arch: compute capability compiled for (80, 90, ...).
        shared: dynamic shared memory in bytes (``metadata.shared``).
        registers: registers per thread (cuobjdump ``REG``).
        stack_bytes: per-thread stack frame (cuobjdump ``STACK``); > 0 usually means spills.
        local_bytes: per-thread local memory (cuobjdump ``LOCAL``).
        spill_bytes: ``max(stack_bytes, local_bytes)``; the "no spills" assertion uses this.
        has_mma: the PTX contains ``mma.sync`` (sm_80-class tensor cores) or ``wgmma`` (sm_90).
        has_wgmma: the PTX contains ``wgmma`` specifically.
        ptx: the PTX text (for further assertions).
        resource_usage: the raw cuobjdump output.
        metadata: the compiled kernel's metadata object.
    """

    name: str
    arch: int
    shared: int
    registers: int
    stack_bytes: int
    local_bytes: int
    spill_bytes: int
    has_mma: bool
    has_wgmma: bool
    ptx: str
    resource_usage: str
    metadata: Any


def cuobjdump_path() -> str:
    """Path of the ``cuobjdump`` bundled with Triton (falls back to the one on ``PATH``)."""
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return bundled if os.path.exists(bundled) else "cuobjdump"


def _resource_usage(cubin: bytes) -> tuple[str, int, int, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        out = subprocess.run(
            [cuobjdump_path(), "--dump-resource-usage", path], capture_output=True, text=True, check=True
        ).stdout
    finally:
        os.unlink(path)

    def field(key: str) -> int:
        m = re.search(rf"\b{key}:(\d+)", out)
        if m is None:
            raise RuntimeError(f"cuobjdump output has no {key}: field:\n{out}")
        return int(m.group(1))

    return out, field("REG"), field("STACK"), field("LOCAL")


def aot_compile(
    fn: Any,
    signature: Mapping[str, str],
    constexprs: Mapping[str, Any] | None = None,
    *,
    arch: int = 80,
    num_warps: int = 4,
    num_stages: int = 2,
    options: Mapping[str, Any] | None = None,
) -> AotResult:
    """Compile ``fn`` for ``GPUTarget("cuda", arch, 32)`` and report its resources.

    Args:
        fn: a ``@triton.jit`` function (``triton.runtime.JITFunction``). Autotuned/heuristics wrappers
            are unwrapped to the inner function.
        signature: every argument name -> Triton type string, ``"constexpr"`` for constexpr arguments.
        constexprs: values of the constexpr arguments (by name).
        arch: compute capability as an int (80 for A100, 90 for H100).
        num_warps, num_stages: launch options compiled in.
        options: extra backend options (e.g. ``{"maxnreg": 128}``).

    Raises whatever Triton raises when compilation fails (the test should let it propagate).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    while hasattr(fn, "fn") and not hasattr(fn, "arg_names"):  # Autotuner / Heuristics wrappers
        fn = fn.fn
    missing = [a for a in fn.arg_names if a not in signature]
    if missing:
        raise ValueError(f"signature is missing arguments {missing} of {fn.__name__}")
    src = ASTSource(fn=fn, signature=dict(signature), constexprs=dict(constexprs or {}))
    opts = {"num_warps": num_warps, "num_stages": num_stages, **dict(options or {})}
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
    ptx = compiled.asm["ptx"]
    usage, regs, stack, local = _resource_usage(compiled.asm["cubin"])
    has_wgmma = "wgmma" in ptx
    return AotResult(
        name=compiled.metadata.name,
        arch=arch,
        shared=int(compiled.metadata.shared),
        registers=regs,
        stack_bytes=stack,
        local_bytes=local,
        spill_bytes=max(stack, local),
        has_mma=has_wgmma or "mma.sync" in ptx,
        has_wgmma=has_wgmma,
        ptx=ptx,
        resource_usage=usage,
        metadata=compiled.metadata,
    )
