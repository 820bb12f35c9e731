"""Fast PyTorch path for :func:`mixerzoo.kernels.routed_attention` (CPU default).

Gathers whole regions with one ``index_select`` per tensor (a contiguous row copy; its backward is a
deterministic ``index_add_`` on CPU, not the expanded ``torch.gather``/``scatter_add`` of the official code)
and runs one fused ``scaled_dot_product_attention`` per query region. On CPU SDPA dispatches to its flash
kernel, which keeps only the log-sum-exp for backward, so the ``[T, K*T]`` score matrix is never stored:
memory is the gathered K/V (``K`` copies) instead of the gathered K/V plus scores and probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["forward"]


def _gather_regions(x: Tensor, flat_index: Tensor, K: int) -> Tensor:
    """``x``: ``[N, R, T, C]``, ``flat_index``: ``[N*R*K]`` into ``N*R`` → ``[N*R, K*T, C]``."""
    N, R, T, C = x.shape
    # index_select on a 2-D view: same bytes, 4-7x faster on CPU than on the 3-D view
    return x.reshape(N * R, T * C).index_select(0, flat_index).view(N * R, K * T, C)


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
    G, K = topk_index.shape[1], topk_index.shape[-1]
    if G == 1:
        # heads share the routing: gather [T, H*D] rows per region, heads stay a batch dim of SDPA
        N, Hs = B, H
        qn, kn, vn = q, k, v
        idx = topk_index[:, 0]  # [B, R, K]
    else:
        # per-head routing: move heads into the batch (one copy of q, k, v)
        N, Hs = B * H, 1
        qn = q.permute(0, 3, 1, 2, 4).reshape(N, R, T, 1, D)
        kn = k.permute(0, 3, 1, 2, 4).reshape(N, R, T, 1, D)
        vn = v.permute(0, 3, 1, 2, 4).reshape(N, R, T, 1, Dv)
        idx = topk_index.reshape(N, R, K)
    base = torch.arange(N, device=q.device).view(N, 1, 1) * R
    flat = (idx + base).reshape(-1)
    k_sel = _gather_regions(kn.reshape(N, R, T, Hs * D), flat, K).view(N * R, K * T, Hs, D).transpose(1, 2)
    v_sel = _gather_regions(vn.reshape(N, R, T, Hs * Dv), flat, K).view(N * R, K * T, Hs, Dv).transpose(1, 2)
    q_r = qn.reshape(N * R, T, Hs, D).transpose(1, 2)  # [N*R, Hs, T, D] (a view)
    mask = row_ok = None
    if key_padding_mask is not None:
        valid = ~key_padding_mask.expand(B, R, T)
        if G != 1:
            valid = valid.repeat_interleave(H, dim=0)
        key_ok = valid.reshape(N * R, T).index_select(0, flat).view(N * R, 1, 1, K * T)
        row_ok = key_ok.any(-1, keepdim=True)  # [N*R, 1, 1, 1]
        mask = key_ok | ~row_ok  # all-padding rows attend to everything, then are zeroed (no NaN)
    out = F.scaled_dot_product_attention(q_r, k_sel, v_sel, attn_mask=mask, scale=scale)  # [N*R, Hs, T, Dv]
    if row_ok is not None:
        out = out * row_ok
    out = out.transpose(1, 2)  # [N*R, T, Hs, Dv]
    if G == 1:
        return out.reshape(B, R, T, H, Dv)
    return out.reshape(B, H, R, T, Dv).permute(0, 2, 3, 1, 4).contiguous()
