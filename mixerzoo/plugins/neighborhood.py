"""Neighborhood attention (NA) and dilated NA mixer, the token mixer of NAT and DiNAT.

Semantics are NATTEN's (0.14–0.17, the versions the NAT/DiNAT checkpoints were trained with): every
query attends to a ``kernel_size × kernel_size`` window of its own dilation group, shifted inward at the
borders (never shrunk), with a learned relative position bias ``rpb`` of shape
``(heads, 2K-1, 2K-1)`` indexed by the relative offset. The attention itself is
:func:`mixerzoo.kernels.neighborhood_attention_2d`.

Key layout matches NATTEN's ``NeighborhoodAttention2D`` (``qkv``, ``rpb``, ``proj``), so NAT/DiNAT
checkpoints load unchanged under a block's ``attn.`` prefix.

Inputs smaller than ``kernel_size * dilation`` along an axis (NATTEN ≥ 0.15 raises on them) are handled
by ``small_input``:

* ``"error"`` (default): raise ``ValueError`` naming the size and the limit;
* ``"pad_mask"``: zero-pad bottom/right up to the limit and exclude the padded tokens from every
  softmax (exactly as if they were absent from the neighbourhood); the output is cropped back;
* ``"pad"``: NATTEN 0.14/0.15 behaviour, for parity with models run on those versions: zero-pad before
  the qkv projection and attend to the padded (bias-only) tokens unmasked.
"""

from __future__ import annotations

from typing import ClassVar, Optional  # noqa: UP035 - Optional names a TorchScript type comment

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import Tensor, nn

from mixerzoo.kernels.neighborhood import neighborhood_attention_2d

__all__ = ["NeighborhoodAttention"]

SMALL_INPUT_MODES = ("error", "pad_mask", "pad")
# logit added to padded keys in "pad_mask" mode: exp(-3e4) is exactly 0 in fp32/bf16/fp64
_MASK_LOGIT = 3.0e4


@register_notrace_module  # a leaf for torch.fx (custom kernel op)
class NeighborhoodAttention(nn.Module):
    """2-D (dilated) neighborhood attention over ``[B, H, W, C]``.

    Args:
        dim: channels C.
        num_heads: heads; default ``dim // head_dim``.
        head_dim: used only when ``num_heads`` is None (32).
        kernel_size: odd window edge K (7 in NAT/DiNAT, 11 in the DiNAT-L 11×11 variants).
        dilation: dilation d (DiNAT alternates 1 and a stage-dependent d).
        qkv_bias: bias of the fused qkv projection.
        qk_scale: multiplier of ``q·k``; default ``head_dim ** -0.5`` (NATTEN's).
        rel_pos_bias: learn the relative position bias ``rpb`` (NAT/DiNAT: True).
        proj_drop: dropout after the output projection.
        small_input: ``"error"`` | ``"pad_mask"`` | ``"pad"`` for H or W < K·d (module docstring).
        impl: kernel implementation, ``"auto"`` | ``"reference"`` | ``"torch"`` | ``"triton"``.
    """

    layout: ClassVar[str] = "nhwc"
    kind: ClassVar[str] = "mixer"

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int | None = None,
        head_dim: int = 32,
        kernel_size: int = 7,
        dilation: int = 1,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        rel_pos_bias: bool = True,
        proj_drop: float = 0.0,
        small_input: str = "error",
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if num_heads is None:
            if dim % head_dim:
                raise ValueError(f"dim={dim} is not divisible by head_dim={head_dim}; pass num_heads")
            num_heads = dim // head_dim
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f"num_heads={num_heads!r} must be a positive divisor of dim={dim}")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size!r} must be an odd positive int")
        if not isinstance(dilation, int) or dilation < 1:
            raise ValueError(f"dilation={dilation!r} must be a positive int")
        if small_input not in SMALL_INPUT_MODES:
            raise ValueError(f"small_input={small_input!r} must be one of {SMALL_INPUT_MODES}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.scale = float(qk_scale) if qk_scale is not None else self.head_dim**-0.5
        self.small_input = small_input
        self.impl = impl
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.empty(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
            nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        else:
            self.register_parameter("rpb", None)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"small_input={self.small_input!r}"
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, H, W, C]`` → ``[B, H, W, C]``."""
        B, H, W, C = x.shape
        limit = self.kernel_size * self.dilation
        ph, pw = max(limit - H, 0), max(limit - W, 0)
        if (ph > 0 or pw > 0) and self.small_input == "error":
            raise ValueError(
                f"neighborhood attention needs H, W >= kernel_size * dilation = {limit}, got H={H}, W={W}; "
                "use a larger input, or small_input='pad_mask' (the NAT/DiNAT default; a model kwarg: "
                "mixerzoo.create_model(name, small_input='pad_mask'), timm's --model-kwargs small_input=pad_mask)"
            )
        if ph > 0 or pw > 0:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
        Hp, Wp = H + ph, W + pw
        qkv = self.qkv(x).view(B, Hp, Wp, 3, self.num_heads, self.head_dim)
        masked = (ph > 0 or pw > 0) and self.small_input == "pad_mask"
        out = _na(qkv, self.kernel_size, self.dilation, self.rpb, self.scale, self.impl, H, W, masked)
        out = out.reshape(B, Hp, Wp, C)[:, :H, :W]
        return self.proj_drop(self.proj(out))


@torch.jit.ignore  # TorchScript calls back into Python for the kernel op
def _na(qkv, kernel_size, dilation, rpb, scale, impl, H, W, masked):  # noqa: ANN001, ANN202, PLR0913
    # type: (Tensor, int, int, Optional[Tensor], float, str, int, int, bool) -> Tensor
    q, k, v = qkv.unbind(3)
    head_dim = q.shape[-1]
    if masked:
        q, k, v = _append_mask_channel(q, k, v, H, W, scale)
    out = neighborhood_attention_2d(q, k, v, kernel_size, dilation, rpb=rpb, scale=scale, impl=impl)
    return out[..., :head_dim] if masked else out


def _append_mask_channel(
    q: Tensor, k: Tensor, v: Tensor, H: int, W: int, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Mask padded keys through one extra head channel: ``q`` gets 1, ``k`` gets ``-M / scale`` on padded
    tokens (0 elsewhere), ``v`` gets 0; every padded key's logit drops by ``M`` (softmax weight exactly 0)."""
    B, Hp, Wp, heads, _ = q.shape
    pad = torch.ones(Hp, Wp, dtype=q.dtype, device=q.device)
    pad[:H, :W] = 0
    k_extra = (pad * (-_MASK_LOGIT / scale)).view(1, Hp, Wp, 1, 1).expand(B, Hp, Wp, heads, 1)
    q = torch.cat([q, q.new_ones(B, Hp, Wp, heads, 1)], dim=-1)
    k = torch.cat([k, k_extra.to(k.dtype)], dim=-1)
    v = torch.cat([v, v.new_zeros(B, Hp, Wp, heads, 1)], dim=-1)
    return q, k, v
