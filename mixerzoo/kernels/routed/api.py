"""Public API of routed (bi-level routing) token attention, the token-level half of BiFormer's BRA.

Layout (region-major, heads last; "BRTHD")::

    q            [B, R, T, H, D]     R = number of regions, T = tokens per region (row-major inside a region)
    k            [B, R, T, H, D]
    v            [B, R, T, H, Dv]
    topk_index   [B, G, R, K] int    G = 1 (all heads share the routing, as in BiFormer) or G = H;
                 (or [B, R, K])      entry [b, g, r, j] = the j-th region that query region r attends to
    key_padding_mask  [B or 1, R, T] bool, True = padding token, excluded from every softmax (optional)
    output       [B, R, T, H, Dv]    same dtype as q

Maths, for every batch b, head h (g = h if G = H else 0), query region r and query token t::

    keys(b, h, r) = concat_j  k[b, topk_index[b, g, r, j], :, h, :]        (K*T keys, region by region)
    out[b, r, t, h] = softmax_over_keys( scale * q[b, r, t, h] . keys  (padding keys -> -inf) ) @ values

A query whose routed keys are all padding gets a zero output (and zero gradients). Indices are meant to be
distinct per row (``torch.topk`` output); a repeated index counts that region twice, exactly like the gather
formulation. Out-of-range indices raise on CPU; on CUDA they are not checked (no device sync).

How BiFormer's mixer feeds it cheaply: ``x`` (NHWC) → :func:`region_partition` (pads to the region grid and
returns the padding mask; one copy) → one ``Linear`` to q|k|v → ``view(B, R, T, 3, H, D)`` → ``unbind(3)``
(views, no copy) → ``routed_attention`` → :func:`region_merge` (one copy, crops padding). The routing
(region means, scaled affinity, ``topk``) is the mixer's job; pass ``scale`` explicitly (BiFormer uses
``qk_dim ** -0.5`` with the *full* qk dim, not the head dim).

No implementation materialises ``K*T`` scores for all regions at once with autograd. ``torch`` works chunk by
chunk over query regions: it copies one chunk's routed K/V regions (a few MiB) and runs CPU flash attention on
them; its autograd Function saves only q, k, v, the output, the log-sum-exp and the routing, and re-gathers
each chunk in backward (the ``K``-fold K/V copy is never held for all regions, nor kept for backward). Without
autograd and with dense routing (``K >= R/4``, small maps) it runs one masked SDPA over the whole map instead.
``triton`` gathers the routed regions by pointer arithmetic inside the kernel (no copy) and has a
deterministic backward (an inverted routing index instead of atomics).
"""

from __future__ import annotations

from mixerzoo.kernels import _flops
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mixerzoo.kernels import _triton
from mixerzoo.kernels._dispatch import TRACING_REASON, Impl, resolve_impl, tracing

__all__ = ["region_merge", "region_partition", "routed_attention"]

OP = "routed_attention"


def _check(q: Tensor, k: Tensor, v: Tensor, topk_index: Tensor, key_padding_mask: Tensor | None) -> Tensor:
    if q.dim() != 5:
        raise ValueError(f"q must be [B, R, T, H, D], got q.shape={tuple(q.shape)}")
    B, R, T, H, D = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape {tuple(q.shape)}, got k.shape={tuple(k.shape)}")
    if v.dim() != 5 or v.shape[:4] != q.shape[:4]:
        raise ValueError(f"v must be [B, R, T, H, Dv] = {tuple(q.shape[:4])} + (Dv,), got v.shape={tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise TypeError(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device == topk_index.device):
        raise ValueError(f"all tensors must be on one device, got q on {q.device}, topk_index on {topk_index.device}")
    if topk_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"topk_index must be int64 or int32, got topk_index.dtype={topk_index.dtype}")
    if topk_index.dim() == 3:
        topk_index = topk_index.unsqueeze(1)
    ti = topk_index.shape
    if topk_index.dim() != 4 or ti[0] != B or ti[2] != R or ti[1] not in (1, H):
        raise ValueError(
            f"topk_index must be [B, G, R, K] = [{B}, 1 or {H}, {R}, K] (or [B, R, K]), got {tuple(topk_index.shape)}"
        )
    if topk_index.shape[-1] < 1:
        raise ValueError(f"topk_index needs at least one routed region, got K={topk_index.shape[-1]}")
    if topk_index.device.type == "cpu" and not tracing() and topk_index.numel():
        lo, hi = int(topk_index.min()), int(topk_index.max())
        if lo < 0 or hi >= R:
            raise IndexError(f"topk_index values must be in [0, {R}), got min={lo}, max={hi}")
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f"key_padding_mask must be bool (True = padding), got {key_padding_mask.dtype}")
        km = key_padding_mask.shape
        if key_padding_mask.dim() != 3 or km[1:] != (R, T) or km[0] not in (1, B):
            raise ValueError(
                f"key_padding_mask must be [B or 1, R, T] = [{B} or 1, {R}, {T}], got {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask on {key_padding_mask.device}, q on {q.device}")
    return topk_index


