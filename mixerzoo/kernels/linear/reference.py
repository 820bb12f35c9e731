"""Pure-PyTorch oracle for :func:`mixerzoo.kernels.linear_attention` (autograd, fp32 accumulation).

Written as the maths reads (see ``api.py``); fp16/bf16 inputs are upcast to fp32 (fp64 stays fp64).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixerzoo.kernels.linear.common import feature_map

__all__ = ["forward"]


def forward(
    q: Tensor, k: Tensor, v: Tensor, *, kernel: str, focusing_factor: float, feature_eps: float, eps: float
) -> Tensor:
    """q ``[B, N, H, D]``, k ``[B, M, H, D]``, v ``[B, M, H, Dv]`` → ``[B, N, H, Dv]`` in ``q.dtype``."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    phi_q = feature_map(q.to(acc), kernel, focusing_factor, feature_eps)  # [B, N, H, D]
    phi_k = feature_map(k.to(acc), kernel, focusing_factor, feature_eps)  # [B, M, H, D]
    vv = v.to(acc)
    n_keys = k.shape[1]
    kv = torch.einsum("bmhd,bmhe->bhde", phi_k, vv) / n_keys  # S = mean_j φ(k_j) v_jᵀ   [B, H, D, Dv]
    z = phi_k.mean(dim=1)  # mean_j φ(k_j)                                            [B, H, D]
    num = torch.einsum("bnhd,bhde->bnhe", phi_q, kv)
    den = torch.einsum("bnhd,bhd->bnh", phi_q, z) + eps
    return (num / den.unsqueeze(-1)).to(q.dtype)
