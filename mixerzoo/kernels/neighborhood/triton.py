"""Triton 2-D neighborhood attention: forward + backward kernels registered as torch.library ops.

Ops (namespace ``mixerzoo``), usable under ``torch.compile`` and on the ``meta`` device through their
fake implementations:

* ``mixerzoo::na2d_fwd(q, k, v, rpb?, kernel_h, kernel_w, dilation_h, dilation_w, scale) -> (out, lse)``
* ``mixerzoo::na2d_bwd(grad_out, q, k, v, rpb?, out, lse, ..., rpb_grad) -> (dq, dk, dv, drpb)``

``na2d_fwd`` has its autograd registered (``register_autograd``); the gradient of ``lse`` is not
supported (it is an auxiliary output used by the backward). Importing this module does not import
triton: the kernels live in ``_triton_kernels`` and are loaded at the first launch.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from mixerzoo.kernels._triton import interpreting, triton_supported_for
from mixerzoo.kernels.neighborhood.common import axis_neighbors

__all__ = ["bwd_dkdv_config", "bwd_dq_config", "forward", "fwd_config", "is_supported"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _block_d(head_dim: int) -> int:
    return max(16, _next_pow2(head_dim))


def _kv_block(tile_x: int, kernel_x: int, elems: int) -> tuple[int, int]:
    """(rows, cols) of a key block: a power-of-two column count covering the tile's halo width."""
    cols = min(elems, _next_pow2(tile_x + kernel_x - 1))
    return max(1, elems // cols), cols


# Chosen from AOT compiles for sm_80/sm_90 (tests/kernels/test_aot_neighborhood.py): the per-score
# 2-D window mask and rpb gather are register-hungry, so 64 queries x 32 keys with 8 warps for
# rows of <= 128 bytes (16-bit head_dim <= 64, fp32 head_dim <= 32) and 32 queries x 32 keys with
# 8 warps above that are the largest tiles that compile without spills.
def _tile(head_dim: int, elem_bytes: int) -> tuple[int, int]:
    return (8, 8) if _block_d(head_dim) * elem_bytes <= 128 else (4, 8)


def fwd_config(kernel_size: tuple[int, int], head_dim: int, elem_bytes: int = 2) -> dict[str, int]:
    """Launch config of the forward (and dq) kernel: ``BY x BX`` query tile, ``KBY x KBX`` key block."""
    by, bx = _tile(head_dim, elem_bytes)
    kby, kbx = _kv_block(bx, kernel_size[1], 32)
    return {"BY": by, "BX": bx, "KBY": kby, "KBX": kbx, "num_warps": 8, "num_stages": 1}


bwd_dq_config = fwd_config


def bwd_dkdv_config(kernel_size: tuple[int, int], head_dim: int, elem_bytes: int = 2) -> dict[str, int]:
    """Launch config of the dK/dV kernel: ``BY x BX`` key tile, ``QBY x QBX`` query block."""
    by, bx = _tile(head_dim, elem_bytes)
    qby, qbx = _kv_block(bx, kernel_size[1], 32)
    return {"BY": by, "BX": bx, "QBY": qby, "QBX": qbx, "num_warps": 8, "num_stages": 1}


def is_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor | None) -> tuple[bool, str]:
    ok, reason = triton_supported_for(q, k, v, rpb)
    if not ok:
        return False, reason
    if q.dtype not in _DTYPES:
        return False, f"dtype {q.dtype} not in {_DTYPES}"
    if q.shape[-1] > MAX_HEAD_DIM:
        return False, f"head_dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    return True, "ok"


@functools.cache
def _kernels() -> Any:
    from mixerzoo.kernels.neighborhood import _triton_kernels

    return _triton_kernels


