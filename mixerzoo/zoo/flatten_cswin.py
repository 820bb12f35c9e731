"""FLatten-CSwin — CSWin Transformer with focused linear attention in its early stages.

Papers: "FLatten Transformer: Vision Transformer using Focused Linear Attention", Han et al., ICCV 2023,
arXiv:2308.00442; "CSWin Transformer", Dong et al., CVPR 2022, arXiv:2107.00652.
Original code: https://github.com/LeapLabTHU/FLatten-Transformer (commit abdb115f, ``models/flatten_cswin.py``),
MIT; microsoft/CSWin-Transformer, MIT.

Differences from the original, and why:
* Key layout groups each stage (``stem``, ``stages.i.downsample`` (the official ``merge{i}``),
  ``stages.i.blocks.j``; a block's ``qkv``/``proj``/LePE convs live in its ``attn`` mixer, the official
  ``attns.{b}.get_v`` becoming ``attn.lepe.{b}``); the official layout loads through :func:`checkpoint_filter`.
* FLatten's released configs (``attn_type='LLSS'``, ``la_split_size`` = the stage resolution, 56-28-14-7 at 224²)
  make every focused-linear ("L") block one window over the whole map with all heads; an "L" stage here *is*
  that (``cross_shaped`` with ``kernel="focused_linear", full=True``). "L" with stripes narrower than the map is
  not supported (the official code reshapes such windows inconsistently). "S" blocks are CSWin's cross-shaped
  LePE attention (stripes 1, 2, 7 and the full 7×7 map in the last stage).
* Any input size: the official model asserts square maps of the training size. Here stripes pad and mask,
  and the focused-linear positional terms are bilinearly resized to the actual map (bit-exact at the native size).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import Tensor, nn

from mixerzoo.zoo._blocks import (
    DropPath,
    factory,
    make_mixer,
    resolve_mixers,
    run_mixer,
    stage_dpr,
    stage_options,
)
from mixerzoo.zoo._blocks import FusedMlp as Mlp
from mixerzoo.zoo._builder import build_backbone
from mixerzoo.zoo._checks import image_size, refuse_scripting
from mixerzoo.zoo._host import LinearHeadBackbone, strict_filter
from mixerzoo.zoo._registry import register_backbone

__all__ = ["FLattenCSwin", "FLattenCSwinConfig", "checkpoint_filter"]


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class FLattenCSwinConfig:
    depths: tuple[int, ...] = (2, 4, 18, 1)
    embed_dim: int = 64
    num_heads: tuple[int, ...] = (2, 4, 8, 16)
    split_sizes: tuple[int, ...] = (1, 2, 7, 7)  # stripe widths of the softmax ("S") stages
    la_split_sizes: tuple[int, ...] = (56, 28, 14, 7)  # FLatten's CSWIN_LA_SPLIT_SIZE, for the "L" stages
    attn_types: str = "LLSS"  # per stage: "L" focused linear, "S" CSWin softmax
    mixers: str | tuple[str, ...] = "cross_shaped"
    mixer_options: Any = None  # dict for every stage, or one dict per stage
    img_size: int | tuple[int, int] = 224  # native resolution, int or (H, W): full-map stages, positional terms
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    focusing_factor: float = 3.0
    kernel_size: int = 5

    def __post_init__(self) -> None:
        n = len(self.depths)
        for name in ("num_heads", "split_sizes", "la_split_sizes", "attn_types"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}={getattr(self, name)!r} must have len(depths)={n} entries")
        if set(self.attn_types) - {"L", "S"}:
            raise ValueError(f"attn_types={self.attn_types!r} must be a string of 'L' and 'S'")


# ----------------------------------------------------------------------------------------- blocks
class ConvEmbed(nn.Module):
    """Conv (stem: 7×7 stride 4 pad 2; merge: 3×3 stride 2 pad 1) → LayerNorm.

    ``[B, C, H, W]`` → ``[B, H', W', D]``.
    """

    def __init__(self, in_chans: int, dim: int, *, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, kernel, stride, padding)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class CSwinBlock(nn.Module):
    """``x + mixer(LN(x))`` then ``x + MLP(LN(x))`` on ``[B, H, W, C]``."""

    def __init__(
        self, dim: int, *, mixer: str, mixer_options: dict[str, Any] | None, mlp_ratio: float, drop_path: float,
        drop: float, **mixer_defaults: Any,
    ) -> None:  # fmt: skip
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = make_mixer(mixer, dim, mixer_options, proj_drop=drop, **mixer_defaults)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(run_mixer(self.attn, self.norm1(x), "nhwc"))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


class CSwinStage(nn.Module):
    """(Merge block,) blocks; NHWC in and out (the merge conv takes NCHW)."""

    def __init__(self, in_dim: int, dim: int, depth: int, *, downsample: bool, dpr: Sequence[float], **block: Any):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = ConvEmbed(in_dim, dim, kernel=3, stride=2, padding=1) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[CSwinBlock(dim, drop_path=dpr[j], **block) for j in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(self.downsample, nn.Identity):
            x = self.downsample(x.permute(0, 3, 1, 2))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


# ------------------------------------------------------------------------------------------ model
class FLattenCSwin(LinearHeadBackbone):
    """CSWin host with per-stage registry mixers (FLatten: focused-linear ``cross_shaped`` in "L" stages). Stage
    outputs ``[B, C_i, H/4·2^-i, W/4·2^-i]``, NCHW; ``forward_features`` is normed."""

    final_norm_pattern = r"^norm"

    def __init__(
        self,
        depths: Sequence[int] = (2, 4, 18, 1),
        embed_dim: int = 64,
        num_heads: Sequence[int] = (2, 4, 8, 16),
        split_sizes: Sequence[int] = (1, 2, 7, 7),
        la_split_sizes: Sequence[int] = (56, 28, 14, 7),
        attn_types: str = "LLSS",
        mixers: str | Sequence[str] = "cross_shaped",
        mixer_options: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        img_size: int | Sequence[int] = 224,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        focusing_factor: float = 3.0,
        kernel_size: int = 5,
        *,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        n = len(depths)
        names = resolve_mixers(mixers, n, host="FLattenCSwin", kinds=("mixer",), layouts=("nchw", "nhwc", "nlc"))
        opts = stage_options(mixer_options, n)
        self._check_pool(global_pool)
        dims = [embed_dim * 2**i for i in range(n)]
        self._setup(
            in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, drop_rate=drop_rate,
            num_features=dims[-1],
        )  # fmt: skip
        img_h, img_w = image_size(img_size)
        dpr = stage_dpr(depths, drop_path_rate)
        with factory(device):
            self.stem = ConvEmbed(in_chans, embed_dim, kernel=7, stride=4, padding=2)
            stages, self.feature_info = [], []
            for i in range(n):
                res = (img_h // (4 * 2**i), img_w // (4 * 2**i))
                linear = attn_types[i] == "L"
                split = la_split_sizes[i] if linear else split_sizes[i]
                full = i == n - 1 or split == max(res)  # official: last stage, or a stripe as wide as the map
                if linear and not full:
                    raise ValueError(
                        f"la_split_sizes[{i}]={split}: focused-linear stages need stripes as wide as the map "
                        f"({max(res)})"
                    )
                stages.append(
                    CSwinStage(
                        dims[i - 1] if i > 0 else embed_dim, dims[i], depths[i], downsample=i > 0, dpr=dpr[i],
                        mixer=names[i], mixer_options=opts[i], mlp_ratio=mlp_ratio, drop=proj_drop_rate,
                        num_heads=num_heads[i], qkv_bias=qkv_bias, split_size=split, full=full,
                        kernel="focused_linear" if linear else "softmax", pos_size=res,
                        focusing_factor=focusing_factor, kernel_size=kernel_size,
                    )
                )  # fmt: skip
                self.feature_info.append({"num_chs": dims[i], "reduction": 4 * 2**i, "module": f"stages.{i}"})
            self.stages = nn.Sequential(*stages)
            self.norm = nn.LayerNorm(dims[-1])
            self._make_head(dims[-1], num_classes, drop_rate)
        self._finish(dtype)

    def __prepare_scriptable__(self) -> nn.Module:
        refuse_scripting(self)  # torch.jit.script: one clear line instead of a TorchScript frontend error
        return self

    def _features_out(self, x: Tensor) -> Tensor:
        return self.norm(x).permute(0, 3, 1, 2)  # the body runs NHWC; forward_features is normed

    def _intermediates_out(self, x: Tensor, full: bool) -> Tensor:
        return (self.norm(x) if full else x).permute(0, 3, 1, 2)

    def _intermediate(self, i: int, x: Tensor, norm: bool, last: bool, output_fmt: str) -> Tensor:
        return (self.norm(x) if norm and last else x).permute(0, 3, 1, 2)  # norm=True: the final norm, last

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        if prune_end or prune_norm:  # the final norm (and head) are sized for the last stage
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take


# ------------------------------------------------------------------------------ checkpoint filter
_BLOCK = r"^stage(\d)\.(\d+)\."  # official stage{s}.{j} (1-based s)


def _blk(m: re.Match[str]) -> str:
    return f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."


_RULES = (
    # official stem nn.Sequential(conv, Rearrange, LayerNorm): indices 0 and 2
    (re.compile(r"^stage1_conv_embed\.0\."), lambda m: "stem.conv."),
    (re.compile(r"^stage1_conv_embed\.2\."), lambda m: "stem.norm."),
    # official merge{i} (after stage i, 1-based) starts our stage i (0-based)
    (re.compile(r"^merge(\d)\."), lambda m: f"stages.{int(m.group(1))}.downsample."),
    # the official block's qkv/proj and its branches' LePE convs (attns.{b}.get_v) live in our mixer
    (re.compile(_BLOCK + r"(qkv|proj)\."), lambda m: _blk(m) + f"attn.{m.group(3)}."),
    (re.compile(_BLOCK + r"attns\.(\d)\.get_v\."), lambda m: _blk(m) + f"attn.lepe.{m.group(3)}."),
    # focused-linear parameters: always branch 0 ("L" blocks are full-map, one branch)
    (re.compile(_BLOCK + r"attns\.0\.(dwc\.|scale$|positional_encoding$)"), lambda m: _blk(m) + f"attn.{m.group(3)}"),
    (re.compile(_BLOCK + r"(norm1|norm2|mlp)\."), lambda m: _blk(m) + f"{m.group(3)}."),
)


def checkpoint_filter(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Official FLatten-CSwin / microsoft CSWin layout → ours; ours passes through.

    Every source key is renamed by one rule above (``norm`` and ``head`` keep their names) or the call fails.
    """
    sd = dict(state_dict["model"]) if "model" in state_dict else dict(state_dict)
    out: dict[str, Tensor] = {}
    if "stage1_conv_embed.0.weight" in sd:
        for k, v in sd.items():
            nk = k
            for pattern, repl in _RULES:
                nk = pattern.sub(repl, nk)
            out[nk] = v
    else:
        out = sd
    return strict_filter(out, model, "FLattenCSwin")


