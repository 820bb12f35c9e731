"""Pure-PyTorch oracle for (shifted) window attention: explicit softmax(q k^T * scale + bias) v per window.

Computes in float32 (float64 stays float64); autograd by PyTorch; any device, including ``meta``.
"""

from __future__ import annotations

import torch

from mixerzoo.kernels.window.common import bias_index, merge_windows, region_labels, split_windows

__all__ = ["forward"]


def forward(
    q, k, v, window: tuple[int, int], shift: tuple[int, int], rpb: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Window attention on ``(B, H, W, heads, head_dim)`` tensors (arguments already validated)."""
    _, height, width, _, _ = q.shape
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    rolled = shift != (0, 0)
    if rolled:  # Swin: cyclic shift towards the top-left before partitioning
        q, k, v = (torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2)) for x in (q, k, v))
    qw, kw, vw = (split_windows(x.to(acc), window) for x in (q, k, v))  # (B, nW, heads, L, D)
    logits = torch.matmul(qw * scale, kw.transpose(-1, -2))  # (B, nW, heads, L, L)
    if rpb is not None:
        idx = bias_index(window).to(q.device)
        logits = logits + rpb.to(acc).flatten(1)[:, idx]  # (heads, L, L)
    if rolled:
        lab = split_windows(region_labels(height, width, window, shift).to(q.device)[None, :, :, None, None], window)
        lab = lab[0, :, 0, :, 0]  # (nW, L)
        same = lab[:, :, None] == lab[:, None, :]  # (nW, L, L)
        logits = logits.masked_fill(~same[None, :, None], float("-inf"))
    out = merge_windows(torch.matmul(logits.softmax(-1), vw), window, height, width)
    if rolled:
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    return out.to(q.dtype)
