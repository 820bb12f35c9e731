"""Triton kernels of 2-D neighborhood attention (imported lazily by ``triton.py``; imports triton).

Layout: q, k, v, o, do, dq, dk, dv are ``(B, H, W, heads, head_dim)`` with unit stride on head_dim and
shared strides; lse and delta are ``(B, heads, H, W)`` float32 (natural-log LSE); rpb is
``(heads, 2*KH-1, 2*KW-1)`` contiguous. All index maths is in *dilation-group* coordinates: a program
owns one dilation group ``(gy, gx)`` and a ``BY x BX`` tile of query positions ``j`` in it; absolute
coordinates are ``g + dilation * j``. The window of query ``j`` starts at
``clamp(j - K//2, 0, Lg - K)`` (NATTEN), so a query tile's keys lie in the box
``[start(j_first), start(j_last) + K)`` per axis, which is walked in ``KBY x KBX`` key blocks; inside a
block each score is masked by the exact per-query window test.

Every kernel takes ``UPCAST`` (cast dot operands to float32: the triton 3.8 interpreter computes bf16
``tl.dot`` on raw bit patterns) and ``PREC`` (``tl.dot`` input precision for float32 inputs).
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _start(j, lg, K: tl.constexpr):
    return tl.minimum(tl.maximum(j - K // 2, 0), lg - K)


@triton.jit
def _in_window(offset, K: tl.constexpr):
    """0 <= offset < K with one unsigned compare."""
    return offset.to(tl.uint32, bitcast=True) < K


@triton.jit
def _tile_coords(pid, H, W, DH, DW, BY: tl.constexpr, BX: tl.constexpr):
    """Decode a program id into (gy, gx, Lgy, Lgx, first tile row j, first tile col j)."""
    nty = tl.cdiv(tl.cdiv(H, DH), BY)
    ntx = tl.cdiv(tl.cdiv(W, DW), BX)
    ty_all = pid // (DW * ntx)
    tx_all = pid % (DW * ntx)
    gy = ty_all // nty
    gx = tx_all // ntx
    lgy = (H - gy + DH - 1) // DH
    lgx = (W - gx + DW - 1) // DW
    return gy, gx, lgy, lgx, (ty_all % nty) * BY, (tx_all % ntx) * BX


@triton.jit
def _na2d_fwd_kernel(
    Q,
    K,
    V,
    RPB,
    O,
    LSE,
    s_b,
    s_y,
    s_x,
    s_h,
    HEADS,
    H,
    W,
    DH,
    DW,
    qk_scale,
    KH: tl.constexpr,
    KW: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BY: tl.constexpr,
    BX: tl.constexpr,
    KBY: tl.constexpr,
    KBX: tl.constexpr,
    HAS_RPB: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HEADS
    h = bh % HEADS
    gy, gx, lgy, lgx, jy0, jx0 = _tile_coords(pid, H, W, DH, DW, BY, BX)

    offs_m = tl.arange(0, BY * BX)
    qj_y = jy0 + offs_m // BX
    qj_x = jx0 + offs_m % BX
    q_valid = (qj_y < lgy) & (qj_x < lgx)
    # rows past the group's end duplicate its last row (never stored): keeps every index in range
    qj_y = tl.minimum(qj_y, lgy - 1)
    qj_x = tl.minimum(qj_x, lgx - 1)
    sy = _start(qj_y, lgy, KH)
    sx = _start(qj_x, lgx, KW)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM

    base = b.to(tl.int64) * s_b + h * s_h
    q_off = base + (gy + DH * qj_y).to(tl.int64) * s_y + (gx + DW * qj_x) * s_x
    q = tl.load(Q + q_off[:, None] + offs_d[None, :], mask=q_valid[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    # key box of this query tile, per axis, in group coordinates
    lo_y = _start(jy0, lgy, KH)
    hi_y = _start(tl.minimum(jy0 + BY - 1, lgy - 1), lgy, KH) + KH
    lo_x = _start(jx0, lgx, KW)
    hi_x = _start(tl.minimum(jx0 + BX - 1, lgx - 1), lgx, KW) + KW

    m_i = tl.full([BY * BX], -1.0e30, tl.float32)
    l_i = tl.zeros([BY * BX], tl.float32)
    acc = tl.zeros([BY * BX, BLOCK_D], tl.float32)
    offs_n = tl.arange(0, KBY * KBX)
    rpb_base = RPB + h * (2 * KH - 1) * (2 * KW - 1)
    for ky0 in range(lo_y, hi_y, KBY):
        for kx0 in range(lo_x, hi_x, KBX):
            kj_y = ky0 + offs_n // KBX
            kj_x = kx0 + offs_n % KBX
            k_valid = (kj_y < hi_y) & (kj_x < hi_x)
            k_off = base + (gy + DH * kj_y).to(tl.int64) * s_y + (gx + DW * kj_x) * s_x
            kv_mask = k_valid[:, None] & d_ok[None, :]
            k = tl.load(K + k_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(V + k_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            # in-window test; keys outside [lo, hi) are outside every window of the tile
            nb = _in_window(kj_y[None, :] - sy[:, None], KH) & _in_window(kj_x[None, :] - sx[:, None], KW)
            if HAS_RPB:
                bidx = (kj_y[None, :] - qj_y[:, None] + KH - 1) * (2 * KW - 1) + (
                    kj_x[None, :] - qj_x[:, None] + KW - 1
                )
                s += tl.load(rpb_base + bidx, mask=nb, other=0.0).to(tl.float32) * LOG2E
            s = tl.where(nb, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.math.exp2(m_i - m_new)
            p = tl.math.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
            m_i = m_new

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(O + q_off[:, None] + offs_d[None, :], out.to(O.dtype.element_ty), mask=q_valid[:, None] & d_ok[None, :])
    lse_off = bh.to(tl.int64) * H * W + (gy + DH * qj_y) * W + (gx + DW * qj_x)
    tl.store(LSE + lse_off, (m_i + tl.math.log2(l_safe)) * LN2, mask=q_valid)


@triton.jit
def _na2d_bwd_dq_kernel(
    Q,
    K,
    V,
    RPB,
    DO,
    LSE,
    DELTA,
    DQ,
    DS,
    s_b,
    s_y,
    s_x,
    s_h,
    HEADS,
    H,
    W,
    DH,
    DW,
    qk_scale,
    scale,
    KH: tl.constexpr,
    KW: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BY: tl.constexpr,
    BX: tl.constexpr,
    KBY: tl.constexpr,
    KBX: tl.constexpr,
    HAS_RPB: tl.constexpr,
    STORE_DS: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HEADS
    h = bh % HEADS
    gy, gx, lgy, lgx, jy0, jx0 = _tile_coords(pid, H, W, DH, DW, BY, BX)

    offs_m = tl.arange(0, BY * BX)
    qj_y = jy0 + offs_m // BX
    qj_x = jx0 + offs_m % BX
    q_valid = (qj_y < lgy) & (qj_x < lgx)
    # rows past the group's end duplicate its last row (never stored): keeps every index in range
    qj_y = tl.minimum(qj_y, lgy - 1)
    qj_x = tl.minimum(qj_x, lgx - 1)
    sy = _start(qj_y, lgy, KH)
    sx = _start(qj_x, lgx, KW)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    qd_mask = q_valid[:, None] & d_ok[None, :]

    base = b.to(tl.int64) * s_b + h * s_h
    q_off = base + (gy + DH * qj_y).to(tl.int64) * s_y + (gx + DW * qj_x) * s_x
    q = tl.load(Q + q_off[:, None] + offs_d[None, :], mask=qd_mask, other=0.0)
    do = tl.load(DO + q_off[:, None] + offs_d[None, :], mask=qd_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    tok = bh.to(tl.int64) * H * W + (gy + DH * qj_y) * W + (gx + DW * qj_x)
    lse2 = tl.load(LSE + tok, mask=q_valid, other=0.0) * LOG2E
    delta = tl.load(DELTA + tok, mask=q_valid, other=0.0)

    lo_y = _start(jy0, lgy, KH)
    hi_y = _start(tl.minimum(jy0 + BY - 1, lgy - 1), lgy, KH) + KH
    lo_x = _start(jx0, lgx, KW)
    hi_x = _start(tl.minimum(jx0 + BX - 1, lgx - 1), lgx, KW) + KW

    dq = tl.zeros([BY * BX, BLOCK_D], tl.float32)
    offs_n = tl.arange(0, KBY * KBX)
    rpb_base = RPB + h * (2 * KH - 1) * (2 * KW - 1)
    for ky0 in range(lo_y, hi_y, KBY):
        for kx0 in range(lo_x, hi_x, KBX):
            kj_y = ky0 + offs_n // KBX
            kj_x = kx0 + offs_n % KBX
            k_valid = (kj_y < hi_y) & (kj_x < hi_x)
            k_off = base + (gy + DH * kj_y).to(tl.int64) * s_y + (gx + DW * kj_x) * s_x
            kv_mask = k_valid[:, None] & d_ok[None, :]
            k = tl.load(K + k_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(V + k_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            # in-window test; keys outside [lo, hi) are outside every window of the tile
            nb = _in_window(kj_y[None, :] - sy[:, None], KH) & _in_window(kj_x[None, :] - sx[:, None], KW)
            if HAS_RPB:
                bidx = (kj_y[None, :] - qj_y[:, None] + KH - 1) * (2 * KW - 1) + (
                    kj_x[None, :] - qj_x[:, None] + KW - 1
                )
                s += tl.load(rpb_base + bidx, mask=nb, other=0.0).to(tl.float32) * LOG2E
            p = tl.where(nb, tl.math.exp2(s - lse2[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PREC)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
            if STORE_DS:
                t = (kj_y[None, :] - sy[:, None]) * KW + (kj_x[None, :] - sx[:, None])
                tl.store(DS + tok[:, None] * (KH * KW) + t, ds, mask=nb & q_valid[:, None])
    tl.store(DQ + q_off[:, None] + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=qd_mask)


@triton.jit
def _na2d_bwd_dkdv_kernel(
    Q,
    K,
    V,
    RPB,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    s_b,
    s_y,
    s_x,
    s_h,
    HEADS,
    H,
    W,
    DH,
    DW,
    qk_scale,
    scale,
    KH: tl.constexpr,
    KW: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BY: tl.constexpr,
    BX: tl.constexpr,
    QBY: tl.constexpr,
    QBX: tl.constexpr,
    HAS_RPB: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HEADS
    h = bh % HEADS
    gy, gx, lgy, lgx, jy0, jx0 = _tile_coords(pid, H, W, DH, DW, BY, BX)

    # this program's keys
    offs_n = tl.arange(0, BY * BX)
    kj_y = jy0 + offs_n // BX
    kj_x = jx0 + offs_n % BX
    k_valid = (kj_y < lgy) & (kj_x < lgx)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    kd_mask = k_valid[:, None] & d_ok[None, :]
    base = b.to(tl.int64) * s_b + h * s_h
    k_off = base + (gy + DH * kj_y).to(tl.int64) * s_y + (gx + DW * kj_x) * s_x
    k = tl.load(K + k_off[:, None] + offs_d[None, :], mask=kd_mask, other=0.0)
    v = tl.load(V + k_off[:, None] + offs_d[None, :], mask=kd_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)

    # queries whose window can contain a key of this tile (exact inverse of the clamped window)
    ky_last = tl.minimum(jy0 + BY - 1, lgy - 1)
    kx_last = tl.minimum(jx0 + BX - 1, lgx - 1)
    lo_y = tl.where(jy0 - KH + 1 <= 0, 0, jy0 - KH + 1 + KH // 2)
    hi_y = tl.where(ky_last >= lgy - KH, lgy, tl.minimum(lgy, ky_last + KH // 2 + 1))
    lo_x = tl.where(jx0 - KW + 1 <= 0, 0, jx0 - KW + 1 + KW // 2)
    hi_x = tl.where(kx_last >= lgx - KW, lgx, tl.minimum(lgx, kx_last + KW // 2 + 1))

    dk = tl.zeros([BY * BX, BLOCK_D], tl.float32)
    dv = tl.zeros([BY * BX, BLOCK_D], tl.float32)
    offs_m = tl.arange(0, QBY * QBX)
    rpb_base = RPB + h * (2 * KH - 1) * (2 * KW - 1)
    for qy0 in range(lo_y, hi_y, QBY):
        for qx0 in range(lo_x, hi_x, QBX):
            qj_y = qy0 + offs_m // QBX
            qj_x = qx0 + offs_m % QBX
            q_valid = (qj_y < hi_y) & (qj_x < hi_x)
            sy = _start(qj_y, lgy, KH)
            sx = _start(qj_x, lgx, KW)
            q_off = base + (gy + DH * qj_y).to(tl.int64) * s_y + (gx + DW * qj_x) * s_x
            qd_mask = q_valid[:, None] & d_ok[None, :]
            q = tl.load(Q + q_off[:, None] + offs_d[None, :], mask=qd_mask, other=0.0)
            do = tl.load(DO + q_off[:, None] + offs_d[None, :], mask=qd_mask, other=0.0)
            if UPCAST:
                q = q.to(tl.float32)
                do = do.to(tl.float32)
            tok = bh.to(tl.int64) * H * W + (gy + DH * qj_y) * W + (gx + DW * qj_x)
            lse2 = tl.load(LSE + tok, mask=q_valid, other=0.0) * LOG2E
            delta = tl.load(DELTA + tok, mask=q_valid, other=0.0)
            # transposed scores: (keys, queries)
            st = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale
            nb = (
                _in_window(kj_y[:, None] - sy[None, :], KH)
                & _in_window(kj_x[:, None] - sx[None, :], KW)
                & q_valid[None, :]
            )
            if HAS_RPB:
                bidx = (kj_y[:, None] - qj_y[None, :] + KH - 1) * (2 * KW - 1) + (
                    kj_x[:, None] - qj_x[None, :] + KW - 1
                )
                st += tl.load(rpb_base + bidx, mask=nb, other=0.0).to(tl.float32) * LOG2E
            pt = tl.where(nb, tl.math.exp2(st - lse2[None, :]), 0.0)
            dv += tl.dot(pt.to(do.dtype), do, input_precision=PREC)
            dpt = tl.dot(v, tl.trans(do), input_precision=PREC)
            dst = pt * (dpt - delta[None, :])
            dk += tl.dot(dst.to(q.dtype), q, input_precision=PREC)
    tl.store(DK + k_off[:, None] + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=kd_mask)
    tl.store(DV + k_off[:, None] + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kd_mask)
