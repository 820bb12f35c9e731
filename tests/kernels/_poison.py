"""NaN-poisoned, guard-banded allocations for kernel tests (used inside interpreter worker subprocesses).

``poisoned_allocations()`` patches ``torch.empty``/``torch.empty_like`` so that every floating buffer a kernel
wrapper allocates is NaN-filled (unwritten elements show up as NaN) and is the interior of a larger NaN
buffer; ``check_guards()`` asserts that no kernel wrote past either end (the Triton interpreter does no
bounds checking).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

GUARD = 64
_real_empty = torch.empty
_real_empty_like = torch.empty_like
_buffers: list[tuple[torch.Tensor, int]] = []


def _poisoned(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    numel = 1
    for s in shape:
        numel *= int(s)
    buf = torch.full((numel + 2 * GUARD,), float("nan"), dtype=dtype, device=device)
    _buffers.append((buf, numel))
    return buf[GUARD : GUARD + numel].view(shape)


def _empty(*size, dtype=None, device=None, **kwargs):  # noqa: ANN002, ANN003, ANN202
    shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else tuple(size)
    dt = dtype or torch.get_default_dtype()
    if not dt.is_floating_point or kwargs.get("layout") not in (None, torch.strided) or kwargs.get("memory_format") not in (
        None,
        torch.contiguous_format,
    ):
        return _real_empty(*size, dtype=dtype, device=device, **kwargs)
    return _poisoned(shape, dt, device).requires_grad_(bool(kwargs.get("requires_grad", False)))


def _empty_like(x, *, dtype=None, device=None, memory_format=torch.preserve_format, **kwargs):  # noqa: ANN001, ANN202
    dt = dtype or x.dtype
    if not dt.is_floating_point or kwargs or (memory_format is torch.preserve_format and not x.is_contiguous()):
        return _real_empty_like(x, dtype=dtype, device=device, memory_format=memory_format, **kwargs)
    return _poisoned(tuple(x.shape), dt, device or x.device)


@contextlib.contextmanager
def poisoned_allocations() -> Iterator[None]:
    _buffers.clear()
    torch.empty, torch.empty_like = _empty, _empty_like
    try:
        yield
    finally:
        torch.empty, torch.empty_like = _real_empty, _real_empty_like


def check_guards() -> int:
    """Assert every guard band is still all-NaN; returns the number of buffers checked."""
    for buf, numel in _buffers:
        head, tail = buf[:GUARD], buf[GUARD + numel :]
        assert head.isnan().all() and tail.isnan().all(), "a kernel wrote outside its output buffer"
    return len(_buffers)