def routed_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    topk_index: Tensor,
    *,
    scale: float | None = None,
    key_padding_mask: Tensor | None = None,
    impl: Impl = "auto",
) -> Tensor:
    """Each query region attends to the tokens of its routed top-k regions (BiFormer token attention).

    Args:
        q: ``[B, R, T, H, D]`` queries, region-major (see the module docstring for the full layout).
        k: ``[B, R, T, H, D]`` keys.
        v: ``[B, R, T, H, Dv]`` values.
        topk_index: ``[B, G, R, K]`` (or ``[B, R, K]``) int64/int32 routed region ids, ``G`` in ``{1, H}``.
        scale: multiplier of ``q @ k^T``; default ``D ** -0.5``. BiFormer passes ``qk_dim ** -0.5``.
        key_padding_mask: optional ``[B or 1, R, T]`` bool, True marks padding tokens (never attended).
        impl: ``"auto"`` | ``"reference"`` | ``"torch"`` | ``"triton"``.

    Returns:
        ``[B, R, T, H, Dv]`` in ``q.dtype``.
    """
    topk_index = _check(q, k, v, topk_index, key_padding_mask)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got scale={scale}")
    if _flops.counting():
        return _flops.charge(
            OP, _flops.routed_flops(q.shape, v.shape, topk_index.shape[-1]),
            lambda q_, k_, v_, i_, m_: routed_attention(q_, k_, v_, i_, scale=scale, key_padding_mask=m_, impl=impl),
            (q, k, v, topk_index, key_padding_mask), (*q.shape[:4], v.shape[-1]), q.dtype,
        )  # fmt: skip

    def triton_ok() -> tuple[bool, str]:
        if tracing():
            return False, TRACING_REASON
        ok, reason = _triton.triton_supported_for(q, k, v, topk_index)
        if not ok:
            return ok, reason
        from mixerzoo.kernels.routed import triton as routed_triton  # noqa: PLC0415 - lazy

        return routed_triton.is_supported(q, k, v, topk_index, key_padding_mask)

    name = resolve_impl(
        OP, impl, [("triton", triton_ok), ("torch", lambda: (True, "ok")), ("reference", lambda: (True, "ok"))]
    )
    if name == "triton":
        from mixerzoo.kernels.routed import triton as mod  # noqa: PLC0415
    elif name == "torch":
        from mixerzoo.kernels.routed import fast as mod  # noqa: PLC0415
    else:
        from mixerzoo.kernels.routed import reference as mod  # noqa: PLC0415
    return mod.forward(q, k, v, topk_index, scale=scale, key_padding_mask=key_padding_mask)


def region_partition(x: Tensor, n_win: int | tuple[int, int]) -> tuple[Tensor, Tensor | None]:
    """``[B, H, W, C]`` → ``([B, R, T, C], key_padding_mask [1, R, T] | None)``, R = n_h*n_w regions.

    Pads bottom/right with zeros so H and W become multiples of the region grid (as BiFormer's
    ``auto_pad``), then orders tokens region by region, row-major inside each region. The mask is
    ``None`` when no padding was needed.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be [B, H, W, C], got x.shape={tuple(x.shape)}")
    nh, nw = (n_win, n_win) if isinstance(n_win, int) else n_win
    if nh < 1 or nw < 1:
        raise ValueError(f"n_win must be positive, got n_win={n_win}")
    B, H, W, C = x.shape
    rh, rw = -(-H // nh), -(-W // nw)  # region height / width after padding
    ph, pw = rh * nh - H, rw * nw - W
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    xr = x.view(B, nh, rh, nw, rw, C).transpose(2, 3).reshape(B, nh * nw, rh * rw, C)
    mask = None
    if ph or pw:
        pad = torch.ones(rh * nh, rw * nw, dtype=torch.bool, device=x.device)
        pad[:H, :W] = False
        mask = pad.view(1, nh, rh, nw, rw).transpose(2, 3).reshape(1, nh * nw, rh * rw)
    return xr, mask


def region_merge(x: Tensor, n_win: int | tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`region_partition`: ``[B, R, T, C]`` → ``[B, H, W, C]`` with ``size = (H, W)``."""
    nh, nw = (n_win, n_win) if isinstance(n_win, int) else n_win
    H, W = size
    rh, rw = -(-H // nh), -(-W // nw)
    B, R, T, C = x.shape
    if R != nh * nw or T != rh * rw:
        raise ValueError(f"x of shape {tuple(x.shape)} does not match n_win={n_win} and size={size}")
    out = x.view(B, nh, nw, rh, rw, C).transpose(2, 3).reshape(B, nh * rh, nw * rw, C)
    return out[:, :H, :W]
