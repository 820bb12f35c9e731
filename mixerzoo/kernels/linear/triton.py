"""Triton implementation of :func:`mixerzoo.kernels.linear_attention` (forward and backward).

Imported lazily, only when ``impl="triton"`` is selected or ``auto`` probes it. Layout ``[B, N, H, D]``
(heads last, last dim contiguous), exactly as in ``api.py``.

Kernels (non-causal linear attention does ~d/2 FLOP per byte, far below a GPU's ridge point: the op is
memory-bound, so the design minimises passes; every arithmetic step
is fp32, dots take fp32 operands — tf32 tensor cores for 16-bit inputs, IEEE fp32 for fp32 inputs unless
``torch.backends.cuda.matmul.allow_tf32`` — so fp16/bf16 inputs never overflow and the interpreter's bf16
``tl.dot`` problem cannot arise):

* ``_linear_attention_stats_kernel`` (focused only): per token, max and the two norms of the focus map
  over all ``H·D`` channels (one read of q and of k).
* ``_linear_attention_state_kernel``: per (token chunk, b·h) partial ``[φ(k)ᵀV | Σφ(k)]`` in fp32, written to
  a workspace and summed in a fixed order (deterministic; no atomics).
* ``_linear_attention_fwd_kernel``: per (query block, b·h) ``out = φ(q)S / (φ(q)·z + eps)``.
* backward: ``_linear_attention_bwd_q_kernel`` (dφ(q) and partial state gradients),
  ``_linear_attention_bwd_kv_kernel`` (dφ(k), dV), and for the focused map
  ``_linear_attention_bwd_feat_kernel`` (the cross-head feature derivative); other maps are differentiated
  in place.

Registered as ``torch.ops.mixerzoo.linear_attention_fwd/bwd`` (``triton_op`` + ``register_autograd``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixerzoo.kernels import _triton

triton = _triton.import_triton()
import triton.language as tl  # noqa: E402

__all__ = ["CONFIGS", "KERNEL_CODES", "forward", "is_supported", "launch_config"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM_FP32 = 32  # wider fp32 tiles spill in the backward (AOT test)
MAX_HEAD_DIM = 64  # 128-wide tiles spill in the backward (AOT test); FLatten uses 32 and 64
KERNEL_CODES = {"identity": 0, "relu": 1, "elu": 2, "focused": 3}


@triton.jit
def _pow(w, P, P_IS_3: tl.constexpr):
    if P_IS_3:
        return w * w * w
    # 1e-30, not 1e-38: literals below fp32's smallest normal become fp64 and would promote the whole tile.
    # .to(fp32): the interpreter passes float scalars as fp64; compiled code already has fp32 here
    return tl.where(w > 0, tl.exp2((P * tl.log2(tl.maximum(w, 1e-30))).to(tl.float32)), 0.0)


@triton.jit
def _feature(x, ok, m, n1, n2, P, FEPS, KERNEL: tl.constexpr, P_IS_3: tl.constexpr):
    """φ of an fp32 tile ``x`` [rows, BLOCK_D]; ``m, n1, n2`` are per-row focus stats; 0 where not ``ok``."""
    if KERNEL == 0:
        phi = x
    elif KERNEL == 1:
        phi = tl.maximum(x, 0.0)
    elif KERNEL == 2:
        phi = tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))
    else:
        w = (tl.maximum(x, 0.0) + FEPS) / m[:, None]
        phi = _pow(w, P, P_IS_3) * (m * n1 / n2)[:, None]
    return tl.where(ok, phi, 0.0)


@triton.jit
def _linear_attention_stats_kernel(
    X, STATS, s_xb, s_xl, s_xh, L, H, D, FEPS, P,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, P_IS_3: tl.constexpr,
):
    """STATS[0|1|2, b, l] = m = max_c u, ‖u/m‖, ‖(u/m)^p‖ with u = relu(x) + FEPS over all H·D channels."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_l = pid * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_l < L)[:, None] & (offs_d < D)[None, :]
    base = X + b * s_xb + offs_l[:, None] * s_xl + offs_d[None, :]
    m = tl.zeros([BLOCK_L], tl.float32)
    for h in range(H):
        x = tl.load(base + h * s_xh, mask=ok, other=0.0).to(tl.float32)
        m = tl.maximum(m, tl.max(tl.where(ok, tl.maximum(x, 0.0) + FEPS, 0.0), 1))
    m = tl.maximum(m, 1e-30)
    n1 = tl.zeros([BLOCK_L], tl.float32)
    n2 = tl.zeros([BLOCK_L], tl.float32)
    for h in range(H):
        x = tl.load(base + h * s_xh, mask=ok, other=0.0).to(tl.float32)
        w = tl.where(ok, (tl.maximum(x, 0.0) + FEPS) / m[:, None], 0.0)
        wp = _pow(w, P, P_IS_3)
        n1 += tl.sum(w * w, 1)
        n2 += tl.sum(wp * wp, 1)
    l_ok = offs_l < L
    row = b * L + offs_l
    n_rows = tl.num_programs(1).to(tl.int64) * L
    tl.store(STATS + row, m, mask=l_ok)
    tl.store(STATS + n_rows + row, tl.maximum(tl.sqrt(n1), 1e-30), mask=l_ok)
    tl.store(STATS + 2 * n_rows + row, tl.maximum(tl.sqrt(n2), 1e-30), mask=l_ok)


