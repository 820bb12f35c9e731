"""Fast PyTorch window attention: partition into windows and run one batched
``scaled_dot_product_attention`` (windows x heads as the head axis; the rpb / shift mask as a float
``attn_mask`` broadcast over the batch, omitted when neither is used so SDPA can pick its fused
kernels). Autograd by PyTorch; works on CPU and CUDA."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixerzoo.kernels.window.common import bias_index, merge_windows, region_labels, split_windows

__all__ = ["forward"]


def _mask(height, width, window, shift, rpb, heads, dtype, device) -> torch.Tensor | None:
    n_win = (height // window[0]) * (width // window[1])
    length = window[0] * window[1]
    bias = None
    if rpb is not None:
        bias = rpb.to(dtype).flatten(1)[:, bias_index(window).to(device)]  # (heads, L, L)
        bias = bias[None].expand(n_win, heads, length, length)
    if shift != (0, 0):
        lab = split_windows(region_labels(height, width, window, shift).to(device)[None, :, :, None, None], window)
        lab = lab[0, :, 0, :, 0]
        same = lab[:, :, None] == lab[:, None, :]
        neg = torch.zeros((n_win, 1, length, length), dtype=dtype, device=device).masked_fill(
            ~same[:, None], float("-inf")
        )
        bias = neg.expand(n_win, heads, length, length) if bias is None else bias + neg
    return None if bias is None else bias.reshape(1, n_win * heads, length, length)


def forward(
    q, k, v, window: tuple[int, int], shift: tuple[int, int], rpb: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Window attention on ``(B, H, W, heads, head_dim)`` tensors (arguments already validated)."""
    b, height, width, heads, dim = q.shape
    if shift != (0, 0):
        q, k, v = (torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2)) for x in (q, k, v))
    qw, kw, vw = (split_windows(x, window).reshape(b, -1, window[0] * window[1], dim) for x in (q, k, v))
    mask = _mask(height, width, window, shift, rpb, heads, q.dtype, q.device)
    out = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask, scale=scale)
    out = merge_windows(out.view(b, -1, heads, window[0] * window[1], dim), window, height, width)
    if shift != (0, 0):
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    return out