# ------------------------------------------------------------------------------ pretrained cfgs
def _cfg(**kw: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.9,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.conv", "classifier": "head", "license": "mit",
        "paper_ids": "arXiv:2308.00442", "origin_url": "https://github.com/LeapLabTHU/FLatten-Transformer", **kw,
    }  # fmt: skip


PRETRAINED: dict[str, dict[str, Any]] = {
    "flatten_cswin_tiny.orig_in1k": _cfg(url="https://cloud.tsinghua.edu.cn/f/48ba765ba8b0451d9d5a/?dl=1"),
}


def _create(variant: str, pretrained: bool, config: FLattenCSwinConfig, **kwargs: Any) -> FLattenCSwin:
    return build_backbone(FLattenCSwin, variant, pretrained, config, checkpoint_filter=checkpoint_filter, **kwargs)


# ------------------------------------------------------------------------------ variant builders
@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def flatten_cswin_tiny(pretrained: bool = False, **kwargs: Any) -> FLattenCSwin:
    """FLatten-CSwin-T: 21.2 M params, 4.3 GMACs, 83.1 % top-1."""
    return _create("flatten_cswin_tiny", pretrained, FLattenCSwinConfig((2, 4, 18, 1)), **kwargs)


@register_backbone(default_cfg=_cfg())
def flatten_cswin_small(pretrained: bool = False, **kwargs: Any) -> FLattenCSwin:
    """FLatten-CSwin-S: 35.5 M params, 6.8 GMACs (no released weights)."""
    return _create("flatten_cswin_small", pretrained, FLattenCSwinConfig((2, 4, 32, 2)), **kwargs)


