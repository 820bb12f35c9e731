"""Swin's window attention (W-MSA / SW-MSA) with relative position bias, on ``mixerzoo.kernels``.

Paper: "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", Liu et al., ICCV 2021,
arXiv:2103.14030 (original code microsoft/Swin-Transformer, MIT). Key layout matches timm's Swin
``WindowAttention`` (``qkv``, ``proj``, ``relative_position_bias_table``), so timm and FLatten-Swin weights
load unchanged; ``relative_position_index`` is a non-persistent buffer (recomputable, as in timm).

Any map size: a window at least as large as the map's short side shrinks to it (no shift then, Swin's
rule) and uses the
matching sub-block of the bias table; maps that are not a multiple of the window are zero-padded and the
padded keys are masked (Swin pads without masking).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function, register_notrace_module
from torch import Tensor, nn

from mixerzoo.kernels import window_attention_2d, window_attention_2d_qkv
from mixerzoo.kernels._dispatch import Impl

__all__ = [
    "WindowAttention",
    "padded_window_attention",
    "padded_window_attention_qkv",
    "swin_window_attention",
]

_MASK_LOGIT = -1.0e4  # added to the logits of padded keys (exp underflows to exactly 0 in fp32)


@register_notrace_function  # shape-dependent padding: a leaf for torch.fx
def padded_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: tuple[int, int],
    *,
    shift: tuple[int, int] = (0, 0),
    rpb: Tensor | None = None,
    scale: float,
    impl: Impl = "auto",
) -> Tensor:
    """``window_attention_2d`` for maps that are not a multiple of ``window``: ``(B, H, W, heads, d)`` in/out.

    The map is zero-padded at the bottom/right; padded keys are excluded by one extra q·k channel (1 for
    every query, ``-1e4/scale`` for padded keys, 0 for real ones), which adds ``-1e4`` to their logits only.
    Real keys' logits are unchanged, so on an exact multiple this is the plain op.
    """
    B, H, W, nh, d = q.shape
    ph, pw = (-H) % window[0], (-W) % window[1]
    if ph == 0 and pw == 0:
        return window_attention_2d(q, k, v, window, shift=shift, rpb=rpb, scale=scale, impl=impl)
    pad = (0, 1, 0, 0, 0, pw, 0, ph)  # one extra channel on d, then pad W and H
    qp, kp, vp = (F.pad(t, pad) for t in (q, k, v))
    qp[..., d] = 1.0
    invalid = torch.ones(H + ph, W + pw, dtype=q.dtype, device=q.device)
    invalid[:H, :W] = 0.0
    kp[..., d] = (invalid * (_MASK_LOGIT / scale))[None, :, :, None]
    out = window_attention_2d(qp, kp, vp, window, shift=shift, rpb=rpb, scale=scale, impl=impl)
    return out[:, :H, :W, :, :d]


@register_notrace_function  # shape-dependent dispatch: a leaf for torch.fx
def padded_window_attention_qkv(
    qkv: Tensor,
    window: tuple[int, int],
    *,
    shift: tuple[int, int] = (0, 0),
    rpb: Tensor | None = None,
    scale: float,
    impl: Impl = "auto",
) -> Tensor:
    """:func:`padded_window_attention` on packed ``qkv`` ``(B, H, W, 3, heads, d)``: maps that are a multiple of
    ``window`` run the packed op (``window_attention_2d_qkv``: one gather in and out, no q/k/v stack in
    backward), others the padded one."""
    if qkv.shape[1] % window[0] == 0 and qkv.shape[2] % window[1] == 0:
        return window_attention_2d_qkv(qkv, window, shift=shift, rpb=rpb, scale=scale, impl=impl)
    q, k, v = qkv.unbind(3)
    return padded_window_attention(q, k, v, window, shift=shift, rpb=rpb, scale=scale, impl=impl)


@register_notrace_module  # a leaf for torch.fx (shape-dependent padding / dispatch)
class WindowAttention(nn.Module):
    """Multi-head self-attention inside ``window_size`` windows, optionally shifted (SW-MSA).

    Layout ``[B, H, W, C]``; any H, W ≥ 1.

    Args:
        dim: channels C.
        num_heads: heads (default ``dim // 32``).
        window_size: window side (Swin: 7).
        shift_size: cyclic shift (``window_size // 2`` in every other Swin block); 0 = W-MSA.
        qkv_bias: bias of the fused q|k|v projection.
        rel_pos_bias: learn Swin's relative position bias table.
        qk_scale: logit scale (default ``head_dim ** -0.5``).
        attn_drop: unsupported (must be 0); proj_drop: dropout after the projection.
        impl: kernel implementation (``mixerzoo.kernels.window_attention_2d``).
    """

    layout: ClassVar[str] = "nhwc"
    kind: ClassVar[str] = "mixer"

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int | None = None,
        window_size: int = 7,
        shift_size: int = 0,
        qkv_bias: bool = True,
        rel_pos_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        impl: Impl = "auto",
    ) -> None:
        super().__init__()
        num_heads = num_heads or max(dim // 32, 1)
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads!r} must divide dim={dim}")
        if window_size < 1:
            raise ValueError(f"window_size={window_size!r} must be >= 1")
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size={shift_size!r} must satisfy 0 <= shift_size < window_size={window_size}")
        if attn_drop:
            raise ValueError(f"attn_drop={attn_drop!r}: attention dropout is not supported by the window kernel")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self.window_size = window_size
        self.shift_size = shift_size
        self.impl = impl
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if rel_pos_bias:
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        else:
            self.register_parameter("relative_position_bias_table", None)
        yy, xx = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
        y, x = yy.reshape(-1), xx.reshape(-1)
        index = (y[:, None] - y[None, :] + window_size - 1) * (2 * window_size - 1) + (x[:, None] - x[None, :] + window_size - 1)
        self.register_buffer("relative_position_index", index, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, H, W, C]`` → ``[B, H, W, C]``."""
        B, H, W, C = x.shape
        qkv = self.qkv(x).view(B, H, W, 3, self.num_heads, self.head_dim)
        out = swin_window_attention(
            qkv, self.relative_position_bias_table, self.window_size, self.shift_size, self.scale, self.impl
        )
        return self.proj_drop(self.proj(out.reshape(B, H, W, C)))


@register_notrace_function  # shape-dependent window choice: a leaf for torch.fx
def swin_window_attention(
    qkv: Tensor, table: Tensor | None, window_size: int, shift_size: int, scale: float, impl: Impl
) -> Tensor:
    """Swin's window rule on packed ``qkv`` ``(B, H, W, 3, heads, d)`` → ``(B, H, W, heads, d)``: a window at least
    as large as the short side shrinks to it (no shift) and uses the centre block of the bias table; then
    :func:`padded_window_attention_qkv`."""
    H, W, heads = qkv.shape[1], qkv.shape[2], qkv.shape[4]
    if torch.jit.is_tracing():  # sizes are traced tensors there; the window choice is static per input size
        H, W, heads = int(H), int(W), int(heads)
    ws, shift = window_size, shift_size
    if min(H, W) <= ws:
        ws, shift = min(H, W), 0
    rpb = None
    if table is not None:
        w = window_size
        rpb = table.t().reshape(heads, 2 * w - 1, 2 * w - 1)
        if ws != w:  # centre sub-block: the offsets a smaller window can see
            rpb = rpb[:, w - ws : w + ws - 1, w - ws : w + ws - 1]
        rpb = rpb.to(qkv.dtype)
    return padded_window_attention_qkv(qkv, (ws, ws), shift=(shift, shift), rpb=rpb, scale=scale, impl=impl)
