"""FLOP accounting for the sparse attention ops: count what an op computes, not how it runs.

``torch.utils.flop_counter.FlopCounterMode`` counts the aten ops it sees. The CPU paths of our kernels
run the sparse maths through dense building blocks (query tiles x a KV halo, gathered regions, masked
SDPA), so counting those ops would not give the FLOPs of the operation itself. Here every public op,
while a FLOP count is being taken, is routed through one accounting custom op
``torch.ops.mixerzoo_flops.charged`` whose registered FLOP formula is the op's own analytic count; the
dense ops inside it are hidden from the counter (a dispatch mode does not see the ops run by the op
it is handling). Its backward (``charged_bwd``, recompute + ``torch.autograd.grad``) is charged twice
the forward, the convention torch uses for SDPA.

Counting is on (:func:`counting`) when a ``FlopCounterMode`` constructed after this module was imported
is active, or inside :func:`sparse_flop_counting` (``enabled=True`` forces it, ``False`` turns it off).
It is never on under ``torch.compile``. Outside a count, the public ops pay one cheap check.

Kernel ``api.py`` functions call, after validating their arguments::

    if _flops.counting():
        return _flops.charge(OP, flops, fn, (q, k, v, optional_tensor_or_None, ...), out_shape, out_dtype)

where ``fn(*tensors)`` runs the op itself (the same arguments, any ``impl``); see the helpers
``na2d_flops``, ``routed_flops``, ``linear_attention_flops``, ``dense_attention_flops``.

All counts are FLOPs (2 per multiply-accumulate), like ``torch.utils.flop_counter``; the papers' "FLOPs"
are MACs = FLOPs / 2. Softmax, bias additions, normalisation and feature maps are not counted (as fvcore
and torch do not count element-wise work).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

__all__ = [
    "BACKWARD_FACTOR",
    "charge",
    "counting",
    "dense_attention_flops",
    "linear_attention_flops",
    "macs",
    "na2d_flops",
    "register_kernel_formulas",
    "routed_flops",
    "sparse_flop_counting",
]

BACKWARD_FACTOR = 2  # backward = dQ, dK, dV, dP: twice the forward's two matmuls (torch's SDPA rule)

_state = threading.local()
_calls: dict[int, Callable[..., Tensor]] = {}
_ids = itertools.count()


# ------------------------------------------------------------------------------------------ formulas
def na2d_flops(q_shape: Sequence[int], v_shape: Sequence[int], kernel_size: int | Sequence[int]) -> int:
    """2-D neighborhood attention, q ``[B, H, W, heads, D]``, v ``[..., Dv]``: every query scores
    ``kh*kw`` keys (QK) and mixes ``kh*kw`` values (AV): ``2 * B*H*W*heads * kh*kw * (D + Dv)``.
    Dilation does not change the count. (NAT's papers: 2·H·W·K²·C MACs per layer.)"""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    b, h, w, heads, d = q_shape
    return 2 * b * h * w * heads * kh * kw * (d + v_shape[-1])


def routed_flops(q_shape: Sequence[int], v_shape: Sequence[int], topk: int) -> int:
    """Routed (BiFormer) token attention, q ``[B, R, T, heads, D]``: each query scores and mixes the
    ``topk * T`` tokens of its routed regions (padding tokens included: they are computed)."""
    b, r, t, heads, d = q_shape
    return 2 * b * r * t * heads * topk * t * (d + v_shape[-1])


def linear_attention_flops(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]) -> int:
    """Linear attention, q ``[B, N, heads, D]``, k ``[B, M, heads, D]``, v ``[B, M, heads, Dv]``, in the
    linear order: ``S = φ(K)ᵀV`` (M·D·Dv), ``φ(Q)S`` (N·D·Dv) and the normaliser ``φ(Q)·z`` (N·D)."""
    b, n, heads, d = q_shape
    m, dv = k_shape[1], v_shape[-1]
    return 2 * b * heads * (m * d * dv + n * d * dv + n * d)


def dense_attention_flops(batch: int, n_q: int, n_k: int, d: int, dv: int) -> int:
    """Plain softmax attention of ``batch`` (= B·heads·windows) independent problems of ``n_q`` queries
    over ``n_k`` keys: ``2 * batch * n_q * n_k * (d + dv)`` (window attention: n_q = n_k = window area)."""
    return 2 * batch * n_q * n_k * (d + dv)