@register_backbone(default_cfg=_cfg())
def flatten_cswin_base(pretrained: bool = False, **kwargs: Any) -> FLattenCSwin:
    """FLatten-CSwin-B: 74.9 M params, 14.9 GMACs (no released weights)."""
    cfg = FLattenCSwinConfig((3, 6, 29, 2), 96, (4, 8, 16, 32))
    return _create("flatten_cswin_base", pretrained, cfg, **kwargs)


@register_backbone(default_cfg=_cfg(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0))
def flatten_cswin_base_384(pretrained: bool = False, **kwargs: Any) -> FLattenCSwin:
    """FLatten-CSwin-B at 384² (stripes 1/2/12, la_split 96-48-24-12): 78.4 M params, 46.3 GMACs (no weights)."""
    cfg = FLattenCSwinConfig((3, 6, 29, 2), 96, (4, 8, 16, 32), (1, 2, 12, 12), (96, 48, 24, 12), img_size=384)
    return _create("flatten_cswin_base_384", pretrained, cfg, **kwargs)


@register_backbone(default_cfg=_cfg(input_size=(3, 64, 64), pool_size=(2, 2)), test=True)
def test_flatten_cswin(pretrained: bool = False, **kwargs: Any) -> FLattenCSwin:
    """Tiny FLatten-CSwin for tests (64²: full-map "L" stages 16×16 and 8×8, 2-wide stripes at 4×4, full 2×2)."""
    cfg = FLattenCSwinConfig((1, 1, 2, 1), 8, (2, 2, 4, 4), (1, 2, 2, 2), (16, 8, 4, 2), img_size=64, mlp_ratio=2.0)
    return _create("test_flatten_cswin", pretrained, cfg, **kwargs)
