"""NAT, DiNAT and DiNAT_s — hierarchical transformers with (dilated) neighborhood attention.

Papers: "Neighborhood Attention Transformer", Hassani et al., CVPR 2023, arXiv:2204.07143;
"Dilated Neighborhood Attention Transformer", Hassani & Shi, arXiv:2209.15001.
Original code: https://github.com/SHI-Labs/Neighborhood-Attention-Transformer (commit d334f5bb,
``classification/nat.py``, ``dinat.py``, ``dinats.py``), MIT license; attention semantics of NATTEN 0.14–0.17.

Differences from the original, and why:

* No NATTEN dependency: the ``neighborhood`` mixer calls :func:`mixerzoo.kernels.neighborhood_attention_2d`
  (NATTEN's shifted border windows, dilation groups and relative position bias, exactly), which runs on
  CPU and trains (NATTEN ≥ 0.20 has neither a CPU path nor the rpb the checkpoints need).
* Key layout is timm-like (``stem.*``, ``stages.i.downsample.*``, ``stages.i.blocks.j.token_mixer.*``,
  ``head.*``); the downsampler that the original keeps at the *end* of level i is the *start* of our
  stage i+1. Official checkpoints load through :func:`checkpoint_filter` (strict key accounting).
  Numerics are the official ones: NAT's tokenizer has no activation between its two convs, LayerNorm eps
  1e-5, layer scale only where the variant has it (NAT-S/B, DiNAT-B).
* ``forward_features`` returns ``[B, C, H, W]`` (the original keeps NHWC internally; so do we).
* Maps below ``kernel_size × dilation`` at some stage (fine-tuning at 64–128 px) are zero-padded and the
  padding masked out of every softmax (``small_input="pad_mask"``, the default: identical outputs wherever
  the map is large enough, so official parity is unchanged); ``small_input="error"`` raises instead, as
  NATTEN ≥ 0.15 does, and ``"pad"`` is NATTEN 0.14's unmasked padding.
* ``out_norms=True`` adds the per-output LayerNorms of the official detection/segmentation backbones
  (``norm0``..``norm3``), applied to every output of :meth:`NAT.forward_intermediates`.
* Mixers are registry plugins (``mixers=``): any nhwc/nchw/nlc token mixer can replace ``neighborhood``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixerzoo.zoo._blocks import (
    DropPath,
    Mlp,
    factory,
    make_mixer,
    resolve_mixers,
    run_mixer,
    stage_dpr,
    stage_options,
)
from mixerzoo.zoo._builder import build_backbone
from mixerzoo.zoo._host import NormPoolHead, Stage, StagedBackbone, strict_filter
from mixerzoo.zoo._registry import register_backbone

__all__ = ["NAT", "NATConfig", "checkpoint_filter"]

STEMS = ("conv", "patch")
DOWNSAMPLERS = ("conv", "merge")


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class NATConfig:
    depths: tuple[int, ...] = (3, 4, 6, 5)
    dims: tuple[int, ...] = (64, 128, 256, 512)
    num_heads: tuple[int, ...] = (2, 4, 8, 16)
    mixers: str | tuple[str, ...] = "neighborhood"
    mixer_options: Any = None  # dict for every stage, or one dict per stage
    kernel_size: int = 7
    dilations: tuple[tuple[int, ...], ...] | None = None  # per stage, per block; None = all 1 (NAT)
    mlp_ratio: float = 3.0
    layer_scale_init: float | None = None
    stem: str = "conv"  # "conv": NAT's two 3×3 s2 convs; "patch": DiNAT_s's 4×4 s4 patchify
    downsample: str = "conv"  # "conv": NAT's 3×3 s2 conv + LN; "merge": Swin patch merging (DiNAT_s)
    small_input: str = "pad_mask"  # maps below kernel_size × dilation: pad and mask ("error": raise)
    out_norms: bool = False

    def __post_init__(self) -> None:
        n = len(self.depths)
        if len(self.dims) != n or len(self.num_heads) != n:
            raise ValueError(f"dims={self.dims!r} and num_heads={self.num_heads!r} need one entry per stage ({n})")
        if self.dilations is not None:
            if len(self.dilations) != n or any(len(d) != k for d, k in zip(self.dilations, self.depths, strict=True)):
                raise ValueError(f"dilations={self.dilations!r} need one entry per block of depths={self.depths!r}")
        if self.stem not in STEMS:
            raise ValueError(f"stem={self.stem!r} must be one of {STEMS}")
        if self.downsample not in DOWNSAMPLERS:
            raise ValueError(f"downsample={self.downsample!r} must be one of {DOWNSAMPLERS}")


# ----------------------------------------------------------------------------------------- blocks
class NATBlock(nn.Module):
    """``x + γ1·mixer(LN(x))`` then ``x + γ2·MLP(LN(x))`` on ``[B, H, W, C]``."""

    def __init__(
        self, dim: int, *, mixer: nn.Module, mlp_ratio: float, layer_scale_init: float | None, drop_path: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixer = mixer
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if layer_scale_init is not None:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        else:
            self.gamma1 = self.gamma2 = None

    def forward(self, x: Tensor) -> Tensor:
        y = self._mix(self.norm1(x))
        x = x + self.drop_path(y if self.gamma1 is None else self.gamma1 * y)
        y = self.mlp(self.norm2(x))
        x = x + self.drop_path(y if self.gamma2 is None else self.gamma2 * y)
        return x

    def _mix(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript: built-in (nhwc) mixers only
            return self.token_mixer(x)
        return run_mixer(self.token_mixer, x, "nhwc")


class ConvStem(nn.Module):
    """NAT tokenizer: conv3×3 s2 → conv3×3 s2 (no activation or norm between) → LN; NCHW in, NHWC out."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, 2, 1)
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, 2, 1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv2(self.conv1(x)).permute(0, 2, 3, 1))


