"""Focused linear attention (FLatten Transformer), on ``mixerzoo.kernels.linear_attention``.

Paper: "FLatten Transformer: Vision Transformer using Focused Linear Attention", Han et al., ICCV 2023,
arXiv:2308.00442. Original code: https://github.com/LeapLabTHU/FLatten-Transformer (commit abdb115f), MIT.
Key layout matches the official module (``qkv`` or ``q``+``kv``, ``proj``, ``dwc``, ``scale``,
``positional_encoding``, and ``sr``/``norm`` with spatial reduction), so checkpoints load unchanged.

Maths (FLatten-Transformer ``models/flatten_swin.py``, the 2024-05-28 form)::

    k = k + P;  q, k = (ReLU(·) + 1e-6) / softplus(w)      P: per-token (1, n, C); w: (1, 1, C)
    f_p(u) = u^p · ||u|| / ||u^p||   (norms over all C channels, p = focusing_factor)
    out_i  = f(q_i)ᵀ (mean_j f(k_j) v_jᵀ) / (f(q_i)ᵀ mean_j f(k_j) + 1e-6)     per head
    out   += DWConv_k×k(v)   (one depthwise conv with head_dim channels shared by every head)
    out    = proj(out)

The focusing map and both contractions run in ``linear_attention`` (fp32 accumulation, max-normalised
powers), so fp16/bf16 autocast stays finite (official issues #15/#18). The per-token ``P`` ties the
official models to the training resolution; here it is bilinearly resized to other token grids (the
native grid is used as is, bit for bit).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import Tensor, nn

from mixerzoo.kernels import linear_attention
from mixerzoo.kernels._dispatch import Impl

__all__ = ["FocusedLinearAttention", "resize_positional_encoding"]


def resize_positional_encoding(pe: Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Tensor:
    """``(1, h0·w0, C)`` per-token parameters → ``(1, h·w, C)`` by bilinear resampling (identity if equal)."""
    if tuple(src_hw) == tuple(dst_hw):
        return pe
    C = pe.shape[-1]
    grid = pe.reshape(1, src_hw[0], src_hw[1], C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=dst_hw, mode="bilinear", align_corners=False).to(pe.dtype)
    return grid.flatten(2).transpose(1, 2)


@register_notrace_module  # a leaf for torch.fx (shape-dependent padding / dispatch)
class FocusedLinearAttention(nn.Module):
    """FLatten's focused linear attention over a whole ``H×W`` token map: ``[B, N, C]`` with ``hw=(H, W)``.

    Args:
        dim: channels C.
        num_heads: heads (default ``dim // 32``).
        focusing_factor: power p (3).
        kernel_size: depthwise rank-restoration conv size (5).
        qkv_bias: bias of the q/k/v projections.
        qkv_layout: ``"fused"`` (one ``qkv`` Linear, FLatten-Swin/CSwin) or ``"split"`` (``q`` and ``kv``,
            FLatten-PVT).
        sr_ratio: PVT spatial reduction of the keys/values (strided conv + LayerNorm); needs ``"split"``.
        pos_size: the token grid ``(H, W)`` the positional term is learned for (the *unreduced* map, e.g.
            ``(56, 56)``); ``None`` = no positional term.
        proj_drop: dropout on the output.
        impl: ``linear_attention`` implementation.
    """

    layout: ClassVar[str] = "nlc"
    kind: ClassVar[str] = "mixer"
    needs_hw: ClassVar[bool] = True

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int | None = None,
        focusing_factor: float = 3.0,
        kernel_size: int = 5,
        qkv_bias: bool = True,
        qkv_layout: str = "fused",
        sr_ratio: int = 1,
        pos_size: int | Sequence[int] | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        impl: Impl = "auto",
    ) -> None:
        super().__init__()
        num_heads = num_heads or max(dim // 32, 1)
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads!r} must divide dim={dim}")
        if qkv_layout not in ("fused", "split"):
            raise ValueError(f"qkv_layout={qkv_layout!r} must be 'fused' or 'split'")
        if sr_ratio < 1 or (sr_ratio > 1 and qkv_layout != "split"):
            raise ValueError(f"sr_ratio={sr_ratio!r} must be >= 1 (and > 1 needs qkv_layout='split')")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size!r} must be a positive odd int")
        if attn_drop:
            raise ValueError(f"attn_drop={attn_drop!r}: linear attention has no attention matrix to drop")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.focusing_factor = float(focusing_factor)
        self.qkv_layout = qkv_layout
        self.sr_ratio = sr_ratio
        self.impl = impl
        if qkv_layout == "fused":
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        else:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dwc = nn.Conv2d(self.head_dim, self.head_dim, kernel_size, padding=kernel_size // 2, groups=self.head_dim)
        self.scale = nn.Parameter(torch.zeros(1, 1, dim))
        if pos_size is not None:
            ph, pw = (pos_size, pos_size) if isinstance(pos_size, int) else tuple(pos_size)
            self.pos_hw = (ph // sr_ratio, pw // sr_ratio)
            self.positional_encoding = nn.Parameter(torch.zeros(1, self.pos_hw[0] * self.pos_hw[1], dim))
        else:
            self.pos_hw = None
            self.register_parameter("positional_encoding", None)

    def _project(
        self, x: Tensor, hw: tuple[int, int], inv: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
        """q/σ, k/σ, v with ``1/σ`` folded into the projection weights (a C×C op instead of an N×C pass)."""
        B, N, C = x.shape
        if self.qkv_layout == "fused":
            s = torch.cat((inv, inv, torch.ones_like(inv))).to(self.qkv.weight.dtype)
            b = self.qkv.bias * s if self.qkv.bias is not None else None
            q, k, v = F.linear(x, self.qkv.weight * s[:, None], b).view(B, N, 3, C).unbind(2)
            return q, k, v, hw
        s = inv.to(self.q.weight.dtype)
        q = F.linear(x, self.q.weight * s[:, None], self.q.bias * s if self.q.bias is not None else None)
        kv_hw = hw
        if self.sr_ratio > 1:
            x_ = self.sr(x.transpose(1, 2).reshape(B, C, hw[0], hw[1]))
            kv_hw = (x_.shape[2], x_.shape[3])
            x = self.norm(x_.flatten(2).transpose(1, 2))
        s2 = torch.cat((s, torch.ones_like(s)))
        kv = F.linear(x, self.kv.weight * s2[:, None], self.kv.bias * s2 if self.kv.bias is not None else None)
        k, v = kv.view(B, kv.shape[1], 2, C).unbind(2)  # explicit sizes: B may be 0
        return q, k, v, kv_hw

    def forward(self, x: Tensor, hw: tuple[int, int] | None = None) -> Tensor:
        """``x``: ``[B, N, C]`` tokens of an ``hw = (H, W)`` map (row-major) → ``[B, N, C]``."""
        B, N, C = x.shape
        if hw is None:
            raise TypeError("FocusedLinearAttention.forward needs hw=(H, W) (its rank-restoration conv is 2-D)")
        H, W = hw
        if H * W != N:
            raise ValueError(f"hw={tuple(hw)!r} does not match N={N} tokens")
        inv = 1.0 / F.softplus(self.scale.float().view(C))  # σ > 0 and ReLU(a/σ) = ReLU(a)/σ
        q, k, v, kv_hw = self._project(x, (H, W), inv)
        k = k.float()
        if self.positional_encoding is not None:
            pe = resize_positional_encoding(self.positional_encoding, self.pos_hw, kv_hw)
            k = k + pe.float() * inv
        n = k.shape[1]
        nh, d = self.num_heads, self.head_dim
        # φ(q/σ) with u = ReLU(q/σ) + 1e-6: the 1e-6 lands after the division instead of before it (FLatten adds
        # it first); the difference is ≤ 1e-6·|1 - 1/σ| per feature before focusing (api.py, "fused" form)
        dev = x.device.type
        no_autocast = torch.autocast(dev, enabled=False) if dev in ("cpu", "cuda") else contextlib.nullcontext()
        with no_autocast:  # keep the op's fp32 contractions in fp32
            out = linear_attention(
                q.float().view(B, N, nh, d), k.view(B, n, nh, d), v.float().view(B, n, nh, d),
                kernel="focused", focusing_factor=self.focusing_factor, feature_eps=1e-6, eps=1e-6, impl=self.impl,
            )  # fmt: skip
        out = out.reshape(B, N, C).to(v.dtype)
        out = out + self._rank_restoration(v, kv_hw, (H, W))
        return self.proj_drop(self.proj(out))

    def _rank_restoration(self, v: Tensor, kv_hw: tuple[int, int], hw: tuple[int, int]) -> Tensor:
        """Shared depthwise conv on every head's ``v`` map: ``[B, n, C]`` → ``[B, N, C]``."""
        B, n, C = v.shape
        H, W = hw
        nh, d = self.num_heads, self.head_dim
        if kv_hw != hw:  # spatially reduced kv: resample v linearly along the token axis (official)
            vt = v.view(B, n, nh, d).permute(0, 2, 3, 1).reshape(B * nh, d, n)
            vt = F.interpolate(vt, size=H * W, mode="linear")
            v = vt.view(B, nh, d, H * W).permute(0, 3, 1, 2).reshape(B, H * W, C)
        # one depthwise conv over all C = heads·d channels with the d-channel weight tiled per head
        weight = self.dwc.weight.repeat(nh, 1, 1, 1)
        bias = self.dwc.bias.repeat(nh) if self.dwc.bias is not None else None
        vmap = v.reshape(B, H, W, C).permute(0, 3, 1, 2)
        y = F.conv2d(vmap, weight.to(v.dtype), bias.to(v.dtype) if bias is not None else None, padding=self.dwc.padding, groups=C)
        return y.permute(0, 2, 3, 1).reshape(B, H * W, C)
