"""CNN attention gates: CBAM and triplet attention (``kind = "gate"``, layout ``[B, C, H, W]``).

A gate multiplies its input by an attention map inside a residual branch (``out = gate(branch(x))``);
see :mod:`mixerzoo.plugins._contract`. Both gates follow the official code numerically:

* CBAM — Woo et al., ECCV 2018, arXiv:1807.06521; https://github.com/Jongchan/attention-module
  (commit 459efad0, MIT). Channel gate then spatial gate.
* Triplet attention — Misra et al., WACV 2021, arXiv:2010.03045;
  https://github.com/LandskapeAI/triplet-attention (commit f07524e4, MIT). Three Z-pool gates.

Shared traps (both official repositories): the Z-pool concatenates ``[max, mean]`` — max first, although
the CBAM paper writes ``[avg; max]`` — and the gate BatchNorm has eps 1e-5, momentum 0.01. The official
ResNets initialise the BN weight of every gate whose key contains ``SpatialGate`` to 0 (so the spatial
map starts at sigmoid(0) = 0.5) and every other BN weight to 1; these classes do the same
(``CBAM.spatial``, ``TripletAttention.hw``).

Triplet attention here never builds the full-size permuted copies of the official code: each Z-pool
plane is reduced directly from ``x`` along the right dim (only the small pooled plane is transposed), the
three small ``(B, 1, ·, ·)`` maps are viewed back onto ``x``'s dims, and the output is
``x·g_cw/3 + x·g_hc/3 + x·g_hw/3`` accumulated in one new tensor (the official mean of three gated
tensors, up to float rounding).

Speed notes (CPU, eager): both gates accept any memory format and return their input's; reductions of a
channels_last input run on its ``[B, H, W, C]`` view, so a channels_last network (``model.to(memory_format=...)``)
gets one-pass reductions over H and W, which PyTorch's NCHW max-reduction over a small inner dim lacks.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

__all__ = ["CBAM", "ChannelGate", "TripletAttention", "ZPoolGate"]


def _check_kernel_size(kernel_size: int) -> int:
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size={kernel_size!r} must be a positive odd int")
    return kernel_size


class ZPoolGate(nn.Module):
    """``sigmoid(BN(Conv_k×k(z)))`` for a Z-pooled plane ``z = [max, mean]``: ``(B, 2, P, Q)`` → ``(B, 1, P, Q)``.

    Conv 2→1, padding k//2, no bias; BN eps 1e-5, momentum 0.01, affine; no activation before the
    sigmoid. Keys ``conv.weight`` and ``bn.*``. ``zero_bn=True`` starts the BN weight at 0.
    """

    def __init__(self, kernel_size: int = 7, *, zero_bn: bool = False) -> None:
        super().__init__()
        k = _check_kernel_size(kernel_size)
        self.conv = nn.Conv2d(2, 1, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)
        self.zero_bn = zero_bn
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # as the official ResNet constructors: conv kaiming-normal fan_out, BN weight 0 ("SpatialGate") or 1
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out")
        nn.init.constant_(self.bn.weight, 0.0 if self.zero_bn else 1.0)
        nn.init.zeros_(self.bn.bias)

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.bn(self.conv(z)))


def _channels_last(x: Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


@torch.fx.wrap  # layout-dependent code stays one leaf call under torch.fx tracing
def _zpool(x: Tensor, over: str) -> Tensor:
    """Z-pool ``[max, mean]`` (max first, as the official code) of ``x [B, C, H, W]`` over ``over`` ∈ h, w, c.

    Returns the official plane on a new dim 1: over "h" → ``(B, 2, C, W)``, "w" → ``(B, 2, H, C)``,
    "c" → ``(B, 2, H, W)``. Each reduction reads ``x`` once in its own memory format: NCHW tensors reduce
    their NCHW dims, channels_last tensors their ``[B, H, W, C]`` view (reducing H or W of a channels_last
    tensor through its NCHW dims is ~4× slower in PyTorch: the output gets a strided layout).
    """
    if _channels_last(x):
        t, dim = x.permute(0, 2, 3, 1), {"h": 1, "w": 2, "c": 3}[over]
        z = torch.stack([t.amax(dim), t.mean(dim)], 1)  # h: (B, 2, W, C)  w: (B, 2, H, C)  c: (B, 2, H, W)
        return z.transpose(2, 3) if over == "h" else z
    dim = {"h": 2, "w": 3, "c": 1}[over]
    z = torch.stack([x.amax(dim), x.mean(dim)], 1)  # h: (B, 2, C, W)  w: (B, 2, C, H)  c: (B, 2, H, W)
    return z.transpose(2, 3) if over == "w" else z


@torch.fx.wrap
def _cw_map(g: Tensor, x: Tensor) -> Tensor:
    """The cw map ``(B, 1, C, W)`` as ``(B, C, 1, W)``, laid out like ``x`` (a small copy for channels_last)."""
    if _channels_last(x):
        return g.permute(0, 3, 1, 2).contiguous().permute(0, 3, 2, 1)  # C innermost, as in x
    return g.transpose(1, 2)


@torch.fx.wrap  # decided at run time, also in a traced graph
def _mul_own(own: Tensor, s: Tensor) -> Tensor:
    """``own * s``, in place when autograd is off (``own`` is a temporary of ours that amax's backward keeps)."""
    return own * s if torch.is_grad_enabled() else own.mul_(s)


class ChannelGate(nn.Module):
    """CBAM's channel gate: ``sigmoid(MLP(avgpool x) + MLP(maxpool x))`` → ``(B, C, 1, 1)``.

    The MLP is shared: Linear(C → C/r, bias) → ReLU → Linear(C/r → C, bias); keys ``fc1``, ``fc2``.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # official: Linear weights keep PyTorch's default init, every bias is zeroed
        for fc in (self.fc1, self.fc2):
            fc.reset_parameters()
            nn.init.zeros_(fc.bias)

    def mlp(self, v: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(v)))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3)))
        return torch.sigmoid(logits)[:, :, None, None]


class CBAM(nn.Module):
    """Convolutional Block Attention Module on ``[B, C, H, W]`` (any H, W ≥ 1).

    ``x1 = x · ChannelGate(x)``; ``out = x1 · sigmoid(BN(Conv_k×k([max_c x1, mean_c x1])))``.

    Args:
        dim: channels C.
        num_heads: accepted for the mixer contract and ignored.
        reduction: channel-MLP reduction ratio r (hidden width ``C // r``, must be ≥ 1).
        kernel_size: spatial-gate conv size (odd).
        no_spatial: channel gate only (the official ``no_spatial`` flag).
    """

    layout: ClassVar[str] = "nchw"
    kind: ClassVar[str] = "gate"

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int | None = None,
        reduction: int = 16,
        kernel_size: int = 7,
        no_spatial: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"reduction={reduction!r} must be a positive int")
        hidden = dim // reduction
        if hidden < 1:
            raise ValueError(
                f"reduction={reduction!r} leaves no hidden channel for dim={dim!r} (need dim >= reduction)"
            )
        self.dim = dim
        self.channel = ChannelGate(dim, hidden)
        self.spatial = None if no_spatial else ZPoolGate(kernel_size, zero_bn=True)

    def forward(self, x: Tensor) -> Tensor:
        x = x * self.channel(x)  # a new tensor in x's memory format
        if self.spatial is None:
            return x
        s = self.spatial(_zpool(x, "c"))  # pool over C → (B, 1, H, W)
        return _mul_own(x, s)


class TripletAttention(nn.Module):
    """Triplet attention on ``[B, C, H, W]`` (any H, W ≥ 1; no parameters depend on C).

    Three Z-pool gates, each ``sigmoid(BN(Conv_k×k([max, mean])))`` on one plane of ``x``:

    * ``cw``: pools over H, conv on the C×W plane (official ``ChannelGateH``);
    * ``hc``: pools over W, conv on the H×C plane (official ``ChannelGateW``);
    * ``hw``: pools over C, conv on the H×W plane (official ``SpatialGate``).

    ``out = (x·g_cw + x·g_hc + x·g_hw) / 3`` (``no_spatial=True``: the first two, ``/ 2``), each map
    broadcast over the pooled dim. No full-size permuted copy of ``x`` is made: one new full-size tensor
    (the output, in ``x``'s memory format) and three passes over it.

    Args:
        dim: channels C (unused: the gate has 3 × (k² · 2 + BN) parameters whatever C is).
        num_heads: accepted for the mixer contract and ignored.
        kernel_size: conv size of the three gates (odd; the released models use 7, some 3).
        no_spatial: drop the ``hw`` branch.
    """

    layout: ClassVar[str] = "nchw"
    kind: ClassVar[str] = "gate"

    def __init__(
        self, dim: int, *, num_heads: int | None = None, kernel_size: int = 7, no_spatial: bool = False
    ) -> None:
        super().__init__()
        self.dim = dim
        self.cw = ZPoolGate(kernel_size)
        self.hc = ZPoolGate(kernel_size)
        self.hw = None if no_spatial else ZPoolGate(kernel_size, zero_bn=True)

    def forward(self, x: Tensor) -> Tensor:
        n = 2.0 if self.hw is None else 3.0
        # cw: pool over H, conv on the (C, W) plane; map (B, 1, C, W) seen as (B, C, 1, W)
        g_cw = _cw_map(self.cw(_zpool(x, "h")), x) / n
        # hc: pool over W, conv on the (H, C) plane; map (B, 1, H, C) seen as (B, C, H, 1)
        g_hc = self.hc(_zpool(x, "w")).permute(0, 3, 2, 1) / n
        # x·g_cw + x·g_hc (+ x·g_hw): every full-size result follows x's memory format; addcmul_ only
        # overwrites our own temporary, which autograd does not need
        out = (x * g_cw).addcmul_(x, g_hc)
        if self.hw is not None:
            # hw: pool over C, conv on the (H, W) plane; map (B, 1, H, W)
            out = out.addcmul_(x, self.hw(_zpool(x, "c")) / n)
        return out
