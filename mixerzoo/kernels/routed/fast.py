"""Fast PyTorch path for :func:`mixerzoo.kernels.routed_attention` (CPU default).

Works **chunk by chunk over query regions**: for a chunk of ``n`` query regions it copies their routed K/V
regions (one ``index_select`` on a 2-D row view, ``[n, K*T, H, D]``) and runs CPU flash attention on them
(``aten::_scaled_dot_product_flash_attention_for_cpu``: no score matrix, log-sum-exp returned). The chunk
is sized to a few MiB, so the ``K``-times-expanded K/V never exists for all regions at once (that copy is
what costs memory at large ``n_win`` and DRAM traffic / page faults at 224²).

With autograd, :class:`_RoutedAttentionFunction` saves only ``q, k, v, out, lse`` and the routing (flash
style); its backward re-gathers each chunk's routed K/V, runs the flash backward on it and scatters the
K/V gradients back with ``index_add_`` (deterministic on CPU). Peak extra memory is one chunk of gathered
K/V and its gradients, independent of ``K`` and of the number of regions.

Padding keys get an additive ``-inf`` mask; a query whose routed keys are all padding attends to every
routed key (finite maths) and is zeroed afterwards (output and gradients), as the reference defines it.

While a tracer records the call (``torch.compile``, ``torch.export``/ONNX, ``torch.jit.trace``, ``torch.fx``), off
CPU, and when ``Dv != D`` (CPU flash needs one head size) the whole-tensor formulation (one gather + SDPA, autograd by
PyTorch) is used instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mixerzoo.kernels._dispatch import export_contiguous, tracing

__all__ = ["forward"]

_CHUNK_BYTES = 4 << 20  # gathered K+V bytes per chunk of query regions (fits a large L2 / small L3 share)
_flash_fwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _gather_regions(x: Tensor, flat_index: Tensor, K: int) -> Tensor:
    """``x``: ``[N, R, T, C]``, ``flat_index``: ``[N*R*K]`` into ``N*R`` → ``[N*R, K*T, C]``."""
    N, R, T, C = x.shape
    # index_select on a 2-D view: same bytes, 4-7x faster on CPU than on the 3-D view
    return x.reshape(N * R, T * C).index_select(0, flat_index).view(N * R, K * T, C)


def _normalise(q: Tensor, k: Tensor, v: Tensor, topk_index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Fold per-head routing (G = H) into the batch. Returns ``q, k, v`` as ``[N, R, T, Hs, ·]``, the flat
    routing ``[N*R, K]`` into ``N*R`` rows, and ``Hs`` (heads per row)."""
    B, R, T, H, D = q.shape
    Dv = v.shape[-1]
    G, K = topk_index.shape[1], topk_index.shape[-1]
    if G == 1:
        N, Hs, idx = B, H, topk_index[:, 0]
    else:  # per-head routing: move heads into the batch (one copy of q, k, v)
        N, Hs, idx = B * H, 1, topk_index.reshape(B * H, R, K)
        q = q.permute(0, 3, 1, 2, 4).reshape(N, R, T, 1, D)
        k = k.permute(0, 3, 1, 2, 4).reshape(N, R, T, 1, D)
        v = v.permute(0, 3, 1, 2, 4).reshape(N, R, T, 1, Dv)
    base = torch.arange(N, device=q.device).view(N, 1, 1) * R
    return q, k, v, (idx + base).reshape(N * R, K), Hs


def _key_valid(key_padding_mask: Tensor | None, B: int, H: int, G: int) -> Tensor | None:
    """``[N*R, T]`` bool, True = real key token (rows follow :func:`_normalise`)."""
    if key_padding_mask is None:
        return None
    R, T = key_padding_mask.shape[1:]
    valid = ~key_padding_mask.expand(B, R, T)
    if G != 1:
        valid = valid.repeat_interleave(H, dim=0)
    return valid.reshape(-1, T)


def _chunk_mask(valid: Tensor | None, fi: Tensor, n: int, dtype: torch.dtype) -> tuple[Tensor | None, Tensor | None]:
    """Additive ``[n, 1, 1, K*T]`` mask of one chunk and its ``[n, 1, 1, 1]`` "has a real key" rows."""
    if valid is None:
        return None, None
    key_ok = valid.index_select(0, fi).view(n, 1, 1, -1)
    row_ok = key_ok.any(-1, keepdim=True)
    ok = key_ok | ~row_ok  # all-padding rows attend to everything, then are zeroed (no NaN)
    bias = torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill_(~ok, float("-inf"))
    return bias, row_ok