def _dot_flags(dtype: torch.dtype) -> tuple[bool, str]:
    upcast = interpreting()
    if dtype == torch.float32 and not upcast and torch.backends.cuda.matmul.allow_tf32:
        return upcast, "tf32"
    return upcast, "ieee"


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _grid(height: int, width: int, dil: tuple[int, int], by: int, bx: int, bh: int) -> tuple[int, int]:
    nty = _cdiv(_cdiv(height, dil[0]), by)  # tiles per dilation group (the longest group)
    ntx = _cdiv(_cdiv(width, dil[1]), bx)
    return (dil[0] * nty * dil[1] * ntx, bh)


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate a kernel output (every element is written by the kernels; tests replace this with a
    NaN-filled, guard-banded allocation to prove it)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _fwd_impl(q, k, v, rpb, kernel, dil, scale):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, height, width, heads, dim = q.shape
    out = _empty(q.shape, q.dtype, q.device)
    lse = _empty((b, heads, height, width), torch.float32, q.device)
    cfg = fwd_config(kernel, dim, q.element_size())
    upcast, prec = _dot_flags(q.dtype)
    rpb_arg = rpb.contiguous() if rpb is not None else q  # dummy pointer when absent
    _kernels()._na2d_fwd_kernel[_grid(height, width, dil, cfg["BY"], cfg["BX"], b * heads)](
        q,
        k,
        v,
        rpb_arg,
        out,
        lse,
        *q.stride()[:4],
        heads,
        height,
        width,
        dil[0],
        dil[1],
        scale * 1.4426950408889634,
        KH=kernel[0],
        KW=kernel[1],
        HEAD_DIM=dim,
        BLOCK_D=_block_d(dim),
        BY=cfg["BY"],
        BX=cfg["BX"],
        KBY=cfg["KBY"],
        KBX=cfg["KBX"],
        HAS_RPB=rpb is not None,
        UPCAST=upcast,
        PREC=prec,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return out, lse


def _bwd_impl(do, q, k, v, rpb, out, lse, kernel, dil, scale, rpb_grad):
    q, k, v, do, out = (x.contiguous() for x in (q, k, v, do, out))
    b, height, width, heads, dim = q.shape
    delta = (out.float() * do.float()).sum(-1).permute(0, 3, 1, 2).contiguous()
    dq, dk, dv = (_empty(x.shape, x.dtype, x.device) for x in (q, k, v))
    upcast, prec = _dot_flags(q.dtype)
    has_rpb = rpb is not None
    rpb_arg = rpb.contiguous() if has_rpb else q
    store_ds = has_rpb and rpb_grad
    ds = _empty((b, heads, height, width, kernel[0] * kernel[1]), torch.float32, q.device) if store_ds else lse
    kern = _kernels()
    common = {
        "KH": kernel[0],
        "KW": kernel[1],
        "HEAD_DIM": dim,
        "BLOCK_D": _block_d(dim),
        "HAS_RPB": has_rpb,
        "UPCAST": upcast,
        "PREC": prec,
    }
    cfg = bwd_dq_config(kernel, dim, q.element_size())
    kern._na2d_bwd_dq_kernel[_grid(height, width, dil, cfg["BY"], cfg["BX"], b * heads)](
        q,
        k,
        v,
        rpb_arg,
        do,
        lse,
        delta,
        dq,
        ds,
        *q.stride()[:4],
        heads,
        height,
        width,
        dil[0],
        dil[1],
        scale * 1.4426950408889634,
        scale,
        BY=cfg["BY"],
        BX=cfg["BX"],
        KBY=cfg["KBY"],
        KBX=cfg["KBX"],
        STORE_DS=store_ds,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
        **common,
    )
    cfg = bwd_dkdv_config(kernel, dim, q.element_size())
    kern._na2d_bwd_dkdv_kernel[_grid(height, width, dil, cfg["BY"], cfg["BX"], b * heads)](
        q,
        k,
        v,
        rpb_arg,
        do,
        lse,
        delta,
        dk,
        dv,
        *q.stride()[:4],
        heads,
        height,
        width,
        dil[0],
        dil[1],
        scale * 1.4426950408889634,
        scale,
        BY=cfg["BY"],
        BX=cfg["BX"],
        QBY=cfg["QBY"],
        QBX=cfg["QBX"],
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
        **common,
    )
    if store_ds:
        _, by = axis_neighbors(height, kernel[0], dil[0], q.device)
        _, bx = axis_neighbors(width, kernel[1], dil[1], q.device)
        flat = (by[:, None, :, None] * (2 * kernel[1] - 1) + bx[None, :, None, :]).reshape(-1)
        drpb = torch.zeros((heads, (2 * kernel[0] - 1) * (2 * kernel[1] - 1)), dtype=torch.float32, device=q.device)
        drpb.index_add_(1, flat, ds.sum(0).reshape(heads, -1))
        drpb = drpb.view(rpb.shape).to(rpb.dtype)
    else:
        drpb = q.new_empty((0,))
    return dq, dk, dv, drpb


# --- torch.library registration -------------------------------------------------------------------


@torch.library.custom_op("mixerzoo::na2d_fwd", mutates_args=())
def na2d_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rpb: torch.Tensor | None,
    kernel_h: int,
    kernel_w: int,
    dilation_h: int,
    dilation_w: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _fwd_impl(q, k, v, rpb, (kernel_h, kernel_w), (dilation_h, dilation_w), scale)


@na2d_fwd.register_fake
def _(q, k, v, rpb, kernel_h, kernel_w, dilation_h, dilation_w, scale):
    b, height, width, heads, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(
        (b, heads, height, width), dtype=torch.float32
    )


@torch.library.custom_op("mixerzoo::na2d_bwd", mutates_args=())
def na2d_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rpb: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    kernel_h: int,
    kernel_w: int,
    dilation_h: int,
    dilation_w: int,
    scale: float,
    rpb_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_impl(grad_out, q, k, v, rpb, out, lse, (kernel_h, kernel_w), (dilation_h, dilation_w), scale, rpb_grad)


@na2d_bwd.register_fake
def _(grad_out, q, k, v, rpb, out, lse, kernel_h, kernel_w, dilation_h, dilation_w, scale, rpb_grad):
    like = functools.partial(torch.empty_like, memory_format=torch.contiguous_format)
    drpb = like(rpb) if (rpb is not None and rpb_grad) else q.new_empty((0,))
    return like(q), like(k), like(v), drpb


def _setup_context(ctx, inputs, output):
    q, k, v, rpb, kh, kw, dh, dw, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, rpb, out, lse)
    ctx.args = (kh, kw, dh, dw, scale)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, rpb, out, lse = ctx.saved_tensors
    rpb_grad = rpb is not None and ctx.needs_input_grad[3]
    dq, dk, dv, drpb = torch.ops.mixerzoo.na2d_bwd(grad_out, q, k, v, rpb, out, lse, *ctx.args, rpb_grad)
    return dq, dk, dv, (drpb if rpb_grad else None), None, None, None, None, None


na2d_fwd.register_autograd(_backward, setup_context=_setup_context)


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    rpb: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Neighborhood attention via the Triton kernels (arguments already validated)."""
    out, _ = torch.ops.mixerzoo.na2d_fwd(
        q, k, v, rpb, kernel_size[0], kernel_size[1], dilation[0], dilation[1], float(scale)
    )
    return out