class PatchStem(nn.Module):
    """DiNAT_s tokenizer: zero-pad right/bottom to a multiple of 4, conv4×4 s4, LN; NCHW in, NHWC out."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, 4, 4)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2], x.shape[-1]
        x = F.pad(x, (0, (4 - W % 4) % 4, 0, (4 - H % 4) % 4))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsample(nn.Module):
    """NAT downsampler: conv3×3 s2 (no bias) → LN; NHWC in and out."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, 3, 2, 1, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """Swin patch merging (DiNAT_s): pad odd sizes, concat the 2×2 parity grids, LN(4C), Linear(4C → out)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[1], x.shape[2]
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        # Swin order: (even row, even col), (odd, even), (even, odd), (odd, odd)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


# ------------------------------------------------------------------------------------------ model
class NAT(StagedBackbone):
    """NAT / DiNAT / DiNAT_s on ``[B, C, H, W]``; every stage needs H, W ≥ kernel_size × dilation. Stage outputs
    ``[B, C_i, H/4·2^-i, W/4·2^-i]`` (ceil), NCHW or NHWC; ``forward_features`` is before the head's norm."""

    output_fmts = ("NCHW", "NHWC")
    no_weight_decay_suffixes = (".rpb",)

    def __init__(
        self,
        depths: Sequence[int] = (3, 4, 6, 5),
        dims: Sequence[int] = (64, 128, 256, 512),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        mixers: str | Sequence[str] = "neighborhood",
        mixer_options: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        kernel_size: int = 7,
        dilations: Sequence[Sequence[int]] | None = None,
        mlp_ratio: float = 3.0,
        layer_scale_init: float | None = None,
        stem: str = "conv",
        downsample: str = "conv",
        small_input: str = "pad_mask",
        out_norms: bool = False,
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
        n = len(depths)
        names = resolve_mixers(mixers, n, host="NAT", kinds=("mixer",), layouts=("nchw", "nhwc", "nlc"))
        opts = stage_options(mixer_options, n)
        dil = [list(d) for d in dilations] if dilations is not None else [[1] * d for d in depths]
        self._setup(
            in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, drop_rate=drop_rate,
            num_features=dims[-1],
        )  # fmt: skip
        dpr = stage_dpr(depths, drop_path_rate)
        down_cls = ConvDownsample if downsample == "conv" else PatchMerging
        with factory(device):
            self.stem = ConvStem(in_chans, dims[0]) if stem == "conv" else PatchStem(in_chans, dims[0])
            stages, self.feature_info = [], []
            for i in range(n):
                blocks = []
                for j in range(depths[i]):
                    defaults: dict[str, Any] = {"num_heads": num_heads[i]}
                    if names[i] == "neighborhood":
                        defaults.update(kernel_size=kernel_size, dilation=dil[i][j], small_input=small_input)
                    mixer = make_mixer(names[i], dims[i], opts[i], **defaults)
                    blocks.append(
                        NATBlock(
                            dims[i], mixer=mixer, mlp_ratio=mlp_ratio, layer_scale_init=layer_scale_init,
                            drop_path=dpr[i][j],
                        )  # fmt: skip
                    )
                down = nn.Identity() if i == 0 else down_cls(dims[i - 1], dims[i])
                stages.append(Stage(down, blocks))
                self.feature_info.append({"num_chs": dims[i], "reduction": 4 * 2**i, "module": f"stages.{i}"})
            self.stages = nn.Sequential(*stages)
            self.out_norms = nn.ModuleList([nn.LayerNorm(d) for d in dims]) if out_norms else None
            norm = nn.LayerNorm(dims[-1])
            self.head = NormPoolHead(norm, dims[-1], num_classes, global_pool, drop_rate, channels_last_norm=True)
        self._finish(dtype)

    def _features_out(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2)  # the body runs NHWC

    def _intermediate(self, i: int, x: Tensor, norm: bool, last: bool, output_fmt: str) -> Tensor:
        # out_norms=True: every output goes through its detection-backbone LayerNorm; otherwise norm=True applies
        # the head's LayerNorm to the last stage's output
        if self.out_norms is not None:
            x = self.out_norms[i](x)
        elif norm and last:
            x = self.head.norm(x)
        return x if output_fmt == "NHWC" else x.permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------ checkpoint filter
def checkpoint_filter(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map the official NAT/DiNAT (``patch_embed``, ``levels``) and DiNAT_s (``layers``) layouts to ours.

    Also accepts the detection/segmentation backbones' per-output ``norm{i}``. Our own layout passes
    through. Every official key must land on a model key, else ``KeyError`` lists the leftovers.
    """
    sd = dict(state_dict)
    if any(k.startswith("stem.") for k in sd):
        return sd
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}  # our key -> the checkpoint's, for error messages
    for k, v in sd.items():
        nk = k
        nk = re.sub(r"^patch_embed\.proj\.0\.", "stem.conv1.", nk)  # nat.py ConvTokenizer
        nk = re.sub(r"^patch_embed\.proj\.1\.", "stem.conv2.", nk)
        nk = re.sub(r"^patch_embed\.", "stem.", nk)  # ConvTokenizer.norm; dinats.py PatchEmbed.{proj,norm}
        m = re.match(r"^(?:levels|layers)\.(\d+)\.downsample\.(.*)$", nk)  # end of level i = start of our stage i+1
        if m:
            nk = f"stages.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
        m = re.match(r"^(?:levels|layers)\.(\d+)\.blocks\.(\d+)\.(.*)$", nk)
        if m:
            rest = re.sub(r"^attn\.", "token_mixer.", m.group(3))  # NATTEN NeighborhoodAttention2D: qkv, rpb, proj
            nk = f"stages.{m.group(1)}.blocks.{m.group(2)}.{rest}"
        nk = re.sub(r"^norm(\d)\.", r"out_norms.\1.", nk)  # detection backbones: norm0..norm3
        nk = re.sub(r"^norm\.", "head.norm.", nk)
        nk = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", nk)
        out[nk] = v
        origin[nk] = k
    return strict_filter(out, model, "NAT", origin)


# ------------------------------------------------------------------------------ pretrained cfgs
def _cfg(**kw: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.conv1", "classifier": "head.fc", "license": "mit",
        "paper_ids": "arXiv:2204.07143", "origin_url": "https://github.com/SHI-Labs/Neighborhood-Attention-Transformer",
        **kw,
    }  # fmt: skip


def _dcfg(**kw: Any) -> dict[str, Any]:
    return _cfg(paper_ids="arXiv:2209.15001", **kw)


_NAT = "https://shi-labs.com/projects/nat/checkpoints/CLS/"
_DINAT = "https://shi-labs.com/projects/dinat/checkpoints/"
_S = {"first_conv": "stem.proj"}
_384 = {"input_size": (3, 384, 384), "pool_size": (12, 12), "crop_pct": 1.0}
PRETRAINED: dict[str, dict[str, Any]] = {
    "nat_mini.shi_in1k": _cfg(url=_NAT + "nat_mini.pth"),
    "nat_tiny.shi_in1k": _cfg(url=_NAT + "nat_tiny.pth"),
    "nat_small.shi_in1k": _cfg(url=_NAT + "nat_small.pth"),
    "nat_base.shi_in1k": _cfg(url=_NAT + "nat_base.pth"),
    "dinat_mini.shi_in1k": _dcfg(url=_DINAT + "imagenet1k/dinat_mini_in1k_224.pth"),
    "dinat_tiny.shi_in1k": _dcfg(url=_DINAT + "imagenet1k/dinat_tiny_in1k_224.pth"),
    "dinat_small.shi_in1k": _dcfg(url=_DINAT + "imagenet1k/dinat_small_in1k_224.pth"),
    "dinat_base.shi_in1k": _dcfg(url=_DINAT + "imagenet1k/dinat_base_in1k_224.pth"),
    "dinat_large.shi_in22k_ft_in1k": _dcfg(url=_DINAT + "imagenet1k/dinat_large_in22k_in1k_224.pth"),
    "dinat_large.shi_in22k": _dcfg(url=_DINAT + "imagenet22k/dinat_large_in22k_224.pth", num_classes=21841),
    "dinat_large_384.shi_in22k_ft_in1k": _dcfg(url=_DINAT + "imagenet1k/dinat_large_in22k_in1k_384.pth", **_384),
    "dinat_large_384_11x11.shi_in22k_ft_in1k": _dcfg(
        url=_DINAT + "imagenet1k/dinat_large_in22k_in1k_384_11x11.pth", **_384
    ),
    # the 224² ImageNet-22k weights with rpb bicubically interpolated to 11×11: an init for 384² fine-tuning
    # (11 × 8 = 88 > 56: the 224² stage-1 map is too small for this variant)
    "dinat_large_384_11x11.shi_in22k": _dcfg(
        url=_DINAT + "imagenet22k/dinat_large_in22k_224_11x11interp.pth", num_classes=21841, **_384
    ),
    "dinat_s_tiny.shi_in1k": _dcfg(url=_DINAT + "imagenet1k/dinat_s_tiny_in1k_224.pth", **_S),
    "dinat_s_small.shi_in1k": _dcfg(url=_DINAT + "imagenet1k/dinat_s_small_in1k_224.pth", **_S),
    "dinat_s_base.shi_in1k": _dcfg(url=_DINAT + "imagenet1k/dinat_s_base_in1k_224.pth", **_S),
    "dinat_s_large.shi_in22k_ft_in1k": _dcfg(url=_DINAT + "imagenet1k/dinat_s_large_in1k_224.pth", **_S),
    "dinat_s_large.shi_in22k": _dcfg(url=_DINAT + "imagenet22k/dinat_s_large_in22k_224.pth", num_classes=21841, **_S),
    "dinat_s_large_384.shi_in22k_ft_in1k": _dcfg(url=_DINAT + "imagenet1k/dinat_s_large_in1k_384.pth", **_384, **_S),
}


def _create(variant: str, pretrained: bool, config: NATConfig, **kwargs: Any) -> NAT:
    return build_backbone(NAT, variant, pretrained, config, checkpoint_filter=checkpoint_filter, **kwargs)


def _dims(embed: int) -> tuple[int, ...]:
    return (embed, 2 * embed, 4 * embed, 8 * embed)


def _dinat_dilations(depths: Sequence[int], d1: int = 8, d2: int = 4, d3: int = 2) -> tuple[tuple[int, ...], ...]:
    """DiNAT's per-block dilations: alternate 1 and the stage's dilation (stage 4: all 1)."""
    out = []
    for i, (depth, d) in enumerate(zip(depths, (d1, d2, d3, 1), strict=True)):
        out.append(tuple(1 if (j % 2 == 0 or i == 3) else d for j in range(depth)))
    return tuple(out)


_NAT_DEPTHS_M, _NAT_DEPTHS = (3, 4, 6, 5), (3, 4, 18, 5)
_S_DEPTHS_T, _S_DEPTHS = (2, 2, 6, 2), (2, 2, 18, 2)
_H64, _H96, _H128, _H192 = (2, 4, 8, 16), (3, 6, 12, 24), (4, 8, 16, 32), (6, 12, 24, 48)


def _nat(depths: Sequence[int], embed: int, heads: Sequence[int], mlp: float, ls: float | None, **kw: Any) -> NATConfig:
    return NATConfig(tuple(depths), _dims(embed), tuple(heads), mlp_ratio=mlp, layer_scale_init=ls, **kw)


def _dinat_s(depths: Sequence[int], embed: int, heads: Sequence[int], **kw: Any) -> NATConfig:
    kw.setdefault("dilations", _dinat_dilations(depths))
    return NATConfig(tuple(depths), _dims(embed), tuple(heads), mlp_ratio=4.0, stem="patch", downsample="merge", **kw)


# ------------------------------------------------------------------------------ variant builders: NAT
@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def nat_mini(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Mini: 20.0 M params, 2.7 GMACs, 81.8 % top-1."""
    return _create("nat_mini", pretrained, _nat(_NAT_DEPTHS_M, 64, _H64, 3.0, None), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def nat_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Tiny: 27.9 M params, 4.3 GMACs, 83.2 % top-1."""
    return _create("nat_tiny", pretrained, _nat(_NAT_DEPTHS, 64, _H64, 3.0, None), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def nat_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Small: 50.7 M params, 7.8 GMACs, 83.7 % top-1."""
    return _create("nat_small", pretrained, _nat(_NAT_DEPTHS, 96, _H96, 2.0, 1e-5), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def nat_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    """NAT-Base: 89.8 M params, 13.7 GMACs, 84.3 % top-1."""
    return _create("nat_base", pretrained, _nat(_NAT_DEPTHS, 128, _H128, 2.0, 1e-5), **kwargs)


# ---------------------------------------------------------------------------- variant builders: DiNAT
@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def dinat_mini(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Mini: 20.0 M params, 2.7 GMACs, 81.8 % top-1 (needs inputs ≥ 224: 7 × 8 at stride 4)."""
    cfg = _nat(_NAT_DEPTHS_M, 64, _H64, 3.0, None, dilations=_dinat_dilations(_NAT_DEPTHS_M))
    return _create("dinat_mini", pretrained, cfg, **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def dinat_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Tiny: 27.9 M params, 4.3 GMACs, 82.7 % top-1."""
    cfg = _nat(_NAT_DEPTHS, 64, _H64, 3.0, None, dilations=_dinat_dilations(_NAT_DEPTHS))
    return _create("dinat_tiny", pretrained, cfg, **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def dinat_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Small: 50.7 M params, 7.8 GMACs, 83.8 % top-1 (no layer scale, unlike NAT-Small)."""
    cfg = _nat(_NAT_DEPTHS, 96, _H96, 2.0, None, dilations=_dinat_dilations(_NAT_DEPTHS))
    return _create("dinat_small", pretrained, cfg, **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def dinat_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Base: 89.8 M params, 13.7 GMACs, 84.4 % top-1."""
    cfg = _nat(_NAT_DEPTHS, 128, _H128, 2.0, 1e-5, dilations=_dinat_dilations(_NAT_DEPTHS))
    return _create("dinat_base", pretrained, cfg, **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def dinat_large(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Large (ImageNet-22k pre-trained): 200.9 M params, 30.6 GMACs, 86.6 % top-1."""
    cfg = _nat(_NAT_DEPTHS, 192, _H192, 2.0, None, dilations=_dinat_dilations(_NAT_DEPTHS))
    return _create("dinat_large", pretrained, cfg, **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def dinat_large_384(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Large at 384² (dilations 13/6/3): 87.4 % top-1."""
    cfg = _nat(_NAT_DEPTHS, 192, _H192, 2.0, None, dilations=_dinat_dilations(_NAT_DEPTHS, 13, 6, 3))
    return _create("dinat_large_384", pretrained, cfg, **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def dinat_large_384_11x11(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT-Large at 384² with 11×11 neighbourhoods (dilations 8/4/2): 87.5 % top-1."""
    cfg = _nat(_NAT_DEPTHS, 192, _H192, 2.0, None, kernel_size=11, dilations=_dinat_dilations(_NAT_DEPTHS))
    return _create("dinat_large_384_11x11", pretrained, cfg, **kwargs)


# --------------------------------------------------------------------------- variant builders: DiNAT_s
@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def dinat_s_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT_s-Tiny (Swin-T layout): 28.3 M params, 4.5 GMACs, 81.8 % top-1."""
    return _create("dinat_s_tiny", pretrained, _dinat_s(_S_DEPTHS_T, 96, _H96), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def dinat_s_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT_s-Small: 49.6 M params, 8.7 GMACs, 83.5 % top-1."""
    return _create("dinat_s_small", pretrained, _dinat_s(_S_DEPTHS, 96, _H96), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def dinat_s_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT_s-Base: 87.8 M params, 15.4 GMACs, 83.8 % top-1."""
    return _create("dinat_s_base", pretrained, _dinat_s(_S_DEPTHS, 128, _H128), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def dinat_s_large(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT_s-Large (ImageNet-22k pre-trained)."""
    return _create("dinat_s_large", pretrained, _dinat_s(_S_DEPTHS, 192, _H192), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def dinat_s_large_384(pretrained: bool = False, **kwargs: Any) -> NAT:
    """DiNAT_s-Large at 384² (dilations 13/6/3)."""
    cfg = _dinat_s(_S_DEPTHS, 192, _H192, dilations=_dinat_dilations(_S_DEPTHS, 13, 6, 3))
    return _create("dinat_s_large_384", pretrained, cfg, **kwargs)


# ------------------------------------------------------------------------------ tiny test variants
_TEST_CFG = _cfg(input_size=(3, 96, 96), pool_size=(3, 3))


@register_backbone(default_cfg=_TEST_CFG, test=True)
def test_nat(pretrained: bool = False, **kwargs: Any) -> NAT:
    """Tiny NAT for tests (3×3 neighbourhoods, layer scale on; 96² input)."""
    cfg = NATConfig((1, 1, 1, 1), _dims(16), (2, 2, 4, 4), kernel_size=3, layer_scale_init=1e-5)
    return _create("test_nat", pretrained, cfg, **kwargs)


@register_backbone(default_cfg=_TEST_CFG, test=True)
def test_dinat(pretrained: bool = False, **kwargs: Any) -> NAT:
    """Tiny DiNAT for tests (3×3 neighbourhoods, dilations 4/2/2; 96² input)."""
    depths = (2, 2, 2, 1)
    cfg = NATConfig(depths, _dims(16), (2, 2, 4, 4), kernel_size=3, dilations=_dinat_dilations(depths, 4, 2, 2))
    return _create("test_dinat", pretrained, cfg, **kwargs)


@register_backbone(default_cfg={**_TEST_CFG, **_S}, test=True)
def test_dinat_s(pretrained: bool = False, **kwargs: Any) -> NAT:
    """Tiny DiNAT_s for tests (Swin-like stem and patch merging; 96² input)."""
    depths = (2, 1, 2, 1)
    cfg = _dinat_s(depths, 16, (2, 2, 4, 4), kernel_size=3, dilations=_dinat_dilations(depths, 4, 2, 2))
    return _create("test_dinat_s", pretrained, cfg, **kwargs)
