"""Feature-map names and the readable feature maps (the oracle's φ; ``fast.py``/``triton.py`` re-derive them fused)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["KERNELS", "FeatureKernel", "feature_map"]

FeatureKernel = Literal["identity", "relu", "elu", "focused"]
KERNELS: tuple[str, ...] = ("identity", "relu", "elu", "focused")


def _focus_parts(x: Tensor, p: float, feature_eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``x`` ``[B, N, H, D]`` (fp32/fp64) → (w, wp, m, n1w, n2w), per-token quantities shaped ``[B, N, 1, 1]``.

    u = relu(x) + feature_eps,  m = max_c u,  w = u / m ∈ (0, 1],  wp = w^p,  n1w = ||w||,  n2w = ||w^p||
    (norms over all H·D channels of a token). f_p is 1-homogeneous, so f_p(u) = m · f_p(w) exactly, and the
    powers never overflow (the largest w is 1).
    """
    u = torch.relu(x) + feature_eps
    m = u.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(u.dtype).tiny).detach()
    w = u / m
    wp = w * w * w if p == 3.0 else w.pow(p)
    tiny = torch.finfo(u.dtype).tiny  # keeps an all-zero token (feature_eps = 0) at φ = 0 instead of 0/0
    n1w = w.square().sum(dim=(-2, -1), keepdim=True).sqrt().clamp_min(tiny)
    n2w = wp.square().sum(dim=(-2, -1), keepdim=True).sqrt().clamp_min(tiny)
    return w, wp, m, n1w, n2w


def feature_map(x: Tensor, kernel: str, p: float, feature_eps: float) -> Tensor:
    """φ(x) for ``x`` ``[B, N, H, D]`` in the compute dtype (no autograd tricks; differentiable as written)."""
    if kernel == "identity":
        return x
    if kernel == "relu":
        return torch.relu(x)
    if kernel == "elu":
        return torch.nn.functional.elu(x) + 1.0
    if kernel == "focused":
        w, wp, m, n1w, n2w = _focus_parts(x, p, feature_eps)
        return wp * (m * n1w / n2w)
    raise ValueError(f"kernel must be one of {KERNELS}, got kernel={kernel!r}")