@triton.jit
def _load_stats(STATS, b, offs, L, n_rows, ok, KERNEL: tl.constexpr):
    if KERNEL == 3:
        row = b * L + offs
        m = tl.load(STATS + row, mask=ok, other=1.0)
        n1 = tl.load(STATS + n_rows + row, mask=ok, other=1.0)
        n2 = tl.load(STATS + 2 * n_rows + row, mask=ok, other=1.0)
    else:
        m = tl.full(offs.shape, 1.0, tl.float32)
        n1 = m
        n2 = m
    return m, n1, n2


@triton.jit
def _linear_attention_state_kernel(
    K, V, STATS, WS, WSZ,
    s_kb, s_kl, s_kh, s_vb, s_vl, s_vh,
    H, M, D, DV, FEPS, P,
    CHUNK: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    KERNEL: tl.constexpr, P_IS_3: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """WS[bh, c] = Σ_{l in chunk c} φ(k_l)ᵀ v_l  [BLOCK_D, BLOCK_DV];  WSZ[bh, c] = Σ φ(k_l)  [BLOCK_D]."""
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    n_rows = (tl.num_programs(1) // H).to(tl.int64) * M
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < D
    dv_ok = offs_dv < DV
    acc = tl.zeros([BLOCK_D, BLOCK_DV], tl.float32)
    acc_z = tl.zeros([BLOCK_D], tl.float32)
    for l0 in range(pid_c * CHUNK, pid_c * CHUNK + CHUNK, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        l_ok = offs_l < M
        ok = l_ok[:, None] & d_ok[None, :]
        x = tl.load(K + b * s_kb + h * s_kh + offs_l[:, None] * s_kl + offs_d[None, :], mask=ok, other=0.0)
        v = tl.load(
            V + b * s_vb + h * s_vh + offs_l[:, None] * s_vl + offs_dv[None, :],
            mask=l_ok[:, None] & dv_ok[None, :], other=0.0,
        ).to(tl.float32)
        m, n1, n2 = _load_stats(STATS, b, offs_l, M, n_rows, l_ok, KERNEL)
        phi = _feature(x.to(tl.float32), ok, m, n1, n2, P, FEPS, KERNEL, P_IS_3)
        acc += tl.dot(tl.trans(phi), v, input_precision=DOT_PREC)
        acc_z += tl.sum(phi, 0)
    ws = WS + (pid_bh * tl.num_programs(0) + pid_c).to(tl.int64) * (BLOCK_D * BLOCK_DV)
    tl.store(ws + offs_d[:, None] * BLOCK_DV + offs_dv[None, :], acc)
    tl.store(WSZ + (pid_bh * tl.num_programs(0) + pid_c).to(tl.int64) * BLOCK_D + offs_d, acc_z)


@triton.jit
def _linear_attention_fwd_kernel(
    Q, STATS, S, Z, O, DEN,
    s_qb, s_ql, s_qh, s_ob, s_ol, s_oh,
    H, N, D, DV, FEPS, P, EPS,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    KERNEL: tl.constexpr, P_IS_3: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """out = φ(q) S / (φ(q)·z + EPS); S = [BLOCK_D, BLOCK_DV] and z = [BLOCK_D] per b·h (already /M)."""
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    n_rows = (tl.num_programs(1) // H).to(tl.int64) * N
    offs_l = pid * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    l_ok = offs_l < N
    ok = l_ok[:, None] & (offs_d < D)[None, :]
    x = tl.load(Q + b * s_qb + h * s_qh + offs_l[:, None] * s_ql + offs_d[None, :], mask=ok, other=0.0)
    m, n1, n2 = _load_stats(STATS, b, offs_l, N, n_rows, l_ok, KERNEL)
    phi = _feature(x.to(tl.float32), ok, m, n1, n2, P, FEPS, KERNEL, P_IS_3)
    s = tl.load(S + pid_bh.to(tl.int64) * (BLOCK_D * BLOCK_DV) + offs_d[:, None] * BLOCK_DV + offs_dv[None, :])
    z = tl.load(Z + pid_bh.to(tl.int64) * BLOCK_D + offs_d)
    num = tl.dot(phi, s, input_precision=DOT_PREC)
    den = tl.sum(phi * z[None, :], 1) + EPS
    out = num / den[:, None]
    tl.store(
        O + b * s_ob + h * s_oh + offs_l[:, None] * s_ol + offs_dv[None, :],
        out.to(O.dtype.element_ty), mask=l_ok[:, None] & (offs_dv < DV)[None, :],
    )
    tl.store(DEN + pid_bh.to(tl.int64) * N + offs_l, den, mask=l_ok)


@triton.jit
def _feature_grad(x, phi, g, KERNEL: tl.constexpr):
    """dL/dx for the elementwise maps (identity, relu, elu)."""
    if KERNEL == 0:
        return g
    elif KERNEL == 1:
        return tl.where(x > 0, g, 0.0)
    else:
        return tl.where(x > 0, g, g * phi)


@triton.jit
def _linear_attention_bwd_q_kernel(
    Q, STATS, S, Z, O, DEN, DO, GPHI, WS, WSZ,
    s_qb, s_ql, s_qh, s_ob, s_ol, s_oh,
    H, N, D, DV, FEPS, P,
    CHUNK: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    KERNEL: tl.constexpr, P_IS_3: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Per chunk of queries: dφ(q) (or dq directly for elementwise maps) → GPHI (strides of Q), and the
    partial state gradients WS[bh, c] = Σ φ(q)ᵀ dnum, WSZ[bh, c] = Σ φ(q)·dden."""
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    n_rows = (tl.num_programs(1) // H).to(tl.int64) * N
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < D
    dv_ok = offs_dv < DV
    s = tl.load(S + pid_bh.to(tl.int64) * (BLOCK_D * BLOCK_DV) + offs_d[:, None] * BLOCK_DV + offs_dv[None, :])
    z = tl.load(Z + pid_bh.to(tl.int64) * BLOCK_D + offs_d)
    acc = tl.zeros([BLOCK_D, BLOCK_DV], tl.float32)
    acc_z = tl.zeros([BLOCK_D], tl.float32)
    for l0 in range(pid_c * CHUNK, pid_c * CHUNK + CHUNK, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        l_ok = offs_l < N
        ok = l_ok[:, None] & d_ok[None, :]
        ok_v = l_ok[:, None] & dv_ok[None, :]
        q_ptr = b * s_qb + h * s_qh + offs_l[:, None] * s_ql + offs_d[None, :]
        o_ptr = b * s_ob + h * s_oh + offs_l[:, None] * s_ol + offs_dv[None, :]
        x = tl.load(Q + q_ptr, mask=ok, other=0.0).to(tl.float32)
        m, n1, n2 = _load_stats(STATS, b, offs_l, N, n_rows, l_ok, KERNEL)
        phi = _feature(x, ok, m, n1, n2, P, FEPS, KERNEL, P_IS_3)
        o = tl.load(O + o_ptr, mask=ok_v, other=0.0).to(tl.float32)
        do = tl.load(DO + o_ptr, mask=ok_v, other=0.0).to(tl.float32)
        den = tl.load(DEN + pid_bh.to(tl.int64) * N + offs_l, mask=l_ok, other=1.0)
        g_num = do / den[:, None]
        g_den = -tl.sum(g_num * o, 1)
        g_phi = tl.dot(g_num, tl.trans(s), input_precision=DOT_PREC) + g_den[:, None] * z[None, :]
        acc += tl.dot(tl.trans(phi), g_num, input_precision=DOT_PREC)
        acc_z += tl.sum(phi * g_den[:, None], 0)
        if KERNEL == 3:
            tl.store(GPHI + q_ptr, g_phi, mask=ok)
        else:
            tl.store(GPHI + q_ptr, _feature_grad(x, phi, g_phi, KERNEL).to(GPHI.dtype.element_ty), mask=ok)
    ws = WS + (pid_bh * tl.num_programs(0) + pid_c).to(tl.int64) * (BLOCK_D * BLOCK_DV)
    tl.store(ws + offs_d[:, None] * BLOCK_DV + offs_dv[None, :], acc)
    tl.store(WSZ + (pid_bh * tl.num_programs(0) + pid_c).to(tl.int64) * BLOCK_D + offs_d, acc_z)


@triton.jit
def _linear_attention_bwd_kv_kernel(
    K, V, STATS, GS, GZ, GPHI, DV_OUT,
    s_kb, s_kl, s_kh, s_vb, s_vl, s_vh,
    H, M, D, DV, FEPS, P, INV_M,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    KERNEL: tl.constexpr, P_IS_3: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """dφ(k) = (v gSᵀ + gz)/M (or dk directly) → GPHI (strides of K); dv = φ(k) gS / M → DV_OUT (strides of V)."""
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    n_rows = (tl.num_programs(1) // H).to(tl.int64) * M
    offs_l = pid * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    l_ok = offs_l < M
    ok = l_ok[:, None] & (offs_d < D)[None, :]
    ok_v = l_ok[:, None] & (offs_dv < DV)[None, :]
    k_ptr = b * s_kb + h * s_kh + offs_l[:, None] * s_kl + offs_d[None, :]
    v_ptr = b * s_vb + h * s_vh + offs_l[:, None] * s_vl + offs_dv[None, :]
    x = tl.load(K + k_ptr, mask=ok, other=0.0).to(tl.float32)
    v = tl.load(V + v_ptr, mask=ok_v, other=0.0).to(tl.float32)
    m, n1, n2 = _load_stats(STATS, b, offs_l, M, n_rows, l_ok, KERNEL)
    phi = _feature(x, ok, m, n1, n2, P, FEPS, KERNEL, P_IS_3)
    gs = tl.load(GS + pid_bh.to(tl.int64) * (BLOCK_D * BLOCK_DV) + offs_d[:, None] * BLOCK_DV + offs_dv[None, :])
    gz = tl.load(GZ + pid_bh.to(tl.int64) * BLOCK_D + offs_d)
    g_phi = (tl.dot(v, tl.trans(gs), input_precision=DOT_PREC) + gz[None, :]) * INV_M
    dv = tl.dot(phi, gs, input_precision=DOT_PREC) * INV_M
    tl.store(DV_OUT + v_ptr, dv.to(DV_OUT.dtype.element_ty), mask=ok_v)
    if KERNEL == 3:
        tl.store(GPHI + k_ptr, g_phi, mask=ok)
    else:
        tl.store(GPHI + k_ptr, _feature_grad(x, phi, g_phi, KERNEL).to(GPHI.dtype.element_ty), mask=ok)


@triton.jit
def _linear_attention_bwd_feat_kernel(
    X, STATS, GPHI, DX, s_xb, s_xl, s_xh, L, H, D, FEPS, P,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, P_IS_3: tl.constexpr,
):
    """Focused map: dx_c = [p·(n1/n2)·w^(p-1)·(g_c − (a/n2²)·wp_c) + (a/(n1·n2))·w_c]·(x_c > 0), a = Σ_c g_c·wp_c
    over all H·D channels (w = (relu(x)+FEPS)/m). GPHI is fp32 with the strides of X; DX too."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    n_rows = tl.num_programs(1).to(tl.int64) * L
    offs_l = pid * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.arange(0, BLOCK_D)
    l_ok = offs_l < L
    ok = l_ok[:, None] & (offs_d < D)[None, :]
    ptr = b * s_xb + offs_l[:, None] * s_xl + offs_d[None, :]
    m, n1, n2 = _load_stats(STATS, b, offs_l, L, n_rows, l_ok, 3)
    a = tl.zeros([BLOCK_L], tl.float32)
    for h in range(H):
        x = tl.load(X + ptr + h * s_xh, mask=ok, other=0.0).to(tl.float32)
        g = tl.load(GPHI + ptr + h * s_xh, mask=ok, other=0.0)
        w = tl.where(ok, (tl.maximum(x, 0.0) + FEPS) / m[:, None], 0.0)
        a += tl.sum(g * _pow(w, P, P_IS_3), 1)
    c1 = P * n1 / n2
    c2 = a / (n2 * n2)
    c3 = a / (n1 * n2)
    for h in range(H):
        x = tl.load(X + ptr + h * s_xh, mask=ok, other=0.0).to(tl.float32)
        g = tl.load(GPHI + ptr + h * s_xh, mask=ok, other=0.0)
        w = tl.where(ok, (tl.maximum(x, 0.0) + FEPS) / m[:, None], 0.0)
        wp = _pow(w, P, P_IS_3)
        if P_IS_3:
            w_pm1 = w * w
        else:
            w_pm1 = _pow(w, P - 1.0, False)
        dx = c1[:, None] * w_pm1 * (g - c2[:, None] * wp) + c3[:, None] * w
        dx = tl.where(x > 0, dx, 0.0)
        tl.store(DX + ptr + h * s_xh, dx.to(DX.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------------------------------------


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def launch_config(D: int, Dv: int, itemsize: int = 2) -> dict[str, int]:
    """Tiles: BLOCK_L tokens per matmul tile (CHUNK_TILES tiles per partial-sum program), BLOCK_LE tokens per
    tile of the elementwise kernels (stats, feature backward); head dims padded to powers of two; fp32 inputs
    (``itemsize`` 4, IEEE dots) get 32-token tiles. Sized so that no kernel spills on sm_80/sm_90
    (tests/kernels/test_aot_routed_linear.py)."""
    block_d, block_dv = max(16, _pow2(D)), max(16, _pow2(Dv))
    wide = max(block_d, block_dv)
    block_l = 64 if (wide == 32 and itemsize < 4) else 32
    return {"BLOCK_L": block_l, "BLOCK_LE": 16, "BLOCK_D": block_d, "BLOCK_DV": block_dv,
            "num_warps": 4 if wide <= 32 else 8, "num_stages": 2}


#: head dims whose launch configs the AOT test compiles (every config launch_config can produce).
CONFIGS: tuple[int, ...] = (16, 32, 64)
CHUNK_TILES = 8


def _dot_prec(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # 16-bit inputs: tf32 error (~5e-4) is below their storage precision


def is_supported(q: Tensor, k: Tensor, v: Tensor) -> tuple[bool, str]:
    if q.dtype not in _DTYPES:
        return False, f"dtype {q.dtype} not in {_DTYPES}"
    if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] > MAX_HEAD_DIM:
        return False, f"head dims ({q.shape[-1]}, {v.shape[-1]}) exceed {MAX_HEAD_DIM}"
    if q.dtype == torch.float32 and max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM_FP32:
        return False, f"fp32 head dims > {MAX_HEAD_DIM_FP32} spill registers (FMA dots); use fp16/bf16 or impl='torch'"
    return True, "ok"


def _stats(x: Tensor, kernel: int, p: float, feps: float, cfg: dict[str, int]) -> Tensor:
    B, L, H, D = x.shape
    if kernel != 3:
        return torch.empty((0,), dtype=torch.float32, device=x.device)
    stats = torch.empty((3, B, L), dtype=torch.float32, device=x.device)
    torch.library.wrap_triton(_linear_attention_stats_kernel)[(triton.cdiv(L, cfg["BLOCK_LE"]), B)](
        x, stats, x.stride(0), x.stride(1), x.stride(2), L, H, D, feps, p,
        BLOCK_L=cfg["BLOCK_LE"], BLOCK_D=cfg["BLOCK_D"], P_IS_3=p == 3.0, num_warps=4,
    )
    return stats


@torch.library.triton_op("mixerzoo::linear_attention_fwd", mutates_args=())
def _fwd_op(
    q: Tensor, k: Tensor, v: Tensor, kernel: int, p: float, feature_eps: float, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    B, N, H, D = q.shape
    M, Dv = k.shape[1], v.shape[3]
    cfg = launch_config(D, Dv, q.element_size())
    bl, bd, bdv = cfg["BLOCK_L"], cfg["BLOCK_D"], cfg["BLOCK_DV"]
    chunk = bl * CHUNK_TILES
    common = {"KERNEL": kernel, "P_IS_3": p == 3.0, "DOT_PREC": _dot_prec(q.dtype), "BLOCK_D": bd,
              "BLOCK_DV": bdv, "BLOCK_L": bl, "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    stats_q = _stats(q, kernel, p, feature_eps, cfg)
    stats_k = _stats(k, kernel, p, feature_eps, cfg)
    n_chunks = triton.cdiv(M, chunk)
    ws = torch.empty((B * H, n_chunks, bd, bdv), dtype=torch.float32, device=q.device)
    wsz = torch.empty((B * H, n_chunks, bd), dtype=torch.float32, device=q.device)
    torch.library.wrap_triton(_linear_attention_state_kernel)[(n_chunks, B * H)](
        k, v, stats_k, ws, wsz,
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        H, M, D, Dv, feature_eps, p, CHUNK=chunk, **common,
    )
    state = ws.sum(1).div_(M)  # [B*H, BLOCK_D, BLOCK_DV], fixed-order reduction
    z = wsz.sum(1).div_(M)  # [B*H, BLOCK_D]
    out = torch.empty((B, N, H, Dv), dtype=q.dtype, device=q.device)
    den = torch.empty((B * H, N), dtype=torch.float32, device=q.device)
    torch.library.wrap_triton(_linear_attention_fwd_kernel)[(triton.cdiv(N, bl), B * H)](
        q, stats_q, state, z, out, den,
        q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2),
        H, N, D, Dv, feature_eps, p, eps, **common,
    )
    return out, state, z, den, stats_q, stats_k


@torch.library.triton_op("mixerzoo::linear_attention_bwd", mutates_args=())
def _bwd_op(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    state: Tensor,
    z: Tensor,
    den: Tensor,
    stats_q: Tensor,
    stats_k: Tensor,
    kernel: int,
    p: float,
    feature_eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    B, N, H, D = q.shape
    M, Dv = k.shape[1], v.shape[3]
    cfg = launch_config(D, Dv, q.element_size())
    bl, bd, bdv = cfg["BLOCK_L"], cfg["BLOCK_D"], cfg["BLOCK_DV"]
    chunk = bl * CHUNK_TILES
    common = {"KERNEL": kernel, "P_IS_3": p == 3.0, "DOT_PREC": _dot_prec(q.dtype), "BLOCK_D": bd,
              "BLOCK_DV": bdv, "BLOCK_L": bl, "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    grad_out = grad_out.contiguous()
    out = out.contiguous()
    focused = kernel == 3
    gphi_q = torch.empty(q.shape, dtype=torch.float32 if focused else q.dtype, device=q.device)
    gphi_k = torch.empty(k.shape, dtype=torch.float32 if focused else k.dtype, device=q.device)
    if focused or q.stride() != gphi_q.stride():
        q = q.contiguous()
    if focused or k.stride() != gphi_k.stride():
        k = k.contiguous()
    n_chunks = triton.cdiv(N, chunk)
    ws = torch.empty((B * H, n_chunks, bd, bdv), dtype=torch.float32, device=q.device)
    wsz = torch.empty((B * H, n_chunks, bd), dtype=torch.float32, device=q.device)
    torch.library.wrap_triton(_linear_attention_bwd_q_kernel)[(n_chunks, B * H)](
        q, stats_q, state, z, out, den, grad_out, gphi_q, ws, wsz,
        q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2),
        H, N, D, Dv, feature_eps, p, CHUNK=chunk, **common,
    )
    grad_state = ws.sum(1)
    grad_z = wsz.sum(1)
    dv = torch.empty((B, M, H, Dv), dtype=v.dtype, device=v.device)
    if v.stride() != dv.stride():
        v = v.contiguous()
    torch.library.wrap_triton(_linear_attention_bwd_kv_kernel)[(triton.cdiv(M, bl), B * H)](
        k, v, stats_k, grad_state, grad_z, gphi_k, dv,
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        H, M, D, Dv, feature_eps, p, 1.0 / M, **common,
    )
    if not focused:
        return gphi_q, gphi_k, dv
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    for x, stats, gphi, dx in ((q, stats_q, gphi_q, dq), (k, stats_k, gphi_k, dk)):
        L = x.shape[1]
        torch.library.wrap_triton(_linear_attention_bwd_feat_kernel)[(triton.cdiv(L, cfg["BLOCK_LE"]), B)](
            x, stats, gphi, dx, x.stride(0), x.stride(1), x.stride(2), L, H, D, feature_eps, p,
            BLOCK_L=cfg["BLOCK_LE"], BLOCK_D=bd, P_IS_3=p == 3.0, num_warps=4,
        )
    return dq, dk, dv


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - torch.library signature
    q, k, v, kernel, p, feature_eps, _ = inputs
    out, state, z, den, stats_q, stats_k = output
    ctx.save_for_backward(q, k, v, out, state, z, den, stats_q, stats_k)
    ctx.cfg = (kernel, p, feature_eps)


def _backward(ctx, grad_out, *unused):  # noqa: ANN001, ANN202
    q, k, v, out, state, z, den, stats_q, stats_k = ctx.saved_tensors
    kernel, p, feature_eps = ctx.cfg
    dq, dk, dv = torch.ops.mixerzoo.linear_attention_bwd(
        grad_out, q, k, v, out, state, z, den, stats_q, stats_k, kernel, p, feature_eps
    )
    return dq, dk, dv, None, None, None, None


torch.library.register_autograd("mixerzoo::linear_attention_fwd", _backward, setup_context=_setup_context)


def forward(
    q: Tensor, k: Tensor, v: Tensor, *, kernel: str, focusing_factor: float, feature_eps: float, eps: float
) -> Tensor:
    """Same contract as :func:`mixerzoo.kernels.linear.reference.forward`; CUDA (or the interpreter)."""
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    out, *_ = torch.ops.mixerzoo.linear_attention_fwd(
        q, k, v, KERNEL_CODES[kernel], float(focusing_factor), float(feature_eps), float(eps)
    )
    return out
