"""Bi-level routing attention (BiFormer) and BiFormer's stage-4 attention with LePE.

Paper: "BiFormer: Vision Transformer with Bi-Level Routing Attention", Zhu et al., CVPR 2023,
arXiv:2303.08810. Original code: https://github.com/rayleizhu/BiFormer (commit 1697bbbe,
``ops/bra_legacy.py`` and ``models/_common.py``), MIT license.

:class:`BiLevelRoutingAttention` (``"bra"``) on ``[B, H, W, C]``:

1. the map is cut into ``n_win × n_win`` regions (zero-padded bottom/right to a multiple of the grid);
2. one Linear gives q | k | v (``2·qk_dim + C`` channels, in that order);
3. routing: region means of q and k, affinity ``(q_r · s) @ k_rᵀ`` with ``s = qk_dim ** -0.5`` (the
   **full** qk dim, as the official code — not the head dim), ``topk`` regions per query region. The
   routing is detached (no gradient), as the official default ``diff_routing=False``;
4. token attention of each region's queries over the tokens of its routed regions
   (:func:`mixerzoo.kernels.routed_attention`, again scaled by ``qk_dim ** -0.5``);
5. plus LCE ("lepe"): a depthwise ``side_dwconv × side_dwconv`` conv of the v map; then ``proj``.

Inputs whose size is not a multiple of ``n_win``: the official ``auto_pad`` zero-pads *before* the qkv
projection and leaves the padded tokens in the region means, the routing and the attention (they become
bias-only keys/values). Here, by default, padded tokens are **masked**: they are excluded from the region
means, regions made only of padding are never routed to, padded keys get no attention weight, and the
LePE conv sees the unpadded map (zero padding at the true border). ``auto_pad_parity=True`` reproduces
the official behaviour exactly instead (for checkpoints evaluated with ``auto_pad=True``). For sizes that
are multiples of ``n_win`` both modes are identical to the official module.

:class:`AttentionLePE` (``"attention_lepe"``): BiFormer's stage-4 block, plain multi-head attention over
all tokens (8 heads by default, the official hard default; no qkv bias), plus a depthwise conv of the
block input (**not** of v) added before ``proj``.

Key layout: ``qkv``, ``lepe``, ``proj``. The official ``attn.qkv.qkv.*`` / ``attn.wo.*`` names of the BRA
blocks are renamed by the BiFormer family's checkpoint filter.
"""

from __future__ import annotations

from typing import ClassVar, Optional, Tuple  # noqa: UP035 - Optional/Tuple name TorchScript type comments

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import Tensor, nn

from mixerzoo.kernels.routed import region_merge, region_partition, routed_attention

__all__ = ["AttentionLePE", "BiLevelRoutingAttention"]


def _heads(dim: int, num_heads: int | None, head_dim: int) -> int:
    if num_heads is None:
        if dim % head_dim:
            raise ValueError(f"dim={dim} is not divisible by head_dim={head_dim}; pass num_heads")
        num_heads = dim // head_dim
    if num_heads <= 0 or dim % num_heads:
        raise ValueError(f"num_heads={num_heads!r} must be a positive divisor of dim={dim}")
    return num_heads


def _lepe_conv(dim: int, kernel: int) -> nn.Conv2d | None:
    if kernel < 0:
        raise ValueError(f"side_dwconv={kernel!r} must be >= 0 (0 disables the LePE conv)")
    if kernel and kernel % 2 == 0:
        raise ValueError(f"side_dwconv={kernel!r} must be odd")
    return nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim) if kernel else None


