"""Triton implementation of :func:`mixerzoo.kernels.routed_attention` (forward and backward).

Imported lazily, only when ``impl="triton"`` is selected or ``auto`` probes it.

Design (the gather of rayleizhu/BiFormer ``ops/bra_legacy.py`` fused into one flash-style kernel, as the FlexAttention
block-sparse path does with its ``kv_indices``):

* forward: one program per (query block of one region, batch·head). The routed key set of a region is
  the flattened range ``n in [0, K*T)`` with region ``topk_index[.., n // T]`` and token ``n % T``; key
  tiles are gathered by pointer arithmetic, so any region size (4 … 500+ tokens) packs into full tiles and
  K/V are never copied. Online softmax in fp32; the log-sum-exp is saved for backward.
* backward: ``dq`` by the same loop; ``dk``/``dv`` by one program per (key block of one region, batch·head)
  that walks an *inverted* routing index (the query regions that route to it, built with a stable
  argsort). Every gradient element is written by exactly one program in a fixed order: deterministic,
  no atomics.
* registered as ``torch.ops.mixerzoo.routed_attention_fwd/bwd`` with ``torch.library.triton_op`` and
  ``register_autograd``, so torch.compile sees the kernels and meta/fake tensors propagate shapes.
* fp32 inputs use IEEE fp32 dots unless ``torch.backends.cuda.matmul.allow_tf32`` is set. Under
  ``TRITON_INTERPRET=1`` bf16 dot operands are upcast to fp32 (the 3.8 interpreter's bf16 ``tl.dot`` is
  wrong, triton-lang/triton#11584); compiled code keeps bf16 tensor-core dots.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixerzoo.kernels import _triton

triton = _triton.import_triton()
import triton.language as tl  # noqa: E402

__all__ = ["CONFIGS", "forward", "is_supported", "launch_config"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128
MAX_HEAD_DIM_FP32 = 32  # wider fp32 tiles spill in the backward (AOT test)


@triton.jit
def _routed_attention_fwd_kernel(
    Q, K, V, IDX, MASK, O, LSE,
    s_qb, s_qr, s_qt, s_qh,
    s_kb, s_kr, s_kt, s_kh,
    s_vb, s_vr, s_vt, s_vh,
    s_ob, s_or, s_ot, s_oh,
    s_ib, s_ig, s_ir,
    s_mb, s_mr,
    H, R, T, TOPK, G_IS_H, D, DV,
    scale,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)  # batch base offsets in int64, per-element offsets in int32
    h = pid_bh % H
    n_mb = tl.cdiv(T, BLOCK_M)
    r = pid_m // n_mb
    offs_m = (pid_m % n_mb) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    m_ok = offs_m < T
    d_ok = offs_d < D
    dv_ok = offs_dv < DV

    q = tl.load(
        Q + b * s_qb + r * s_qr + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :],
        mask=m_ok[:, None] & d_ok[None, :], other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)
    idx_row = IDX + b * s_ib + (h * G_IS_H) * s_ig + r * s_ir

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    n_keys = TOPK * T
    for n0 in range(0, n_keys, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < n_keys
        tok = offs_n % T
        rid = tl.load(idx_row + offs_n // T, mask=n_ok, other=0).to(tl.int32)
        kt = tl.load(
            K + b * s_kb + h * s_kh + (rid * s_kr + tok * s_kt)[:, None] + offs_d[None, :],
            mask=n_ok[:, None] & d_ok[None, :], other=0.0,
        )
        vt = tl.load(
            V + b * s_vb + h * s_vh + (rid * s_vr + tok * s_vt)[:, None] + offs_dv[None, :],
            mask=n_ok[:, None] & dv_ok[None, :], other=0.0,
        )
        if UPCAST:
            kt = kt.to(tl.float32)
        s = tl.dot(q, tl.trans(kt), input_precision=DOT_PREC) * scale
        valid = n_ok
        if HAS_MASK:
            pad = tl.load(MASK + b * s_mb + rid * s_mr + tok, mask=n_ok, other=1)
            valid = valid & (pad == 0)
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        p_v = p.to(vt.dtype)
        if UPCAST:
            p_v = p_v.to(tl.float32)
            vt = vt.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p_v, vt, input_precision=DOT_PREC)
        m_i = m_new
    empty = l_i == 0.0  # every routed key is padding: output 0, lse = +inf so backward gives p = 0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.log(tl.where(empty, 1.0, l_i)))
    tl.store(
        O + b * s_ob + r * s_or + h * s_oh + offs_m[:, None] * s_ot + offs_dv[None, :],
        out.to(O.dtype.element_ty), mask=m_ok[:, None] & dv_ok[None, :],
    )
    tl.store(LSE + (pid_bh * R + r) * T + offs_m, lse, mask=m_ok)


@triton.jit
def _routed_attention_bwd_dq_kernel(
    Q, K, V, IDX, MASK, DO, LSE, DELTA, DQ,
    s_qb, s_qr, s_qt, s_qh,
    s_kb, s_kr, s_kt, s_kh,
    s_vb, s_vr, s_vt, s_vh,
    s_ob, s_or, s_ot, s_oh,
    s_ib, s_ig, s_ir,
    s_mb, s_mr,
    H, R, T, TOPK, G_IS_H, D, DV,
    scale,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """``dq``; DO/DQ share the strides of O/Q (``s_o*``/``s_q*``)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)  # batch base offsets in int64, per-element offsets in int32
    h = pid_bh % H
    n_mb = tl.cdiv(T, BLOCK_M)
    r = pid_m // n_mb
    offs_m = (pid_m % n_mb) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    m_ok = offs_m < T
    d_ok = offs_d < D
    dv_ok = offs_dv < DV

    q = tl.load(
        Q + b * s_qb + r * s_qr + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :],
        mask=m_ok[:, None] & d_ok[None, :], other=0.0,
    )
    do = tl.load(
        DO + b * s_ob + r * s_or + h * s_oh + offs_m[:, None] * s_ot + offs_dv[None, :],
        mask=m_ok[:, None] & dv_ok[None, :], other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + (pid_bh * R + r) * T + offs_m, mask=m_ok, other=float("inf"))
    delta = tl.load(DELTA + (pid_bh * R + r) * T + offs_m, mask=m_ok, other=0.0)
    idx_row = IDX + b * s_ib + (h * G_IS_H) * s_ig + r * s_ir

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n_keys = TOPK * T
    for n0 in range(0, n_keys, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < n_keys
        tok = offs_n % T
        rid = tl.load(idx_row + offs_n // T, mask=n_ok, other=0).to(tl.int32)
        kt = tl.load(
            K + b * s_kb + h * s_kh + (rid * s_kr + tok * s_kt)[:, None] + offs_d[None, :],
            mask=n_ok[:, None] & d_ok[None, :], other=0.0,
        )
        vt = tl.load(
            V + b * s_vb + h * s_vh + (rid * s_vr + tok * s_vt)[:, None] + offs_dv[None, :],
            mask=n_ok[:, None] & dv_ok[None, :], other=0.0,
        )
        if UPCAST:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        s = tl.dot(q, tl.trans(kt), input_precision=DOT_PREC) * scale
        valid = n_ok
        if HAS_MASK:
            pad = tl.load(MASK + b * s_mb + rid * s_mr + tok, mask=n_ok, other=1)
            valid = valid & (pad == 0)
        s = tl.where(valid[None, :], s, float("-inf"))
        p = tl.exp(s - lse[:, None])
        dp = tl.dot(do, tl.trans(vt), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        ds_k = ds.to(kt.dtype)
        if UPCAST:
            ds_k = ds.to(K.dtype.element_ty).to(tl.float32)
        dq += tl.dot(ds_k, kt, input_precision=DOT_PREC)
    dq = dq * scale
    tl.store(
        DQ + b * s_qb + r * s_qr + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :],
        dq.to(DQ.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :],
    )


@triton.jit
def _routed_attention_bwd_dkdv_kernel(
    Q, K, V, QLIST, OFFS, MASK, DO, LSE, DELTA, DK, DV_OUT,
    s_qb, s_qr, s_qt, s_qh,
    s_kb, s_kr, s_kt, s_kh,
    s_vb, s_vr, s_vt, s_vh,
    s_ob, s_or, s_ot, s_oh,
    s_mb, s_mr,
    H, R, T, TOPK, G_IS_H, D, DV,
    scale,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """``dk``/``dv`` of one key block of region ``kr``; DK/DV_OUT share the strides of K/V.

    QLIST[bg, OFFS[bg, kr]:OFFS[bg, kr + 1]] lists the query regions routed to ``kr`` (bg = b·G + g).
    Their tokens are packed into BLOCK_M-row tiles (entry ``m // T``, token ``m % T``).
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)  # batch base offsets in int64, per-element offsets in int32
    h = pid_bh % H
    n_nb = tl.cdiv(T, BLOCK_N)
    kr = pid_n // n_nb
    offs_n = (pid_n % n_nb) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    n_ok = offs_n < T
    d_ok = offs_d < D
    dv_ok = offs_dv < DV

    kt = tl.load(
        K + b * s_kb + kr * s_kr + h * s_kh + offs_n[:, None] * s_kt + offs_d[None, :],
        mask=n_ok[:, None] & d_ok[None, :], other=0.0,
    )
    vt = tl.load(
        V + b * s_vb + kr * s_vr + h * s_vh + offs_n[:, None] * s_vt + offs_dv[None, :],
        mask=n_ok[:, None] & dv_ok[None, :], other=0.0,
    )
    if UPCAST:
        kt = kt.to(tl.float32)
        vt = vt.to(tl.float32)
    valid = n_ok
    if HAS_MASK:
        pad = tl.load(MASK + b * s_mb + kr * s_mr + offs_n, mask=n_ok, other=1)
        valid = valid & (pad == 0)

    G = 1 + G_IS_H * (H - 1)
    bg = b * G + h * G_IS_H
    start = tl.load(OFFS + bg * (R + 1) + kr)
    end = tl.load(OFFS + bg * (R + 1) + kr + 1)
    qlist = QLIST + bg * (R * TOPK)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    n_rows = (end - start) * T
    for m0 in range(0, n_rows, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < n_rows
        tok = offs_m % T
        qr = tl.load(qlist + start + offs_m // T, mask=m_ok, other=0).to(tl.int32)
        q = tl.load(
            Q + b * s_qb + h * s_qh + (qr * s_qr + tok * s_qt)[:, None] + offs_d[None, :],
            mask=m_ok[:, None] & d_ok[None, :], other=0.0,
        )
        do = tl.load(
            DO + b * s_ob + h * s_oh + (qr * s_or + tok * s_ot)[:, None] + offs_dv[None, :],
            mask=m_ok[:, None] & dv_ok[None, :], other=0.0,
        )
        row = (pid_bh * R + qr) * T + tok
        lse = tl.load(LSE + row, mask=m_ok, other=float("inf"))
        delta = tl.load(DELTA + row, mask=m_ok, other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        s = tl.dot(q, tl.trans(kt), input_precision=DOT_PREC) * scale
        s = tl.where(valid[None, :], s, float("-inf"))
        p = tl.exp(s - lse[:, None])  # [BLOCK_M, BLOCK_N]
        p_o = p.to(DO.dtype.element_ty)
        if UPCAST:
            p_o = p_o.to(tl.float32)
        dv += tl.dot(tl.trans(p_o), do, input_precision=DOT_PREC)
        dp = tl.dot(do, tl.trans(vt), input_precision=DOT_PREC)
        ds = (p * (dp - delta[:, None])).to(Q.dtype.element_ty)
        if UPCAST:
            ds = ds.to(tl.float32)
        dk += tl.dot(tl.trans(ds), q, input_precision=DOT_PREC)
    dk = dk * scale
    tl.store(
        DK + b * s_kb + kr * s_kr + h * s_kh + offs_n[:, None] * s_kt + offs_d[None, :],
        dk.to(DK.dtype.element_ty), mask=n_ok[:, None] & d_ok[None, :],
    )
    tl.store(
        DV_OUT + b * s_vb + kr * s_vr + h * s_vh + offs_n[:, None] * s_vt + offs_dv[None, :],
        dv.to(DV_OUT.dtype.element_ty), mask=n_ok[:, None] & dv_ok[None, :],
    )


# ----------------------------------------------------------------------------------------------------------
# launch configuration (no autotuning: deterministic and AOT-checkable; CONFIGS lists every config we launch)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def launch_config(T: int, D: int, Dv: int, itemsize: int = 2) -> dict[str, int]:
    """Tile sizes of all three kernels: BLOCK_M follows the region size, BLOCK_N shrinks for wide heads, fp32
    inputs (``itemsize`` 4, FMA dots) get smaller tiles. Sized so that nothing spills on sm_80/sm_90
    (tests/kernels/test_aot_routed_linear.py, ``MIXERZOO_AOT_FULL=1`` for every config)."""
    block_d, block_dv = max(16, _pow2(D)), max(16, _pow2(Dv))
    wide = max(block_d, block_dv)
    warps = 4 if wide <= 32 else 8
    if itemsize >= 4:
        return {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_D": block_d, "BLOCK_DV": block_dv, "num_warps": warps,
                "num_stages": 2}
    return {
        "BLOCK_M": 16 if T <= 16 else 32 if wide >= 128 else 64,
        "BLOCK_N": 16 if (T <= 16 and wide >= 128) else 32 if (wide >= 64 or T <= 16) else 64,
        "BLOCK_D": block_d,
        "BLOCK_DV": block_dv,
        "num_warps": warps,
        "num_stages": 2,
    }


#: one (T, D) problem per distinct launch config (D = Dv); the AOT test compiles every one for sm_80/sm_90.
CONFIGS: tuple[tuple[int, int], ...] = tuple((t, d) for t in (16, 64) for d in (16, 32, 64, 128))


def _flags(dtype: torch.dtype) -> tuple[bool, str]:
    upcast = _triton.interpreting() and dtype == torch.bfloat16
    prec = "ieee"
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not _triton.interpreting():
        prec = "tf32"
    return upcast, prec


def is_supported(
    q: Tensor, k: Tensor, v: Tensor, topk_index: Tensor, key_padding_mask: Tensor | None
) -> tuple[bool, str]:
    if q.dtype not in _DTYPES:
        return False, f"dtype {q.dtype} not in {_DTYPES}"
    if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
        return False, f"head dims ({q.shape[-1]}, {v.shape[-1]}) exceed {MAX_HEAD_DIM}"
    if q.dtype == torch.float32 and max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM_FP32:
        return False, f"fp32 head dims > {MAX_HEAD_DIM_FP32} spill registers (FMA dots); use fp16/bf16 or impl='torch'"
    if max(q[0].numel(), v[0].numel()) >= 2**31:
        return False, "one batch element has >= 2**31 elements (kernel offsets are int32)"
    return True, "ok"


def _last_contig(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _mask_arg(mask: Tensor | None, like: Tensor) -> tuple[Tensor, int, int]:
    if mask is None:
        return like, 0, 0
    m = mask.to(torch.uint8)
    if m.stride(-1) != 1:
        m = m.contiguous()
    return m, (m.stride(0) if m.shape[0] > 1 else 0), m.stride(1)


@torch.library.triton_op("mixerzoo::routed_attention_fwd", mutates_args=())
def _fwd_op(
    q: Tensor, k: Tensor, v: Tensor, topk_index: Tensor, key_padding_mask: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    B, R, T, H, D = q.shape
    Dv = v.shape[-1]
    G, TOPK = topk_index.shape[1], topk_index.shape[3]
    out = torch.empty((B, R, T, H, Dv), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, R, T), dtype=torch.float32, device=q.device)
    mask, s_mb, s_mr = _mask_arg(key_padding_mask, topk_index)
    cfg = launch_config(T, D, Dv, q.element_size())
    upcast, prec = _flags(q.dtype)
    grid = (triton.cdiv(T, cfg["BLOCK_M"]) * R, B * H)
    torch.library.wrap_triton(_routed_attention_fwd_kernel)[grid](
        q, k, v, topk_index, mask, out, lse,
        q.stride(0), q.stride(1), q.stride(2), q.stride(3),
        k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        v.stride(0), v.stride(1), v.stride(2), v.stride(3),
        out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        topk_index.stride(0), topk_index.stride(1), topk_index.stride(2),
        s_mb, s_mr,
        H, R, T, TOPK, int(G != 1), D, Dv,
        scale,
        HAS_MASK=key_padding_mask is not None, UPCAST=upcast, DOT_PREC=prec, **cfg,
    )
    return out, lse


def _inverted_index(topk_index: Tensor, R: int) -> tuple[Tensor, Tensor]:
    """query-region lists per key region: (QLIST [B*G, R*K] int32, OFFS [B*G, R+1] int32)."""
    B, G, _, TOPK = topk_index.shape
    flat = topk_index.reshape(B * G, R * TOPK).to(torch.int64)
    order = torch.argsort(flat, dim=1, stable=True)  # positions (r*K + j) grouped by target region
    qlist = torch.div(order, TOPK, rounding_mode="floor").to(torch.int32)
    counts = torch.zeros((B * G, R), dtype=torch.int64, device=flat.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    offs = torch.zeros((B * G, R + 1), dtype=torch.int64, device=flat.device)
    offs[:, 1:] = torch.cumsum(counts, dim=1)
    return qlist.contiguous(), offs.to(torch.int32)


@torch.library.triton_op("mixerzoo::routed_attention_bwd", mutates_args=())
def _bwd_op(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    topk_index: Tensor,
    key_padding_mask: Tensor | None,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    B, R, T, H, D = q.shape
    Dv = v.shape[-1]
    G, TOPK = topk_index.shape[1], topk_index.shape[3]
    grad_out = grad_out.contiguous()
    delta = (grad_out.float() * out.float()).sum(-1).permute(0, 3, 1, 2).contiguous()  # [B, H, R, T]
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    if q.stride() != dq.stride():
        q = q.contiguous()
    if k.stride() != dk.stride() or v.stride() != dv.stride():
        k, v = k.contiguous(), v.contiguous()
    mask, s_mb, s_mr = _mask_arg(key_padding_mask, topk_index)
    cfg = launch_config(T, D, Dv, q.element_size())
    upcast, prec = _flags(q.dtype)
    strides = (
        q.stride(0), q.stride(1), q.stride(2), q.stride(3),
        k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        v.stride(0), v.stride(1), v.stride(2), v.stride(3),
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), grad_out.stride(3),
    )
    flags = {"HAS_MASK": key_padding_mask is not None, "UPCAST": upcast, "DOT_PREC": prec, **cfg}
    torch.library.wrap_triton(_routed_attention_bwd_dq_kernel)[(triton.cdiv(T, cfg["BLOCK_M"]) * R, B * H)](
        q, k, v, topk_index, mask, grad_out, lse, delta, dq,
        *strides,
        topk_index.stride(0), topk_index.stride(1), topk_index.stride(2),
        s_mb, s_mr,
        H, R, T, TOPK, int(G != 1), D, Dv,
        scale,
        **flags,
    )
    qlist, offs = _inverted_index(topk_index, R)
    torch.library.wrap_triton(_routed_attention_bwd_dkdv_kernel)[(triton.cdiv(T, cfg["BLOCK_N"]) * R, B * H)](
        q, k, v, qlist, offs, mask, grad_out, lse, delta, dk, dv,
        *strides,
        s_mb, s_mr,
        H, R, T, TOPK, int(G != 1), D, Dv,
        scale,
        **flags,
    )
    return dq, dk, dv


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - torch.library signature
    q, k, v, topk_index, key_padding_mask, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, topk_index, key_padding_mask)
    ctx.scale = scale


def _backward(ctx, grad_out: Tensor, grad_lse: Tensor | None):  # noqa: ANN001, ANN202
    q, k, v, out, lse, topk_index, key_padding_mask = ctx.saved_tensors
    dq, dk, dv = torch.ops.mixerzoo.routed_attention_bwd(
        grad_out, q, k, v, out, lse, topk_index, key_padding_mask, ctx.scale
    )
    return dq, dk, dv, None, None, None


torch.library.register_autograd("mixerzoo::routed_attention_fwd", _backward, setup_context=_setup_context)


def forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    topk_index: Tensor,
    *,
    scale: float,
    key_padding_mask: Tensor | None = None,
) -> Tensor:
    """Same contract as :func:`mixerzoo.kernels.routed.reference.forward`; CUDA (or the interpreter)."""
    q, k, v = _last_contig(q), _last_contig(k), _last_contig(v)
    topk_index = topk_index.contiguous()
    out, _ = torch.ops.mixerzoo.routed_attention_fwd(q, k, v, topk_index, key_padding_mask, scale)
    return out
