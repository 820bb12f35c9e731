"""Isotropic NAT / DiNAT (and the ViT-rpb baseline): a ViT-like column of neighborhood-attention blocks.

Paper: "Dilated Neighborhood Attention Transformer", Hassani & Shi, arXiv:2209.15001 (isotropic variants,
Table 6). Original code: https://github.com/SHI-Labs/Neighborhood-Attention-Transformer (commit d334f5bb,
``classification/isotropic.py``, building on ``dinats.py``), MIT license; attention semantics of NATTEN
0.14–0.17.

Differences from the original, and why:

* No NATTEN dependency: the ``neighborhood`` mixer runs :func:`mixerzoo.kernels.neighborhood_attention_2d`
  (NATTEN's shifted border windows, dilation groups and relative position bias, exactly).
* Key layout is timm-like (``patch_embed.*``, ``blocks.i.{norm1, token_mixer, norm2, mlp}``,
  ``head.{norm, fc}``); official checkpoints (``layers.i.attn``, ``norm``, ``head``) load through
  :func:`checkpoint_filter` with strict key accounting. Numerics are the official ones: 16×16 patchify
  conv (zero-padded right/bottom to a multiple of 16) + LayerNorm, no position embedding and no class
  token, pre-norm blocks (LayerNorm eps 1e-5), DiNAT-iso alternating dilation 1 and 2, head = LayerNorm on
  every token → mean → Linear.
* Any input size: the official model reshapes to the 224² grid (14×14) and so accepts only 224²; here NA
  needs ``H/16, W/16 ≥ kernel_size × dilation``; smaller maps are padded and masked (``small_input="pad_mask"``,
  the default; identical outputs above the limit) or raise with ``small_input="error"``.
  ViT-rpb's global attention indexes its ``(2L−1)²`` bias table by the key−query offset, so any grid up
  to the trained ``L×L`` (14×14) works; the official ``relative_position_index`` buffer (the same index,
  for L×L only) is checked by the filter and not stored.
* ``forward_features`` returns ``[B, C, H/16, W/16]`` before the head's LayerNorm (NAT-family convention);
  ``forward_intermediates`` returns block outputs as timm's ViT does (``norm=True`` applies that norm).
* Mixers are registry plugins (``mixers=``, one name or one per block); ``"attention_rpb"`` names this
  file's global attention with relative position bias (ViT-rpb).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import Tensor, nn

from mixerzoo.kernels._dispatch import export_contiguous
from mixerzoo.zoo._blocks import (
    DropPath,
    Mlp,
    PatchEmbedNHWC,
    factory,
    init_weights,
    make_mixer,
    resolve_mixers,
    run_mixer,
    trunc_normal_,
)
from mixerzoo.zoo._builder import build_backbone, unwrap_state_dict
from mixerzoo.zoo._checks import check_input
from mixerzoo.zoo._host import NormPoolHead, strict_filter
from mixerzoo.zoo._registry import register_backbone

__all__ = ["AttentionRPB", "NATIsotropic", "NATIsotropicConfig", "checkpoint_filter"]

LOCAL_MIXERS = ("attention_rpb",)


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class NATIsotropicConfig:
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 16
    mixers: str | tuple[str, ...] = "neighborhood"  # one name, or one per block; "attention_rpb" is local
    mixer_options: Any = None  # dict for every block
    kernel_size: int = 7
    dilation: int = 1  # odd blocks (1, 3, ...) use it, even blocks use 1 (DiNAT-iso: 2)
    rpb_size: int = 14  # attention_rpb: largest token grid side L (bias table (2L-1)²)
    mlp_ratio: float = 4.0
    small_input: str = "pad_mask"  # maps below kernel_size × dilation: pad and mask ("error": raise)

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if not isinstance(self.mixers, str) and len(self.mixers) != self.depth:
            raise ValueError(f"mixers={self.mixers!r} needs one name or {self.depth} (one per block)")
        if self.dilation < 1 or self.patch_size < 1 or self.rpb_size < 1:
            raise ValueError(
                f"dilation={self.dilation}, patch_size={self.patch_size}, rpb_size={self.rpb_size} must be >= 1"
            )


# ----------------------------------------------------------------------------------------- blocks
@register_notrace_module  # a leaf for torch.fx (shape-dependent bias table and size check)
class AttentionRPB(nn.Module):
    """Global multi-head self-attention with a 2-D relative position bias, on ``[B, H, W, C]`` (ViT-rpb).

    ``rpb``: ``(heads, 2L−1, 2L−1)``, indexed by the key−query offset ``(Δy + L − 1, Δx + L − 1)`` (NATTEN's
    convention), so any grid with ``H, W ≤ L`` works. Scale ``head_dim ** -0.5``.
    """

    layout: ClassVar[str] = "nhwc"
    kind: ClassVar[str] = "mixer"

    def __init__(self, dim: int, *, num_heads: int, rpb_size: int = 14, qkv_bias: bool = True) -> None:
        super().__init__()
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f"num_heads={num_heads!r} must be a positive divisor of dim={dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.rpb_size = rpb_size
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * rpb_size - 1, 2 * rpb_size - 1))
        trunc_normal_(self.rpb, std=0.02)
        self.proj = nn.Linear(dim, dim)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, rpb_size={self.rpb_size}"

    def bias(self, H: int, W: int) -> Tensor:
        """``[heads, H·W, H·W]``: the bias of key ``(yk, xk)`` for query ``(yq, xq)``."""
        if H > self.rpb_size or W > self.rpb_size:
            raise ValueError(
                f"attention_rpb: token grid {H}×{W} exceeds rpb_size={self.rpb_size} (the bias table's grid); "
                f"use an input of at most {self.rpb_size} tokens per side"
            )
        iy = relative_index(H, self.rpb_size, self.rpb.device)  # [yq, yk]
        ix = relative_index(W, self.rpb_size, self.rpb.device)  # [xq, xk]
        bias = self.rpb[:, iy[:, None, :, None], ix[None, :, None, :]]  # [heads, yq, xq, yk, xk]
        return bias.reshape(self.num_heads, H * W, H * W)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        N = H * W
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias(H, W).unsqueeze(0).to(q.dtype))
        if not torch.jit.is_scripting():  # TorchScript cannot compile torch.compiler.is_exporting()
            out = export_contiguous(out)  # one layout for torch.export and the ONNX exporter's decompositions
        return self.proj(out.transpose(1, 2).reshape(B, H, W, C))


def relative_index(n: int, size: int, device: torch.device | None = None) -> Tensor:
    """``[n, n]`` long: ``k − q + size − 1`` for query ``q`` and key ``k`` along one axis."""
    r = torch.arange(n, device=device)
    return r[None, :] - r[:, None] + (size - 1)


def official_relative_position_index(size: int) -> Tensor:
    """The ``relative_position_index`` buffer of the official ``MHSARPB`` for an ``size×size`` grid."""
    iy = relative_index(size, size).view(size, 1, size, 1).expand(size, size, size, size)
    ix = relative_index(size, size).view(1, size, 1, size).expand(size, size, size, size)
    return (iy * (2 * size - 1) + ix).reshape(size * size, size * size)


class IsoBlock(nn.Module):
    """``x + mixer(LN(x))`` then ``x + MLP(LN(x))`` on ``[B, H, W, C]``."""

    def __init__(self, dim: int, *, mixer: nn.Module, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixer = mixer
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self._mix(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x

    def _mix(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript: nhwc mixers only
            return self.token_mixer(x)
        return run_mixer(self.token_mixer, x, "nhwc")


# ------------------------------------------------------------------------------------------ model
class NATIsotropic(nn.Module):
    """Isotropic NAT / DiNAT / ViT-rpb on ``[B, C, H, W]``: one ``H/p × W/p`` token grid throughout."""

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 12,
        patch_size: int = 16,
        mixers: str | Sequence[str] = "neighborhood",
        mixer_options: dict[str, Any] | None = None,
        kernel_size: int = 7,
        dilation: int = 1,
        rpb_size: int = 14,
        mlp_ratio: float = 4.0,
        small_input: str = "pad_mask",
        *,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        names = (mixers,) * depth if isinstance(mixers, str) else tuple(mixers)
        if len(names) != depth:
            raise ValueError(f"mixers={mixers!r}: need one name or {depth} (one per block)")
        registry = [n for n in names if n not in LOCAL_MIXERS]
        resolve_mixers(registry, len(registry), host="NATIsotropic", kinds=("mixer",), layouts=("nchw", "nhwc", "nlc"))
        if mixer_options is not None and not isinstance(mixer_options, Mapping):
            raise ValueError(f"mixer_options={mixer_options!r}: need one dict (used by every block)")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.grad_checkpointing = False
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        with factory(device):
            self.patch_embed = PatchEmbedNHWC(in_chans, embed_dim, patch_size)
            blocks = []
            for i, name in enumerate(names):
                if name == "attention_rpb":
                    opts = {"rpb_size": rpb_size, **dict(mixer_options or {})}
                    mixer: nn.Module = AttentionRPB(embed_dim, num_heads=num_heads, **opts)
                else:
                    defaults: dict[str, Any] = {"num_heads": num_heads}
                    if name == "neighborhood":
                        d = 1 if i % 2 == 0 else dilation
                        defaults.update(kernel_size=kernel_size, dilation=d, small_input=small_input)
                    mixer = make_mixer(name, embed_dim, dict(mixer_options or {}), **defaults)
                blocks.append(IsoBlock(embed_dim, mixer=mixer, mlp_ratio=mlp_ratio, drop_path=dpr[i]))
            self.blocks = nn.Sequential(*blocks)
            self.feature_info = [
                {"num_chs": embed_dim, "reduction": patch_size, "module": f"blocks.{i}"} for i in range(depth)
            ]
            norm = nn.LayerNorm(embed_dim)
            self.head = NormPoolHead(norm, embed_dim, num_classes, global_pool, drop_rate, channels_last_norm=True)
        init_weights(self, self._init_weights)  # skipped on meta
        if dtype is not None:
            self.to(dtype=dtype)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ---- timm contract -----------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith(".rpb")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": r"^patch_embed", "blocks": [(r"^blocks\.(\d+)", None), (r"^head\.norm", (99999,))]}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head.reset(self.num_features, num_classes, global_pool, self.patch_embed.proj.weight)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Block outputs (timm ViT-style) ``[B, C, H/p, W/p]`` (``NCHW``), ``[B, H/p, W/p, C]`` (``NHWC``)
        or ``[B, HW/p², C]`` (``NLC``); ``norm=True`` applies the head's LayerNorm to each."""
        if not torch.jit.is_scripting():
            check_input(self, x)  # one-line error naming the model and (B, C, H, W)
        if output_fmt not in ("NCHW", "NHWC", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}: NATIsotropic supports 'NCHW', 'NHWC' and 'NLC'")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        intermediates = []
        x = self.patch_embed(x)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[: max_index + 1]
        for i, blk in enumerate(blocks):
            x = blk(x)
            if i in take:
                y = self.head.norm(x) if norm else x
                if output_fmt == "NCHW":
                    y = y.permute(0, 3, 1, 2)
                elif output_fmt == "NLC":
                    y = y.flatten(1, 2)
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return x.permute(0, 3, 1, 2), intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.head.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` → ``[B, embed_dim, ⌈H/p⌉, ⌈W/p⌉]``, before the head's norm."""
        if not torch.jit.is_scripting():
            check_input(self, x)  # one-line error naming the model and (B, C, H, W)
        x = self.patch_embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# ------------------------------------------------------------------------------ checkpoint filter
def checkpoint_filter(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map the official ``isotropic.py`` layout (``patch_embed``, ``layers.i``, ``norm``, ``head``) to ours.

    Accepts the raw state dict (the official files) or a ``{"model": ...}``/``{"state_dict": ...}`` wrapper,
    with or without DataParallel's ``module.`` prefix. The official ViT-rpb ``relative_position_index``
    buffers are checked against the index this model computes and then dropped (they hold no learned state).
    Our own layout passes through. Every official key must be consumed, else ``KeyError`` lists the leftovers.
    """
    sd = unwrap_state_dict(state_dict)
    if any(k.startswith("blocks.") for k in sd):
        return sd
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for k, v in sd.items():
        m = re.match(r"^layers\.(\d+)\.(.*)$", k)  # isotropic.py: Sequential of NATransformerLayer / ViT layers
        if m:
            rest = m.group(2)
            if rest == "attn.relative_position_index":  # MHSARPB buffer: the fixed L×L index, not stored here
                _check_official_index(k, v)
                continue
            # NATTEN NeighborhoodAttention2D / MHSARPB: qkv, rpb, proj
            nk = f"blocks.{m.group(1)}." + re.sub(r"^attn\.", "token_mixer.", rest)
        else:
            nk = re.sub(r"^norm\.", "head.norm.", k)  # final LayerNorm (applied to every token before the mean)
            nk = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", nk)
        out[nk] = v
        origin[nk] = k
    return strict_filter(out, model, "NATIsotropic", origin)


def _check_official_index(key: str, index: Tensor) -> None:
    size = round(index.shape[0] ** 0.5)
    ok = index.shape == (size * size, size * size) and torch.equal(index.long(), official_relative_position_index(size))
    if not ok:
        shape = tuple(index.shape)
        raise ValueError(f"checkpoint_filter: {key} is not the official L×L relative index (shape {shape})")


# ------------------------------------------------------------------------------ pretrained cfgs
def _cfg(**kw: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (14, 14), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "patch_embed.proj", "classifier": "head.fc", "license": "mit",
        "paper_ids": "arXiv:2209.15001", "origin_url": "https://github.com/SHI-Labs/Neighborhood-Attention-Transformer",
        **kw,
    }  # fmt: skip


_ISO = "https://shi-labs.com/projects/dinat/checkpoints/isotropic/"
PRETRAINED: dict[str, dict[str, Any]] = {
    "nat_isotropic_small.shi_in1k": _cfg(url=_ISO + "nat_isotropic_small_in1k_224.pth"),
    "nat_isotropic_base.shi_in1k": _cfg(url=_ISO + "nat_isotropic_base_in1k_224.pth"),
    "dinat_isotropic_small.shi_in1k": _cfg(url=_ISO + "dinat_isotropic_small_in1k_224.pth"),
    "dinat_isotropic_base.shi_in1k": _cfg(url=_ISO + "dinat_isotropic_base_in1k_224.pth"),
    "vitrpb_small.shi_in1k": _cfg(url=_ISO + "vitrpb_small_in1k_224.pth"),
    "vitrpb_base.shi_in1k": _cfg(url=_ISO + "vitrpb_base_in1k_224.pth"),
}


def _create(variant: str, pretrained: bool, config: NATIsotropicConfig, **kwargs: Any) -> NATIsotropic:
    kwargs.setdefault("out_indices", 3)  # timm's isotropic default (the last 3 blocks); the caller's wins
    return build_backbone(NATIsotropic, variant, pretrained, config, checkpoint_filter=checkpoint_filter, **kwargs)


_S = {"embed_dim": 384, "num_heads": 12}
_B = {"embed_dim": 768, "num_heads": 24}


# ------------------------------------------------------------------------------ variant builders
@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def nat_isotropic_small(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    """NAT-iso-Small (7×7 NA, 12 blocks of 384): 22 M params, 4.3 GMACs, 80.0 % top-1."""
    return _create("nat_isotropic_small", pretrained, NATIsotropicConfig(**_S), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def nat_isotropic_base(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    """NAT-iso-Base (7×7 NA, 12 blocks of 768): 86 M params, 16.9 GMACs, 81.6 % top-1."""
    return _create("nat_isotropic_base", pretrained, NATIsotropicConfig(**_B), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def dinat_isotropic_small(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    """DiNAT-iso-Small (dilation 1, 2 alternating): 22 M params, 4.3 GMACs, 80.8 % top-1 (needs inputs ≥ 224)."""
    return _create("dinat_isotropic_small", pretrained, NATIsotropicConfig(**_S, dilation=2), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def dinat_isotropic_base(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    """DiNAT-iso-Base (dilation 1, 2 alternating): 86 M params, 16.9 GMACs, 82.1 % top-1 (needs inputs ≥ 224)."""
    return _create("dinat_isotropic_base", pretrained, NATIsotropicConfig(**_B, dilation=2), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def vitrpb_small(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    """ViT-rpb-Small (global attention + 2-D relative position bias): 22 M params, 4.6 GMACs, 81.2 % top-1."""
    return _create("vitrpb_small", pretrained, NATIsotropicConfig(**_S, mixers="attention_rpb"), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def vitrpb_base(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    """ViT-rpb-Base: 86 M params, 17.5 GMACs, 82.5 % top-1."""
    return _create("vitrpb_base", pretrained, NATIsotropicConfig(**_B, mixers="attention_rpb"), **kwargs)


# ------------------------------------------------------------------------------ tiny test variant
@register_backbone(default_cfg=_cfg(input_size=(3, 32, 32), pool_size=(8, 8)), test=True)
def test_nat_isotropic(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    """Tiny DiNAT-iso for tests (patch 4, 16 channels; blocks: NA d=1, NA d=2, attention_rpb, NA d=2; 32²)."""
    mixers = ("neighborhood", "neighborhood", "attention_rpb", "neighborhood")
    cfg = NATIsotropicConfig(16, 4, 2, patch_size=4, mixers=mixers, kernel_size=3, dilation=2, rpb_size=8)
    return _create("test_nat_isotropic", pretrained, cfg, **kwargs)
