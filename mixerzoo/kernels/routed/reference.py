"""Pure-PyTorch oracle for :func:`mixerzoo.kernels.routed_attention`.

Readable on purpose: it materialises the gathered keys/values exactly like BiFormer's official code and
lets autograd differentiate it. Accumulates in fp32 (fp64 for fp64 inputs). See ``api.py`` for the layout.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["forward"]


def forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    topk_index: Tensor,
    *,
    scale: float,
    key_padding_mask: Tensor | None = None,
) -> Tensor:
    """Routed attention by explicit gather.

    Args:
        q: ``[B, R, T, H, D]``; k: ``[B, R, T, H, D]``; v: ``[B, R, T, H, Dv]``.
        topk_index: ``[B, G, R, K]`` int, ``G`` is 1 (shared by heads) or ``H``.
        scale: multiplier of ``q @ k^T``.
        key_padding_mask: ``[B or 1, R, T]`` bool, True = padding token (never attended).

    Returns:
        ``[B, R, T, H, Dv]`` in ``q.dtype``.
    """
    B, R, T, H, _ = q.shape
    K = topk_index.shape[-1]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qh = q.to(acc).permute(0, 3, 1, 2, 4)  # [B, H, R, T, D]
    kh = k.to(acc).permute(0, 3, 1, 2, 4)
    vh = v.to(acc).permute(0, 3, 1, 2, 4)
    idx = topk_index.expand(B, H, R, K)  # [B, H, R, K] routed region ids per (head, query region)
    b = torch.arange(B, device=q.device).view(B, 1, 1, 1)
    h = torch.arange(H, device=q.device).view(1, H, 1, 1)
    k_sel = kh[b, h, idx].flatten(3, 4)  # [B, H, R, K*T, D]   (the gather BiFormer materialises)
    v_sel = vh[b, h, idx].flatten(3, 4)  # [B, H, R, K*T, Dv]
    scores = (qh @ k_sel.transpose(-1, -2)) * scale  # [B, H, R, T, K*T]
    row_ok = None
    if key_padding_mask is not None:
        valid = ~key_padding_mask.expand(B, R, T)  # [B, R, T] True = real token
        key_ok = valid[b, idx].flatten(3, 4).unsqueeze(-2)  # [B, H, R, 1, K*T]
        row_ok = key_ok.any(-1, keepdim=True)  # a query whose routed keys are all padding outputs 0
        scores = scores.masked_fill(~key_ok, float("-inf")).masked_fill(~row_ok, 0.0)
    attn = scores.softmax(dim=-1)
    if row_ok is not None:
        attn = attn * row_ok
    out = attn @ v_sel  # [B, H, R, T, Dv]
    return out.permute(0, 2, 3, 1, 4).to(q.dtype)
