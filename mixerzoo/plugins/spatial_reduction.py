"""Spatial-reduction attention (PVT's SRA): queries from every token, keys/values from a strided-conv
reduced map.

Paper: "Pyramid Vision Transformer", Wang et al., ICCV 2021, arXiv:2102.12122 (original code
whai362/PVT, Apache-2.0). Key layout matches PVT / timm's ``pvt_v2`` ``Attention`` (``q``, ``kv``, ``proj``,
``sr``, ``norm``), so their weights load unchanged.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import Tensor, nn

__all__ = ["SpatialReductionAttention"]


@register_notrace_module  # a leaf for torch.fx (shape-dependent padding / dispatch)
class SpatialReductionAttention(nn.Module):
    """Multi-head attention of every token to a ``sr_ratio``-reduced copy of the map: ``[B, N, C]``, ``hw``.

    Args:
        dim: channels C.
        num_heads: heads (default ``dim // 32``).
        sr_ratio: reduction (conv ``sr_ratio×sr_ratio``, stride ``sr_ratio``, then LayerNorm); 1 = global MHSA.
        qkv_bias: bias of ``q`` and ``kv``.
        qk_scale: logit scale (default ``head_dim ** -0.5``).
        norm_eps: eps of the reduction LayerNorm.
        attn_drop / proj_drop: dropout rates.
    """

    layout: ClassVar[str] = "nlc"
    kind: ClassVar[str] = "mixer"
    needs_hw: ClassVar[bool] = True

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int | None = None,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        norm_eps: float = 1e-5,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        num_heads = num_heads or max(dim // 32, 1)
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads!r} must divide dim={dim}")
        if sr_ratio < 1:
            raise ValueError(f"sr_ratio={sr_ratio!r} must be >= 1")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self.sr_ratio = sr_ratio
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, hw: tuple[int, int] | None = None) -> Tensor:
        """``x``: ``[B, N, C]`` tokens of an ``hw = (H, W)`` map → ``[B, N, C]``."""
        B, N, C = x.shape
        q = self.q(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            if hw is None or hw[0] * hw[1] != N:
                raise ValueError(f"hw={hw!r} must be (H, W) with H*W = N = {N} when sr_ratio > 1")
            x = self.sr(x.transpose(1, 2).reshape(B, C, hw[0], hw[1])).flatten(2).transpose(1, 2)
            x = self.norm(x)
        k, v = self.kv(x).view(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))
