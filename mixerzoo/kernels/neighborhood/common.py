"""Index maths of 2-D neighborhood attention shared by every implementation (NATTEN semantics).

Per axis of length ``L`` with odd kernel ``K``, dilation ``d`` and ``r = K // 2``, query ``i`` is in
dilation group ``g = i % d`` at position ``j = i // d`` of a sub-sequence of length
``Lg = ceil((L - g) / d)``. Its window starts at ``start = clamp(j - r, 0, Lg - K)`` (shifted inward at
the borders, never shrunk), its neighbours are ``g + d * (start + t)`` for ``t = 0 .. K-1`` and the
relative-position-bias index of neighbour ``t`` along the axis is ``start + t - j + K - 1``
(in ``[0, 2K-2]``; asymmetric at the borders). The 2-D neighbourhood is the product of the two axes.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["axis_neighbors"]


@functools.lru_cache(maxsize=64)
def _axis_neighbors_cpu(length: int, kernel: int, dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.arange(length)
    g = i % dilation
    j = i // dilation
    lg = (length - g + dilation - 1) // dilation
    start = torch.minimum((j - kernel // 2).clamp_min(0), lg - kernel)
    t = torch.arange(kernel)
    pos = start[:, None] + t[None, :]
    return g[:, None] + dilation * pos, pos - j[:, None] + kernel - 1


def axis_neighbors(
    length: int, kernel: int, dilation: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbour indices and bias indices along one axis.

    Returns:
        ``(nbr, bidx)``, both int64 of shape ``(length, kernel)``: ``nbr[i, t]`` is the absolute index
        of the ``t``-th neighbour of query ``i`` and ``bidx[i, t]`` its index into the bias axis of
        size ``2 * kernel - 1``.
    """
    nbr, bidx = _axis_neighbors_cpu(length, kernel, dilation)
    return nbr.to(device), bidx.to(device)
