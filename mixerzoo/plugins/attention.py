"""Multi-head self-attention mixer on ``F.scaled_dot_product_attention``.

Key layout matches timm's ViT ``Attention`` (``qkv`` fused q|k|v, ``proj``), so timm ViT weights load
unchanged; ``q_norm``/``k_norm`` exist only when ``qk_norm=True``.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Attention"]


class Attention(nn.Module):
    """Global multi-head self-attention over tokens ``[B, N, C]``.

    Args:
        dim: channels C.
        num_heads: heads; default ``dim // head_dim`` (rounded down to a divisor of ``dim``, at least 1).
        head_dim: used only when ``num_heads`` is None (MetaFormer convention, 32).
        qkv_bias: bias of the fused qkv projection.
        qk_norm: LayerNorm on q and k per head.
        attn_drop / proj_drop: dropout rates.
        proj_bias: bias of the output projection.
    """

    layout: ClassVar[str] = "nlc"
    kind: ClassVar[str] = "mixer"

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int | None = None,
        head_dim: int = 32,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        proj_bias: bool = True,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if num_heads is None:  # MetaFormer convention: heads of ``head_dim`` channels (at least one head)
            num_heads = max(1, dim // head_dim)
            while dim % num_heads:
                num_heads -= 1
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f"num_heads={num_heads!r} must be a positive divisor of dim={dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, N, C]`` → ``[B, N, C]``."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))
