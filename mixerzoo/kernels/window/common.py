"""Window partitioning, Swin shift mask and relative-position index shared by the window impls."""

from __future__ import annotations

import functools

import torch

from mixerzoo.kernels._dispatch import tracing

__all__ = ["bias_index", "merge_windows", "region_labels", "split_windows"]


def split_windows(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, heads, D) -> (B, nWy*nWx, heads, wh*ww, D)."""
    b, height, width, heads, dim = x.shape
    wh, ww = window
    x = x.view(b, height // wh, wh, width // ww, ww, heads, dim)
    return x.permute(0, 1, 3, 5, 2, 4, 6).reshape(b, (height // wh) * (width // ww), heads, wh * ww, dim)


def merge_windows(x: torch.Tensor, window: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`split_windows`."""
    b, _, heads, _, dim = x.shape
    wh, ww = window
    x = x.view(b, height // wh, width // ww, heads, wh, ww, dim)
    return x.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, height, width, heads, dim)


@functools.lru_cache(maxsize=32)
def _region_labels(height: int, width: int, window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    labels = torch.zeros(height, width, dtype=torch.long)
    cnt = 0
    (wh, ww), (sh, sw) = window, shift
    hs = (
        [slice(0, height)]
        if sh == 0
        else [slice(0, height - wh), slice(height - wh, height - sh), slice(height - sh, height)]
    )
    ws = (
        [slice(0, width)]
        if sw == 0
        else [slice(0, width - ww), slice(width - ww, width - sw), slice(width - sw, width)]
    )
    for a in hs:
        for c in ws:
            labels[a, c] = cnt
            cnt += 1
    return labels


def region_labels(height: int, width: int, window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """Swin's region label of every token of the *rolled* map, (H, W) int64: tokens attend only to
    tokens with the same label (the wrap-around regions created by the cyclic shift are separated)."""
    if tracing():  # a tensor built under a tracer's fake mode must not land in the cache
        return _region_labels.__wrapped__(height, width, tuple(window), tuple(shift))
    return _region_labels(height, width, tuple(window), tuple(shift))


def bias_index(window: tuple[int, int]) -> torch.Tensor:
    """Swin's relative position index, (wh*ww, wh*ww): ``(qy - ky + wh - 1) * (2*ww - 1) + (qx - kx + ww - 1)``."""
    window = (int(window[0]), int(window[1]))
    if tracing():  # as in region_labels: never cache a traced tensor
        return _bias_index.__wrapped__(window)
    return _bias_index(window)


@functools.lru_cache(maxsize=32)
def _bias_index(window: tuple[int, int]) -> torch.Tensor:
    wh, ww = window
    yy, xx = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    y, x = yy.reshape(-1), xx.reshape(-1)
    return (y[:, None] - y[None, :] + wh - 1) * (2 * ww - 1) + (x[:, None] - x[None, :] + ww - 1)
