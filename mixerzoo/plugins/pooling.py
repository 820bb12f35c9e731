"""PoolFormer's pooling mixer and the identity mixer (parameter-free)."""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["IdentityMixer", "Pooling"]


class Pooling(nn.Module):
    """PoolFormer token mixer: ``AvgPool(k, stride 1, pad k//2, count_include_pad=False)(x) - x``.

    The subtraction is part of the mixer (the block adds its input back), as in the official code.
    Layout ``[B, C, H, W]``; any H, W ≥ 1.
    """

    layout: ClassVar[str] = "nchw"
    kind: ClassVar[str] = "mixer"

    def __init__(self, dim: int, *, num_heads: int | None = None, pool_size: int = 3) -> None:
        super().__init__()
        if pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(f"pool_size={pool_size!r} must be a positive odd int")
        self.pool_size = pool_size

    def forward(self, x: Tensor) -> Tensor:
        k = self.pool_size
        return F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False) - x


class IdentityMixer(nn.Module):
    """Returns its input: MetaFormer's identity-mixer ablation (``metaformer_id_s12``)."""

    layout: ClassVar[str] = "nchw"
    kind: ClassVar[str] = "mixer"

    def __init__(self, dim: int, *, num_heads: int | None = None) -> None:
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return x