@register_notrace_module  # a leaf for torch.fx (data-dependent routing)
class BiLevelRoutingAttention(nn.Module):
    """Bi-level routing attention over ``[B, H, W, C]``, any H, W ≥ 1 (module docstring).

    Args:
        dim: channels C.
        num_heads: heads; default ``dim // head_dim``.
        head_dim: used only when ``num_heads`` is None (BiFormer: 32).
        n_win: regions per side (BiFormer: 7 for 224² classification, 16 for COCO, 8 for ADE20K).
        topk: regions each query region attends to (BiFormer stages 1–3: 1, 4, 16); clamped to the
            number of regions, so a large value means "all regions".
        qk_dim: channels of q and k (default ``dim``).
        qk_scale: scale of routing and attention logits; default ``qk_dim ** -0.5`` (official).
        qkv_bias: bias of the qkv projection.
        side_dwconv: LePE depthwise kernel (5; 0 disables it).
        auto_pad_parity: reproduce the official unmasked ``auto_pad`` for non-multiple sizes.
        proj_drop: dropout after ``proj``.
        impl: kernel implementation of :func:`mixerzoo.kernels.routed_attention`.
    """

    layout: ClassVar[str] = "nhwc"
    kind: ClassVar[str] = "mixer"

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int | None = None,
        head_dim: int = 32,
        n_win: int = 7,
        topk: int = 4,
        qk_dim: int | None = None,
        qk_scale: float | None = None,
        qkv_bias: bool = True,
        side_dwconv: int = 5,
        auto_pad_parity: bool = False,
        proj_drop: float = 0.0,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        qk_dim = dim if qk_dim is None else qk_dim
        self.num_heads = _heads(dim, num_heads, head_dim)
        if qk_dim <= 0 or qk_dim % self.num_heads:
            raise ValueError(f"qk_dim={qk_dim!r} must be a positive multiple of num_heads={self.num_heads}")
        if not isinstance(n_win, int) or n_win < 1:
            raise ValueError(f"n_win={n_win!r} must be a positive int")
        if not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk={topk!r} must be a positive int (full attention: the 'attention_lepe' mixer)")
        self.dim, self.qk_dim = dim, qk_dim
        self.n_win, self.topk = n_win, topk
        self.scale = float(qk_scale) if qk_scale is not None else qk_dim**-0.5
        self.auto_pad_parity = auto_pad_parity
        self.impl = impl
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, bias=qkv_bias)
        self.lepe = _lepe_conv(dim, side_dwconv)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        parity = self.auto_pad_parity
        return f"num_heads={self.num_heads}, n_win={self.n_win}, topk={self.topk}, auto_pad_parity={parity}"

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, H, W, C]`` → ``[B, H, W, C]``."""
        H, W = x.shape[1], x.shape[2]
        xr, pad = _partition(x, self.n_win)  # [B, R, T, C], pad [1, R, T] (True = padding) or None
        out, v_map = _bra_core(
            self.qkv(xr), pad, self.n_win, self.num_heads, self.qk_dim, self.topk, self.scale,
            self.auto_pad_parity, self.impl, H, W,
        )  # fmt: skip
        if self.lepe is not None:  # official parity mode: conv over the padded v map, then crop
            lepe = self.lepe(v_map.permute(0, 3, 1, 2))[:, :, :H, :W]
            out = out + lepe.permute(0, 2, 3, 1)
        return self.proj_drop(self.proj(out))


@torch.jit.ignore  # TorchScript calls back into Python for the kernel op
def _partition(x, n_win):  # noqa: ANN001, ANN202 - type comment: TorchScript cannot read postponed annotations
    # type: (Tensor, int) -> Tuple[Tensor, Optional[Tensor]]
    return region_partition(x, n_win)


@torch.jit.ignore
def _bra_core(qkv, pad, n_win, num_heads, qk_dim, topk, scale, parity, impl, H, W):  # noqa: ANN001, ANN202, PLR0913
    # type: (Tensor, Optional[Tensor], int, int, int, int, float, bool, str, int, int) -> Tuple[Tensor, Tensor]
    """Routing + routed token attention. ``qkv``: ``[B, R, T, 2·Cq + C]`` → (out ``[B, H, W, C]``, v map).

    The v map (for LePE) is ``[B, H, W, C]``, or the padded ``[B, Hp, Wp, C]`` in parity mode.
    """
    B, R, T, _ = qkv.shape
    m, Cq = num_heads, qk_dim
    C = qkv.shape[-1] - 2 * Cq
    q, k, v = qkv.split((Cq, Cq, C), dim=-1)
    mask = None if parity else pad
    idx = _route(q, k, mask, scale, topk)  # [B, R, K]
    out = routed_attention(
        q.view(B, R, T, m, Cq // m),
        k.view(B, R, T, m, Cq // m),
        v.view(B, R, T, m, C // m),
        idx,
        scale=scale,
        key_padding_mask=mask,
        impl=impl,
    ).reshape(B, R, T, C)
    if parity:
        v_map = region_merge(v, n_win, (-(-H // n_win) * n_win, -(-W // n_win) * n_win))
    else:
        v_map = region_merge(v, n_win, (H, W))
    return region_merge(out, n_win, (H, W)), v_map


@torch.no_grad()
def _route(q: Tensor, k: Tensor, pad: Tensor | None, scale: float, topk: int) -> Tensor:
    """Top-k region indices ``[B, R, K]`` from region means of q and k (detached, as the official default)."""
    R = q.shape[1]
    if pad is None:
        q_r, k_r = q.mean(2), k.mean(2)
        allowed = None
    else:
        valid = (~pad).to(q.dtype).unsqueeze(-1)  # [1, R, T, 1]
        count = valid.sum(2).clamp_min(1.0)  # [1, R, 1]
        q_r, k_r = (q * valid).sum(2) / count, (k * valid).sum(2) / count
        allowed = (~pad).any(-1)  # [1, R]: regions with at least one real token
    logits = (q_r * scale) @ k_r.transpose(-1, -2)  # [B, R, R]
    if allowed is not None:  # regions made only of padding are never routed to
        logits = logits.masked_fill(~allowed.unsqueeze(1), float("-inf"))
    return torch.topk(logits, k=min(topk, R), dim=-1).indices


@register_notrace_module
class AttentionLePE(nn.Module):
    """Global multi-head attention plus a depthwise conv of the input (BiFormer stage 4), ``[B, H, W, C]``.

    Args:
        dim: channels C.
        num_heads: heads (official default 8).
        qkv_bias: bias of the qkv projection (official: False).
        qk_scale: logit scale; default ``(dim / num_heads) ** -0.5``.
        side_dwconv: depthwise kernel of the LePE conv on the input (5; 0 disables it).
        attn_drop / proj_drop: dropout rates.
    """

    layout: ClassVar[str] = "nhwc"
    kind: ClassVar[str] = "mixer"

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int | None = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        side_dwconv: int = 5,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = _heads(dim, 8 if num_heads is None else num_heads, 32)
        self.head_dim = dim // self.num_heads
        self.scale = float(qk_scale) if qk_scale is not None else self.head_dim**-0.5
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.lepe = _lepe_conv(dim, side_dwconv)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, H, W, C]`` → ``[B, H, W, C]``."""
        B, H, W, C = x.shape
        qkv = self.qkv(x.reshape(B, H * W, C)).view(B, H * W, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        out = out.transpose(1, 2).reshape(B, H, W, C)
        if self.lepe is not None:
            out = out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj_drop(self.proj(out))