def _chunk_rows(T: int, K: int, width: int, itemsize: int, rows: int) -> int:
    per_row = K * T * width * itemsize  # gathered K and V bytes of one query region
    return max(1, min(rows, _CHUNK_BYTES // max(per_row, 1)))


def _run_forward(
    qn: Tensor, kn: Tensor, vn: Tensor, flat: Tensor, valid: Tensor | None, scale: float, need_lse: bool
) -> tuple[Tensor, Tensor | None]:
    """Chunked forward. ``qn, kn, vn``: ``[N, R, T, Hs, ·]``. Returns out ``[N*R, T, Hs, Dv]`` and lse."""
    N, R, T, Hs, D = qn.shape
    Dv = vn.shape[-1]
    K = flat.shape[1]
    rows = N * R
    qf = qn.reshape(rows, T, Hs, D)
    kf, vf = kn.reshape(rows, T * Hs * D), vn.reshape(rows, T * Hs * Dv)
    out = torch.empty(rows, T, Hs, Dv, dtype=qn.dtype, device=qn.device)
    lse = None
    step = _chunk_rows(T, K, Hs * (D + Dv), qn.element_size(), rows)
    for s in range(0, rows, step):
        e = min(s + step, rows)
        n, fi = e - s, flat[s:e].reshape(-1)
        ks = kf.index_select(0, fi).view(n, K * T, Hs, D).transpose(1, 2)
        vs = vf.index_select(0, fi).view(n, K * T, Hs, Dv).transpose(1, 2)
        bias, row_ok = _chunk_mask(valid, fi, n, qn.dtype)
        o, l_ = _flash_fwd(qf[s:e].transpose(1, 2), ks, vs, attn_mask=bias, scale=scale)
        if row_ok is not None:
            o = o * row_ok
        out[s:e] = o.transpose(1, 2)
        if need_lse:
            if lse is None:  # flash returns fp32 lse for half/fp32 inputs, fp64 for fp64
                lse = torch.empty(rows, Hs, T, dtype=l_.dtype, device=qn.device)
            lse[s:e] = l_
    return out, lse


class _RoutedAttentionFunction(torch.autograd.Function):
    """Chunked routed attention whose backward recomputes the gathered K/V (saves no ``K``-fold copy)."""

    @staticmethod
    def forward(ctx, qn, kn, vn, flat, valid, scale):  # noqa: ANN001, ANN205, PLR0913
        out, lse = _run_forward(qn, kn, vn, flat, valid, scale, need_lse=True)
        ctx.save_for_backward(qn, kn, vn, flat, out, lse, valid)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        qn, kn, vn, flat, out, lse, valid = ctx.saved_tensors
        scale = ctx.scale
        N, R, T, Hs, D = qn.shape
        Dv = vn.shape[-1]
        K = flat.shape[1]
        rows = N * R
        qf = qn.reshape(rows, T, Hs, D)
        kf, vf = kn.reshape(rows, T * Hs * D), vn.reshape(rows, T * Hs * Dv)
        go = grad_out.reshape(rows, T, Hs, Dv)
        dq = torch.empty(rows, T, Hs, D, dtype=qn.dtype, device=qn.device)
        # accumulate K/V gradients in fp32 for half inputs (many query regions add into one key region)
        acc = torch.float32 if qn.dtype in (torch.float16, torch.bfloat16) else qn.dtype
        dk = torch.zeros(rows, T * Hs * D, dtype=acc, device=qn.device)
        dv = torch.zeros(rows, T * Hs * Dv, dtype=acc, device=qn.device)
        step = _chunk_rows(T, K, 2 * Hs * (D + Dv), qn.element_size(), rows)
        for s in range(0, rows, step):
            e = min(s + step, rows)
            n, fi = e - s, flat[s:e].reshape(-1)
            ks = kf.index_select(0, fi).view(n, K * T, Hs, D).transpose(1, 2)
            vs = vf.index_select(0, fi).view(n, K * T, Hs, Dv).transpose(1, 2)
            bias, row_ok = _chunk_mask(valid, fi, n, qn.dtype)
            g = go[s:e].transpose(1, 2)
            if row_ok is not None:
                g = g * row_ok  # zeroed rows: no gradient flows through them
            dq_c, dk_c, dv_c = _flash_bwd(
                g, qf[s:e].transpose(1, 2), ks, vs, out[s:e].transpose(1, 2), lse[s:e], 0.0, False,
                attn_mask=bias, scale=scale,
            )  # fmt: skip
            dq[s:e] = dq_c.transpose(1, 2)
            dk.index_add_(0, fi, dk_c.transpose(1, 2).reshape(n * K, T * Hs * D).to(acc))
            dv.index_add_(0, fi, dv_c.transpose(1, 2).reshape(n * K, T * Hs * Dv).to(acc))
        dk = dk.to(qn.dtype).view(N, R, T, Hs, D)
        dv = dv.to(qn.dtype).view(N, R, T, Hs, Dv)
        return dq.view(N, R, T, Hs, D), dk, dv, None, None, None


def _forward_whole(qn: Tensor, kn: Tensor, vn: Tensor, flat: Tensor, valid: Tensor | None, scale: float) -> Tensor:
    """One gather of all routed K/V + SDPA (autograd by PyTorch); used while tracing and off CPU."""
    N, R, T, Hs, D = qn.shape
    Dv = vn.shape[-1]
    K = flat.shape[1]
    fi = flat.reshape(-1)
    k_sel = _gather_regions(kn.reshape(N, R, T, Hs * D), fi, K).view(N * R, K * T, Hs, D).transpose(1, 2)
    v_sel = _gather_regions(vn.reshape(N, R, T, Hs * Dv), fi, K).view(N * R, K * T, Hs, Dv).transpose(1, 2)
    q_r = qn.reshape(N * R, T, Hs, D).transpose(1, 2)
    mask = row_ok = None
    if valid is not None:
        key_ok = valid.index_select(0, fi).view(N * R, 1, 1, K * T)
        row_ok = key_ok.any(-1, keepdim=True)
        mask = key_ok | ~row_ok
    out = export_contiguous(F.scaled_dot_product_attention(q_r, k_sel, v_sel, attn_mask=mask, scale=scale))
    if row_ok is not None:
        out = out * row_ok
    return out.transpose(1, 2)


def _dense_ok(flat: Tensor, R: int, T: int) -> bool:
    """No-grad shortcut for dense routing (stage 3 of BiFormer-T at 224²: 16 of 49 regions of 4 tokens):
    one masked SDPA over all ``R*T`` keys beats ``R`` tiny per-region attentions when ``K`` is at least a
    quarter of the regions and the map is small. Needs distinct indices (a repeat counts twice)."""
    K = flat.shape[1]
    if 4 * K < R or R * T > 1024 or K == 1:
        return False
    s = flat.sort(dim=1).values
    return bool((s[:, 1:] != s[:, :-1]).all())


def _forward_dense(qn: Tensor, kn: Tensor, vn: Tensor, flat: Tensor, valid: Tensor | None, scale: float) -> Tensor:
    """Masked SDPA over every key of the map; masked keys get exactly zero weight. ``[N*R, T, Hs, Dv]``."""
    N, R, T, Hs, D = qn.shape
    Dv = vn.shape[-1]
    K = flat.shape[1]
    region = flat - torch.arange(N, device=flat.device).view(N, 1, 1).mul(R).expand(N, R, K).reshape(N * R, K)
    allowed = torch.zeros(N, R, R, dtype=torch.bool, device=qn.device)
    allowed.view(N * R, R).scatter_(1, region, True)
    ok = allowed[:, :, None, :, None].expand(N, R, T, R, T).reshape(N, 1, R * T, R * T)
    row_ok = None
    if valid is not None:
        ok = ok & valid.view(N, 1, 1, R * T)
        row_ok = ok.any(-1, keepdim=True)  # [N, 1, R*T, 1]
        ok = ok | ~row_ok
    qd = qn.reshape(N, R * T, Hs, D).transpose(1, 2)
    kd = kn.reshape(N, R * T, Hs, D).transpose(1, 2)
    vd = vn.reshape(N, R * T, Hs, Dv).transpose(1, 2)
    out = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=ok, scale=scale)  # [N, Hs, R*T, Dv]
    if row_ok is not None:
        out = out * row_ok
    return out.transpose(1, 2).reshape(N * R, T, Hs, Dv)


def forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    topk_index: Tensor,
    *,
    scale: float,
    key_padding_mask: Tensor | None = None,
) -> Tensor:
    """Same contract as :func:`mixerzoo.kernels.routed.reference.forward`."""
    B, R, T, H, D = q.shape
    Dv = v.shape[-1]
    G = topk_index.shape[1]
    qn, kn, vn, flat, Hs = _normalise(q, k, v, topk_index)
    valid = _key_valid(key_padding_mask, B, H, G)
    N = qn.shape[0]
    if tracing() or q.device.type != "cpu" or D != Dv:  # CPU flash needs Dv == D
        out = _forward_whole(qn, kn, vn, flat, valid, scale)
    elif torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        out = _RoutedAttentionFunction.apply(qn, kn, vn, flat, valid, scale)
    elif _dense_ok(flat, R, T):
        out = _forward_dense(qn, kn, vn, flat, valid, scale)
    else:
        out = _run_forward(qn, kn, vn, flat, valid, scale, need_lse=False)[0]
    # out: [N*R, T, Hs, Dv]
    if G == 1:
        return out.reshape(B, R, T, H, Dv)
    return out.reshape(B, H, R, T, Dv).permute(0, 2, 3, 1, 4).contiguous()