# ------------------------------------------------------------------------------------- switch
def _forced() -> bool | None:
    return getattr(_state, "forced", None)


@contextmanager
def sparse_flop_counting(enabled: bool = True) -> Iterator[None]:
    """Force the ops' FLOP accounting on (or off) inside the block, whatever counter is in use.

    With ``enabled=True`` the ops go through ``torch.ops.mixerzoo_flops.charged`` (useful with a counter
    other than ``FlopCounterMode`` that handles that op); ``False`` makes a ``FlopCounterMode`` count the
    dense implementation's ops instead.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    prev = _forced()
    _state.forced = enabled
    try:
        yield
    finally:
        _state.forced = prev


@contextmanager
def _suppressed() -> Iterator[None]:
    prev = getattr(_state, "suppress", 0)
    _state.suppress = prev + 1
    try:
        yield
    finally:
        _state.suppress = prev


def _flop_mode_active() -> bool:
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack  # noqa: PLC0415

    for mode in _get_current_dispatch_mode_stack():
        counter = getattr(mode, "counter", None)
        registry = getattr(counter, "flop_registry", None)
        if type(mode).__name__ == "_FlopCounterMode" and registry is not None:
            # a counter built before this module registered its formula would charge 0: count densely then
            return _PACKET in registry
    return False


def counting() -> bool:
    """True when the public ops should account their FLOPs analytically (see the module docstring)."""
    if getattr(_state, "suppress", 0):
        return False
    if torch.compiler.is_compiling():
        return False
    forced = _forced()
    if forced is not None:
        return forced
    return _flop_mode_active()


# ---------------------------------------------------------------------------------- the custom op
def _rebuild(present: Sequence[bool], tensors: Sequence[Tensor]) -> list[Tensor | None]:
    it = iter(tensors)
    return [next(it) if p else None for p in present]


@torch.library.custom_op("mixerzoo_flops::charged", mutates_args=())
def _charged(
    inputs: list[Tensor],
    present: list[bool],
    op: str,
    flops: int,
    call_id: int,
    out_shape: list[int],
    out_dtype: torch.dtype,
) -> Tensor:
    fn = _calls[call_id]
    with _suppressed(), torch.no_grad():
        out = fn(*_rebuild(present, inputs))
    if tuple(out.shape) != tuple(out_shape) or out.dtype != out_dtype:
        raise RuntimeError(
            f"{op}: charge() was told out_shape={tuple(out_shape)}, out_dtype={out_dtype}, "
            f"the op returned {tuple(out.shape)}, {out.dtype}"
        )
    return out.clone() if any(out.untyped_storage() is t.untyped_storage() for t in inputs) else out


@_charged.register_fake
def _(inputs, present, op, flops, call_id, out_shape, out_dtype):  # noqa: ANN001, ANN202
    return inputs[0].new_empty(out_shape, dtype=out_dtype)


@torch.library.custom_op("mixerzoo_flops::charged_bwd", mutates_args=())
def _charged_bwd(grad: Tensor, op: str, flops: int) -> Tensor:
    """Accounting only: the backward of ``charged`` (charged ``BACKWARD_FACTOR * flops``); returns nothing useful."""
    return grad.new_empty(0)


@_charged_bwd.register_fake
def _(grad, op, flops):  # noqa: ANN001, ANN202
    return grad.new_empty(0)


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - torch.library signature
    tensors, present, op, flops, call_id, _, _ = inputs
    ctx.fn = _calls[call_id]
    ctx.meta = (list(present), op, flops)
    ctx.save_for_backward(*tensors)


def _backward(ctx, grad: Tensor):  # noqa: ANN001, ANN202
    """Recompute the op with autograd, hidden from every dispatch mode (so a FLOP counter does not see the
    dense ops), take its vector-Jacobian product, then charge the backward through ``charged_bwd``."""
    from torch.utils._python_dispatch import _disable_current_modes  # noqa: PLC0415

    present, op, flops = ctx.meta
    tensors = ctx.saved_tensors
    xs = [t.detach().requires_grad_(t.is_floating_point()) for t in tensors]
    wants = [x for x in xs if x.requires_grad]
    got: list[Tensor | None] = [None] * len(wants)
    if grad.device.type != "meta" and wants:
        with _disable_current_modes(), _suppressed(), torch.enable_grad():
            out = ctx.fn(*_rebuild(present, xs))
            if out.requires_grad:
                got = list(torch.autograd.grad(out, wants, grad, allow_unused=True))
    torch.ops.mixerzoo_flops.charged_bwd(grad, op, flops)
    it = iter(got)
    grads = []
    for x in xs:
        if not x.requires_grad:
            grads.append(None)
            continue
        g = next(it)
        grads.append(torch.zeros_like(x) if g is None else g)
    return grads, None, None, None, None, None, None


_charged.register_autograd(_backward, setup_context=_setup_context)
_PACKET = torch.ops.mixerzoo_flops.charged


@register_flop_formula(torch.ops.mixerzoo_flops.charged)
def _charged_formula(inputs, present, op, flops, *args: Any, **kwargs: Any) -> int:  # noqa: ANN001
    return int(flops)


@register_flop_formula(torch.ops.mixerzoo_flops.charged_bwd)
def _charged_bwd_formula(grad, op, flops, *args: Any, **kwargs: Any) -> int:  # noqa: ANN001
    return BACKWARD_FACTOR * int(flops)


def charge(
    op: str,
    flops: int,
    fn: Callable[..., Tensor],
    tensors: Sequence[Tensor | None],
    out_shape: Sequence[int],
    out_dtype: torch.dtype,
) -> Tensor:
    """Run ``fn(*tensors)`` as one op that a FLOP counter charges ``flops`` (and ``2 * flops`` backward).

    Args:
        op: the public op's name (messages only).
        flops: forward FLOPs (2 per multiply-accumulate) of what the op computes.
        fn: runs the op on the given tensors (``None`` entries are passed through as ``None``); it is
            called with counting suppressed, under ``no_grad`` forward and again with grad in backward.
        tensors: the op's tensor arguments in ``fn``'s order (at least one tensor; ``None`` allowed).
        out_shape, out_dtype: the op's single output (same device as the first tensor).
    """
    present = [t is not None for t in tensors]
    real = [t for t in tensors if t is not None]
    if not real:
        raise ValueError(f"{op}: charge() needs at least one tensor, got tensors={tensors!r}")
    if not isinstance(flops, int) or flops < 0:
        raise ValueError(f"{op}: flops must be a non-negative int, got flops={flops!r}")
    call_id = next(_ids)
    _calls[call_id] = fn
    try:
        return torch.ops.mixerzoo_flops.charged(
            real, present, op, int(flops), call_id, [int(s) for s in out_shape], out_dtype
        )
    finally:
        _calls.pop(call_id, None)


# ------------------------------------------------------- formulas for the kernels' own custom ops
def _na2d_fwd_formula(q, k, v, rpb, kernel_h, kernel_w, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    return na2d_flops(q, v, (kernel_h, kernel_w))


def _na2d_bwd_formula(grad_out, q, k, v, rpb, out, lse, kernel_h, kernel_w, *args, **kwargs) -> int:  # noqa: ANN001
    return BACKWARD_FACTOR * na2d_flops(q, v, (kernel_h, kernel_w))


def _routed_fwd_formula(q, k, v, topk_index, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    return routed_flops(q, v, topk_index[-1])


def _routed_bwd_formula(grad_out, q, k, v, out, lse, topk_index, *args, **kwargs) -> int:  # noqa: ANN001
    return BACKWARD_FACTOR * routed_flops(q, v, topk_index[-1])


KERNEL_OP_FORMULAS: dict[str, Callable[..., int]] = {
    "na2d_fwd": _na2d_fwd_formula,
    "na2d_bwd": _na2d_bwd_formula,
    "routed_attention_fwd": _routed_fwd_formula,
    "routed_attention_bwd": _routed_bwd_formula,
}


def register_kernel_formulas() -> list[str]:
    """Register FLOP formulas for the kernels' ``torch.ops.mixerzoo.*`` ops that exist now (idempotent).

    Kernel modules call it right after defining their ops, so a ``FlopCounterMode`` also counts them
    correctly when they are reached directly (e.g. on CUDA). Returns the names registered by this call.
    """
    from torch.utils.flop_counter import flop_registry  # noqa: PLC0415

    done = []
    for name, formula in KERNEL_OP_FORMULAS.items():
        try:
            packet = getattr(torch.ops.mixerzoo, name)
        except (AttributeError, RuntimeError):
            continue
        if packet in flop_registry:
            continue
        register_flop_formula(packet)(formula)
        done.append(name)
    return done


def macs(flops: int) -> float:
    """FLOPs → multiply-accumulates (the papers' "FLOPs")."""
    return flops / 2.0

