"""Pure-PyTorch oracle for 2-D neighborhood attention: gather the K_h x K_w neighbours of every query.

Readable rather than fast: it materialises every query's neighbour keys and values
(``kernel_h * kernel_w`` copies of K and V), computes in float32 (float64 stays float64) and relies on
PyTorch autograd for the backward. Works on any device, including ``meta``.
"""

from __future__ import annotations

import torch

from mixerzoo.kernels.neighborhood.common import axis_neighbors

__all__ = ["forward"]


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    rpb: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Neighborhood attention on ``(B, H, W, heads, head_dim)`` tensors (arguments already validated)."""
    _, height, width, _, _ = q.shape
    (kh, kw), (dh, dw) = kernel_size, dilation
    nbr_y, bias_y = axis_neighbors(height, kh, dh, q.device)  # (H, kh)
    nbr_x, bias_x = axis_neighbors(width, kw, dw, q.device)  # (W, kw)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = q.to(acc), k.to(acc), v.to(acc)

    # index grids of shape (H, W, kh, kw)
    iy = nbr_y[:, None, :, None].expand(height, width, kh, kw)
    ix = nbr_x[None, :, None, :].expand(height, width, kh, kw)
    k_n = kf[:, iy, ix]  # (B, H, W, kh, kw, heads, d)
    v_n = vf[:, iy, ix]
    logits = torch.einsum("byxnd,byxijnd->bynxij", qf * scale, k_n)  # (B, H, heads, W, kh, kw)
    if rpb is not None:
        by = bias_y[:, None, :, None].expand(height, width, kh, kw)
        bx = bias_x[None, :, None, :].expand(height, width, kh, kw)
        bias = rpb.to(acc)[:, by, bx]  # (heads, H, W, kh, kw)
        logits = logits + bias.permute(1, 0, 2, 3, 4)[None]
    attn = logits.flatten(-2).softmax(-1).view_as(logits)
    out = torch.einsum("bynxij,byxijnd->byxnd", attn, v_n)
    return out.to(q.dtype)
