"""Cross-shaped window attention with locally-enhanced positional encoding (CSWin's LePE attention), and
FLatten's focused-linear variant of it.

Papers: "CSWin Transformer: A General Vision Transformer Backbone with Cross-Shaped Windows", Dong et al., CVPR
2022, arXiv:2107.00652 (original code microsoft/CSWin-Transformer, MIT); "FLatten Transformer", Han et al., ICCV
2023, arXiv:2308.00442 (LeapLabTHU/FLatten-Transformer, commit abdb115f, ``models/flatten_cswin.py``, MIT).

Maths, paraphrased (``x``: ``[B, H, W, C]`` tokens, ``h`` heads)::

    q, k, v = qkv(x)                                     one Linear C → 3C
    stripes:  heads 0..h/2-1 on channels [:C/2] attend inside vertical stripes (H × s),
              heads h/2..h-1 on channels [C/2:] inside horizontal stripes (s × W)      s = split_size
    full:     all h heads attend over the whole map (CSWin's last stage, or split_size = the map size)
    per window: softmax(q kᵀ · d^-1/2) v + LePE(v)       LePE: 3×3 depthwise conv on the window's v map
    out = proj(concat(branches))

``kernel="focused_linear"`` (FLatten's "L" blocks; needs ``full=True``) replaces the softmax with focused linear
attention over the map (``mixerzoo.kernels.linear_attention``, as in ``focused_linear``) and adds its rank
restoration conv: ``FLA(q, k + P, v) + DWConv_k×k(v) + LePE(v)``.

Differences from the original: any ``H × W`` (the official code assumes square maps divisible by the stripe
width). Maps are zero-padded to a multiple of ``split_size`` and padded keys are masked out of the softmax;
LePE sees zeros there, exactly as at the image border. Results are unchanged where no padding is needed.
Parameters: ``qkv``, ``proj``, ``lepe.{0,1}`` (one depthwise conv per branch; the official
``attns.{i}.get_v``), and for the focused-linear kernel ``dwc``, ``scale``, ``positional_encoding``.
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
from mixerzoo.plugins.focused_linear import resize_positional_encoding

__all__ = ["CrossShapedAttention"]


def _window_attention(
    q: Tensor, k: Tensor, v: Tensor, lepe: nn.Conv2d, win: tuple[int, int], heads: int, scale: float, drop: float
) -> Tensor:
    """Softmax attention + LePE inside non-overlapping ``win`` windows of ``[B, H, W, c]`` maps (padded and
    masked to a multiple of the window) → ``[B, H, W, c]``."""
    B, H, W, c = q.shape
    wh, ww = min(win[0], H), min(win[1], W)
    ph, pw = (-H) % wh, (-W) % ww
    if ph or pw:
        q, k, v = (F.pad(t, (0, 0, 0, pw, 0, ph)) for t in (q, k, v))
    Hp, Wp = H + ph, W + pw
    nh, nw, n = Hp // wh, Wp // ww, wh * ww

    def windows(t: Tensor) -> Tensor:  # [B, Hp, Wp, c] → [B·nh·nw, wh·ww, c]
        return t.reshape(B, nh, wh, nw, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, c)

    qw, kw, vw = windows(q), windows(k), windows(v)
    pos = lepe(vw.transpose(1, 2).reshape(-1, c, wh, ww)).flatten(2).transpose(1, 2)
    d = c // heads
    qh, kh, vh = (t.reshape(-1, n, heads, d).transpose(1, 2) for t in (qw, kw, vw))
    mask = None
    if ph or pw:  # keys in the padding are invisible (every window keeps at least one real row/column)
        valid = torch.ones(Hp, Wp, dtype=torch.bool, device=q.device)
        valid[H:, :] = False
        valid[:, W:] = False
        mask = valid.reshape(nh, wh, nw, ww).permute(0, 2, 1, 3).reshape(1, nh * nw, 1, 1, n)
        mask = mask.expand(B, -1, -1, -1, -1).reshape(B * nh * nw, 1, 1, n)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, dropout_p=drop, scale=scale)
    out = out.transpose(1, 2).reshape(-1, n, c) + pos
    out = out.reshape(B, nh, nw, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, c)
    return out[:, :H, :W] if (ph or pw) else out


@register_notrace_module  # a leaf for torch.fx (shape-dependent padding / dispatch)
class CrossShapedAttention(nn.Module):
    """CSWin cross-shaped window attention with LePE: ``[B, N, C]`` tokens of an ``hw=(H, W)`` map.

    Args:
        dim: channels C.
        num_heads: heads (default ``dim // 32``); even unless ``full``.
        split_size: stripe width s.
        full: one branch over the whole map with all heads (CSWin's last stage).
        kernel: ``"softmax"`` (CSWin) or ``"focused_linear"`` (FLatten-CSwin "L" blocks; needs ``full``).
        qkv_bias: bias of ``qkv``.
        qk_scale: softmax logit scale (default ``head_dim ** -0.5``).
        lepe_kernel: LePE depthwise conv size (3).
        focusing_factor / kernel_size: focused-linear power p (3) and rank-restoration conv size (5).
        pos_size: the token grid ``(H, W)`` the focused-linear positional term is learned for (``None`` = none).
        attn_drop / proj_drop: dropout rates.
        impl: ``linear_attention`` implementation (focused-linear kernel).
    """

    layout: ClassVar[str] = "nlc"
    kind: ClassVar[str] = "mixer"
    needs_hw: ClassVar[bool] = True

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int | None = None,
        split_size: int = 7,
        full: bool = False,
        kernel: str = "softmax",
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        lepe_kernel: int = 3,
        focusing_factor: float = 3.0,
        kernel_size: int = 5,
        pos_size: int | Sequence[int] | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        impl: Impl = "auto",
    ) -> None:
        super().__init__()
        num_heads = num_heads or max(dim // 32, 1)
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads!r} must divide dim={dim}")
        if not full and (num_heads % 2 or dim % 2):
            raise ValueError(
                f"num_heads={num_heads!r} and dim={dim} must be even for two stripe branches (or full=True)"
            )
        if split_size < 1:
            raise ValueError(f"split_size={split_size!r} must be >= 1")
        if kernel not in ("softmax", "focused_linear"):
            raise ValueError(f"kernel={kernel!r} must be 'softmax' or 'focused_linear'")
        if kernel == "focused_linear" and not full:
            raise ValueError(f"kernel={kernel!r} needs full=True (FLatten applies it to the whole map)")
        if kernel == "focused_linear" and attn_drop:
            raise ValueError(f"attn_drop={attn_drop!r}: linear attention has no attention matrix to drop")
        if lepe_kernel < 1 or lepe_kernel % 2 == 0 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"lepe_kernel={lepe_kernel!r} and kernel_size={kernel_size!r} must be positive odd ints")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.split_size = split_size
        self.full = full
        self.kernel = kernel
        self.qk_scale = qk_scale or self.head_dim**-0.5
        self.attn_drop = attn_drop
        self.focusing_factor = float(focusing_factor)
        self.impl = impl
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        branch = dim if full else dim // 2
        self.lepe = nn.ModuleList(
            nn.Conv2d(branch, branch, lepe_kernel, padding=lepe_kernel // 2, groups=branch)
            for _ in range(1 if full else 2)
        )
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pos_hw: tuple[int, int] | None = None
        if kernel == "focused_linear":
            d = self.head_dim
            self.dwc = nn.Conv2d(d, d, kernel_size, padding=kernel_size // 2, groups=d)
            self.scale = nn.Parameter(torch.zeros(1, 1, dim))
            if pos_size is not None:
                ph, pw = (pos_size, pos_size) if isinstance(pos_size, int) else tuple(pos_size)
                self.pos_hw = (ph, pw)
                self.positional_encoding = nn.Parameter(torch.zeros(1, ph * pw, dim))
            else:
                self.register_parameter("positional_encoding", None)

    def forward(self, x: Tensor, hw: tuple[int, int] | None = None) -> Tensor:
        """``x``: ``[B, N, C]`` tokens of an ``hw = (H, W)`` map (row-major) → ``[B, N, C]``."""
        B, N, C = x.shape
        if hw is None:
            raise TypeError("CrossShapedAttention.forward needs hw=(H, W) (its windows and LePE are 2-D)")
        H, W = hw
        if H * W != N:
            raise ValueError(f"hw={tuple(hw)!r} does not match N={N} tokens")
        q, k, v = self.qkv(x).view(B, H, W, 3, C).unbind(3)
        if self.kernel == "focused_linear":
            out = self._focused_linear(q, k, v)
        else:
            drop = self.attn_drop if self.training else 0.0
            if self.full:
                out = _window_attention(q, k, v, self.lepe[0], (H, W), self.num_heads, self.qk_scale, drop)
            else:
                c, h, s, sc = C // 2, self.num_heads // 2, self.split_size, self.qk_scale
                vertical = _window_attention(q[..., :c], k[..., :c], v[..., :c], self.lepe[0], (H, s), h, sc, drop)
                horizontal = _window_attention(q[..., c:], k[..., c:], v[..., c:], self.lepe[1], (s, W), h, sc, drop)
                out = torch.cat((vertical, horizontal), dim=-1)
        return self.proj_drop(self.proj(out.reshape(B, N, C)))

    def _focused_linear(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """FLatten "L" block over the whole map: ``FLA(q, k + P, v) + DWConv(v) + LePE(v)``, ``[B, H, W, C]``."""
        B, H, W, C = q.shape
        N, nh, d = H * W, self.num_heads, self.head_dim
        inv = 1.0 / F.softplus(self.scale.float().view(C))
        k = k.float()
        if self.positional_encoding is not None:
            pe = resize_positional_encoding(self.positional_encoding, self.pos_hw, (H, W))
            k = k + pe.float().view(1, H, W, C)
        dev = q.device.type
        no_autocast = torch.autocast(dev, enabled=False) if dev in ("cpu", "cuda") else contextlib.nullcontext()
        with no_autocast:  # keep the op's fp32 contractions in fp32
            out = linear_attention(
                (q.float() * inv).reshape(B, N, nh, d), (k * inv).reshape(B, N, nh, d), v.float().reshape(B, N, nh, d),
                kernel="focused", focusing_factor=self.focusing_factor, feature_eps=1e-6, eps=1e-6, impl=self.impl,
            )  # fmt: skip
        out = out.reshape(B, H, W, C).to(v.dtype)
        vmap = v.permute(0, 3, 1, 2)  # [B, C, H, W]
        weight = self.dwc.weight.repeat(nh, 1, 1, 1).to(v.dtype)  # one d-channel conv shared by every head
        bias = self.dwc.bias.repeat(nh).to(v.dtype) if self.dwc.bias is not None else None
        rank = F.conv2d(vmap, weight, bias, padding=self.dwc.padding, groups=C)
        return out + (rank + self.lepe[0](vmap)).permute(0, 2, 3, 1)
