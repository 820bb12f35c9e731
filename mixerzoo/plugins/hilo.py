"""HiLo attention (LITv2): Hi-Fi local windows + Lo-Fi attention to average-pooled keys/values.

Paper: "Fast Vision Transformers with HiLo Attention", Pan et al., NeurIPS 2022, arXiv:2205.13213.
Original code: https://github.com/ziplab/LITv2 (commit 7501c866), Apache-2.0. Key layout matches the
official module (``h_qkv``, ``h_proj``, ``l_q``, ``l_kv``, ``l_proj``), so checkpoints load unchanged.

Maths (ziplab/LITv2 ``classification/models/attentions.py``): heads split ``lo = floor(n·alpha)``,
``hi = n - lo`` (``window_size == 1``:
all heads Lo-Fi, plain MHSA). Hi-Fi: self-attention inside non-overlapping ``s×s`` windows
(``mixerzoo.kernels.window_attention_2d_qkv`` on the packed projection). Lo-Fi: every token queries
keys/values projected from the ``s×s`` average-pooled block *input* (SDPA). Output ``concat([hi, lo])`` —
Hi-Fi channels first, no joint projection.

Any map size (the official classification code needs multiples of ``s``): the map is virtually padded to a
multiple of ``s``; padded tokens are masked out of Hi-Fi windows and left out of the Lo-Fi pooling averages
(the official det/seg code pads with zeros and does not mask). Bit-identical to the official maths on
multiples of ``s``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import Tensor, nn

from mixerzoo.kernels._dispatch import Impl
from mixerzoo.plugins.window import padded_window_attention_qkv

__all__ = ["HiLo"]


@register_notrace_module  # a leaf for torch.fx (shape-dependent padding / dispatch)
class HiLo(nn.Module):
    """HiLo attention on ``[B, H, W, C]`` (any H, W ≥ 1).

    Args:
        dim: channels C.
        num_heads: total heads n (default ``dim // 32``); head dim ``C / n`` in both branches.
        window_size: Hi-Fi window / Lo-Fi pooling size ``s`` (1 = plain multi-head self-attention).
        alpha: share of heads given to Lo-Fi (``floor(n·alpha)``).
        qkv_bias: bias of ``h_qkv``, ``l_q``, ``l_kv`` (the projections always have one).
        qk_scale: logit scale (default ``head_dim ** -0.5``).
        attn_drop: must be 0 (not supported by the window kernel); proj_drop: dropout on the output.
        impl: kernel implementation for the Hi-Fi windows.
    """

    layout: ClassVar[str] = "nhwc"
    kind: ClassVar[str] = "mixer"

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int | None = None,
        window_size: int = 2,
        alpha: float = 0.9,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        impl: Impl = "auto",
    ) -> None:
        super().__init__()
        num_heads = num_heads or max(dim // 32, 1)
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads!r} must divide dim={dim}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha!r} must be in [0, 1]")
        if window_size < 1:
            raise ValueError(f"window_size={window_size!r} must be >= 1")
        if attn_drop:
            raise ValueError(f"attn_drop={attn_drop!r}: attention dropout is not supported")
        head_dim = dim // num_heads
        self.head_dim = head_dim
        self.ws = window_size
        self.l_heads = num_heads if window_size == 1 else int(num_heads * alpha)
        self.h_heads = num_heads - self.l_heads
        self.l_dim, self.h_dim = self.l_heads * head_dim, self.h_heads * head_dim
        self.scale = qk_scale or head_dim**-0.5
        self.impl = impl
        if self.l_heads > 0:
            self.l_q = nn.Linear(dim, self.l_dim, bias=qkv_bias)
            self.l_kv = nn.Linear(dim, self.l_dim * 2, bias=qkv_bias)
            self.l_proj = nn.Linear(self.l_dim, self.l_dim)
        if self.h_heads > 0:
            self.h_qkv = nn.Linear(dim, self.h_dim * 3, bias=qkv_bias)
            self.h_proj = nn.Linear(self.h_dim, self.h_dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def hifi(self, x: Tensor) -> Tensor:
        B, H, W, _ = x.shape
        qkv = self.h_qkv(x).view(B, H, W, 3, self.h_heads, self.head_dim)
        out = padded_window_attention_qkv(qkv, (self.ws, self.ws), scale=self.scale, impl=self.impl)
        return self.h_proj(out.reshape(B, H, W, self.h_dim))

    def lofi(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        q = self.l_q(x).view(B, H * W, self.l_heads, self.head_dim).transpose(1, 2)
        if self.ws > 1:
            # ceil_mode without padding averages partial border windows over their real tokens only
            pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), self.ws, self.ws, ceil_mode=True)
            kv_in = pooled.flatten(2).transpose(1, 2)
        else:
            kv_in = x.reshape(B, H * W, C)
        kv = self.l_kv(kv_in).view(B, kv_in.shape[1], 2, self.l_heads, self.head_dim)  # explicit sizes: B may be 0
        kv = kv.permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.l_proj(out.transpose(1, 2).reshape(B, H, W, self.l_dim))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, H, W, C]`` → ``[B, H, W, C]`` (Hi-Fi channels first)."""
        if self.h_heads == 0:
            return self.proj_drop(self.lofi(x))
        if self.l_heads == 0:
            return self.proj_drop(self.hifi(x))
        return self.proj_drop(torch.cat((self.hifi(x), self.lofi(x)), dim=-1))
