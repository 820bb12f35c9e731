"""FLatten-PVTv2 — Pyramid Vision Transformer v2 with focused linear attention (and plain PVTv2).

Papers: "FLatten Transformer: Vision Transformer using Focused Linear Attention", Han et al., ICCV 2023,
arXiv:2308.00442; "PVT v2: Improved Baselines with Pyramid Vision Transformer", Wang et al., CVMJ 2022,
arXiv:2106.13797.
Original code: https://github.com/LeapLabTHU/FLatten-Transformer (commit abdb115f, ``models/flatten_pvt_v2.py``),
MIT; whai362/PVT, Apache-2.0.

Differences from the original, and why:
* Key layout is timm's ``pvt_v2`` (``patch_embed``, ``stages.i.downsample`` for the overlapping patch embedding
  of stages 1–3, ``stages.i.blocks.j``, ``mlp.dwconv``, ``stages.i.norm``), so timm's PVTv2 weights load into
  the plain ``spatial_reduction`` hosts (``pvt_v2_b0``…``b5``) unchanged; the official flat layout
  (``patch_embed{i}``, ``block{i}.j``, ``norm{i}``, ``mlp.dwconv.dwconv``) loads through :func:`checkpoint_filter`.
* FLatten's released configs use focused linear attention in every stage without spatial reduction
  (``attn_type='LLLL'``, ``la_sr_ratios='1111'``); that is the default here. ``sr_ratios`` applies to whichever
  mixer a stage uses (plain PVTv2: ``(8, 4, 2, 1)`` with ``spatial_reduction``).
* Any input size: the overlapping patch embeddings already accept any size; the focused-linear positional terms
  are learned for the native token grid and bilinearly resized for other grids (bit-exact at the native size).
* Token mixers come from the registry per stage (``mixers=``), like the other FLatten hosts.
"""

from __future__ import annotations

import math
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
from mixerzoo.zoo._builder import build_backbone
from mixerzoo.zoo._checks import image_size, refuse_scripting
from mixerzoo.zoo._host import LinearHeadBackbone, strict_filter
from mixerzoo.zoo._registry import register_backbone

__all__ = ["FLattenPVTv2", "FLattenPVTv2Config", "checkpoint_filter"]


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class FLattenPVTv2Config:
    depths: tuple[int, ...] = (2, 2, 2, 2)
    dims: tuple[int, ...] = (32, 64, 160, 256)
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    mlp_ratios: tuple[float, ...] = (8, 8, 4, 4)
    sr_ratios: tuple[int, ...] = (1, 1, 1, 1)  # FLatten's released configs: la_sr_ratios '1111'
    mixers: str | tuple[str, ...] = "focused_linear"
    mixer_options: Any = None  # dict for every stage, or one dict per stage
    img_size: int | tuple[int, int] = 224  # native resolution, int or (H, W): sizes the focused-linear positions
    qkv_bias: bool = True
    focusing_factor: float = 3.0
    kernel_size: int = 5

    def __post_init__(self) -> None:
        n = len(self.depths)
        for name in ("dims", "num_heads", "mlp_ratios", "sr_ratios"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}={getattr(self, name)!r} must have len(depths)={n} entries")


# ----------------------------------------------------------------------------------------- blocks
class OverlapPatchEmbed(nn.Module):
    """Conv ``k×k`` stride ``s`` padding ``k//2`` → LayerNorm: ``[B, C, H, W]`` → ``[B, H', W', D]``."""

    def __init__(self, in_chans: int, dim: int, *, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class MlpDWConv(nn.Module):
    """PVTv2 convolutional feed-forward: fc1 → 3×3 depthwise conv → GELU → fc2, on ``[B, H, W, C]``."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(x)
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.drop(self.act(x))
        return self.drop(self.fc2(x))


class PVTv2Block(nn.Module):
    """``x + mixer(LN(x))`` then ``x + MLP(LN(x))`` on ``[B, H, W, C]`` (LayerNorm eps 1e-6)."""

    def __init__(
        self, dim: int, *, mixer: str, mixer_options: dict[str, Any] | None, mlp_ratio: float, drop_path: float,
        drop: float, **mixer_defaults: Any,
    ) -> None:  # fmt: skip
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = make_mixer(mixer, dim, mixer_options, proj_drop=drop, **mixer_defaults)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MlpDWConv(dim, int(dim * mlp_ratio), drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(run_mixer(self.attn, self.norm1(x), "nhwc"))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


class PVTv2Stage(nn.Module):
    """(Overlapping patch embedding,) blocks, LayerNorm; ``[B, C, H, W]`` (or the stem's ``[B, H, W, C]``) in,
    ``[B, C, H, W]`` out."""

    def __init__(self, in_dim: int, dim: int, depth: int, *, downsample: bool, dpr: Sequence[float], **block: Any):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = OverlapPatchEmbed(in_dim, dim, patch_size=3, stride=2) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[PVTv2Block(dim, drop_path=dpr[j], **block) for j in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------ model
class FLattenPVTv2(LinearHeadBackbone):
    """PVTv2 host with per-stage registry mixers (FLatten: ``focused_linear`` everywhere). Stage outputs
    ``[B, C_i, H/4·2^-i, W/4·2^-i]`` (ceil), NCHW (each stage ends in its own norm; ``norm`` is a no-op)."""

    stem_pattern = r"^patch_embed"
    final_norm_pattern = r"^stages\.(\d+)\.norm"

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 2, 2),
        dims: Sequence[int] = (32, 64, 160, 256),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        sr_ratios: Sequence[int] = (1, 1, 1, 1),
        mixers: str | Sequence[str] = "focused_linear",
        mixer_options: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        img_size: int | Sequence[int] = 224,
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
        names = resolve_mixers(mixers, n, host="FLattenPVTv2", kinds=("mixer",), layouts=("nchw", "nhwc", "nlc"))
        opts = stage_options(mixer_options, n)
        self._check_pool(global_pool)
        self._setup(
            in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, drop_rate=drop_rate,
            num_features=dims[-1],
        )  # fmt: skip
        dpr = stage_dpr(depths, drop_path_rate)
        with factory(device):
            self.patch_embed = OverlapPatchEmbed(in_chans, dims[0], patch_size=7, stride=4)
            stages, self.feature_info = [], []
            gh, gw = (s // 4 for s in image_size(img_size))  # the official token grids: 56, 28, 14, 7 at 224²
            for i in range(n):
                if i > 0:
                    gh, gw = gh // 2, gw // 2
                stages.append(
                    PVTv2Stage(
                        dims[i - 1] if i > 0 else dims[0], dims[i], depths[i], downsample=i > 0, dpr=dpr[i],
                        mixer=names[i], mixer_options=opts[i], mlp_ratio=mlp_ratios[i], drop=proj_drop_rate,
                        num_heads=num_heads[i], qkv_bias=qkv_bias, qkv_layout="split", sr_ratio=sr_ratios[i],
                        pos_size=(gh, gw), focusing_factor=focusing_factor, kernel_size=kernel_size,
                    )
                )  # fmt: skip
                self.feature_info.append({"num_chs": dims[i], "reduction": 4 * 2**i, "module": f"stages.{i}"})
            self.stages = nn.Sequential(*stages)
            self._make_head(dims[-1], num_classes, drop_rate)
        self._finish(dtype)

    def __prepare_scriptable__(self) -> nn.Module:
        refuse_scripting(self)  # torch.jit.script: one clear line instead of a TorchScript frontend error
        return self

    def _init_weights(self, m: nn.Module) -> None:
        super()._init_weights(m)  # Linear: truncated normal
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _embed(self, x: Tensor) -> Tensor:
        return self.patch_embed(x)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        if prune_end:  # the head is sized for the last stage, which is gone
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take


# ------------------------------------------------------------------------------ checkpoint filter
_RULES = (
    # official patch_embed1 is the stem; patch_embed{2,3,4} start stages 1–3 (timm's checkpoint_filter_fn)
    (re.compile(r"^patch_embed1\."), lambda m: "patch_embed."),
    (re.compile(r"^patch_embed([2-9])\."), lambda m: f"stages.{int(m.group(1)) - 1}.downsample."),
    # official block{i}.{j} / norm{i} (1-based stages) → stages.{i-1}.blocks.{j} / stages.{i-1}.norm
    (re.compile(r"^block(\d)\.(\d+)\."), lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
    (re.compile(r"^norm(\d)\."), lambda m: f"stages.{int(m.group(1)) - 1}.norm."),
    # official DWConv wrapper module (``mlp.dwconv.dwconv``) → the conv itself (timm)
    (re.compile(r"\.mlp\.dwconv\.dwconv\."), lambda m: ".mlp.dwconv."),
    # official / timm ``drop_path`` are parameter-free; block drop-path pairs need no rename
)


def checkpoint_filter(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Official FLatten-PVTv2 / whai362 PVTv2 layout (``models/flatten_pvt_v2.py``) → ours (= timm's ``pvt_v2``);
    ours and timm's pass through.

    Every source key is renamed by one rule above or the call fails naming it.
    """
    sd = dict(state_dict["model"]) if "model" in state_dict else dict(state_dict)
    out: dict[str, Tensor] = {}
    if "patch_embed1.proj.weight" in sd:
        for k, v in sd.items():
            nk = k
            for pattern, repl in _RULES:
                nk = pattern.sub(repl, nk)
            out[nk] = v
    else:
        out = sd
    return strict_filter(out, model, "FLattenPVTv2")


# ------------------------------------------------------------------------------ pretrained cfgs
def _cfg(**kw: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "mit",
        "paper_ids": "arXiv:2308.00442", "origin_url": "https://github.com/LeapLabTHU/FLatten-Transformer", **kw,
    }  # fmt: skip


_PVT = {"paper_ids": "arXiv:2106.13797", "origin_url": "https://github.com/whai362/PVT", "crop_pct": 0.9,
        "license": "apache-2.0"}  # fmt: skip
PRETRAINED: dict[str, dict[str, Any]] = {
    "flatten_pvt_v2_b0.orig_in1k": _cfg(url="https://cloud.tsinghua.edu.cn/f/5d1f01532b104da28e7b/?dl=1"),
    **{f"pvt_v2_b{i}.in1k": _cfg(hf_hub_id=f"timm/pvt_v2_b{i}.in1k", **_PVT) for i in range(6)},
}


def _create(variant: str, pretrained: bool, config: FLattenPVTv2Config, **kwargs: Any) -> FLattenPVTv2:
    return build_backbone(FLattenPVTv2, variant, pretrained, config, checkpoint_filter=checkpoint_filter, **kwargs)


_B0 = {"depths": (2, 2, 2, 2), "dims": (32, 64, 160, 256)}
_B1 = {"depths": (2, 2, 2, 2), "dims": (64, 128, 320, 512)}
_B2 = {"depths": (3, 4, 6, 3), "dims": (64, 128, 320, 512)}
_B3 = {"depths": (3, 4, 18, 3), "dims": (64, 128, 320, 512)}
_B4 = {"depths": (3, 8, 27, 3), "dims": (64, 128, 320, 512)}
_B5 = {"depths": (3, 6, 40, 3), "dims": (64, 128, 320, 512), "mlp_ratios": (4, 4, 4, 4)}
_PLAIN = {"mixers": "spatial_reduction", "sr_ratios": (8, 4, 2, 1)}


# ------------------------------------------------------------------------------ variant builders
@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def flatten_pvt_v2_b0(pretrained: bool = False, **kwargs: Any) -> FLattenPVTv2:
    """FLatten-PVTv2-B0: 3.6 M params, 0.6 GMACs, 71.1 % top-1."""
    return _create("flatten_pvt_v2_b0", pretrained, FLattenPVTv2Config(**_B0), **kwargs)


@register_backbone(default_cfg=_cfg())
def flatten_pvt_v2_b1(pretrained: bool = False, **kwargs: Any) -> FLattenPVTv2:
    """FLatten-PVTv2-B1: 12.9 M params, 2.2 GMACs (no released weights)."""
    return _create("flatten_pvt_v2_b1", pretrained, FLattenPVTv2Config(**_B1), **kwargs)


@register_backbone(default_cfg=_cfg())
def flatten_pvt_v2_b2(pretrained: bool = False, **kwargs: Any) -> FLattenPVTv2:
    """FLatten-PVTv2-B2: 22.5 M params, 4.3 GMACs (no released weights)."""
    return _create("flatten_pvt_v2_b2", pretrained, FLattenPVTv2Config(**_B2), **kwargs)


@register_backbone(default_cfg=_cfg())
def flatten_pvt_v2_b3(pretrained: bool = False, **kwargs: Any) -> FLattenPVTv2:
    """FLatten-PVTv2-B3: 38.3 M params, 7.3 GMACs (no released weights)."""
    return _create("flatten_pvt_v2_b3", pretrained, FLattenPVTv2Config(**_B3), **kwargs)


@register_backbone(default_cfg=_cfg())
def flatten_pvt_v2_b4(pretrained: bool = False, **kwargs: Any) -> FLattenPVTv2:
    """FLatten-PVTv2-B4: 51.8 M params, 10.7 GMACs (no released weights)."""
    return _create("flatten_pvt_v2_b4", pretrained, FLattenPVTv2Config(**_B4), **kwargs)


@register_backbone(default_cfg=_cfg())
def flatten_pvt_v2_b5(pretrained: bool = False, **kwargs: Any) -> FLattenPVTv2:
    """FLatten-PVTv2-B5: 67.1 M params, 12.4 GMACs (no released weights; not in FLatten's README)."""
    return _create("flatten_pvt_v2_b5", pretrained, FLattenPVTv2Config(**_B5), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def pvt_v2_b0(pretrained: bool = False, **kwargs: Any) -> FLattenPVTv2:
    """Plain PVTv2-B0 (``spatial_reduction`` mixers, sr 8/4/2/1; timm's weights): 3.7 M params."""
    return _create("pvt_v2_b0", pretrained, FLattenPVTv2Config(**_B0, **_PLAIN), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def pvt_v2_b1(pretrained: bool = False, **kwargs: Any) -> FLattenPVTv2:
    """Plain PVTv2-B1 (timm's weights): 14.0 M params."""
    return _create("pvt_v2_b1", pretrained, FLattenPVTv2Config(**_B1, **_PLAIN), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def pvt_v2_b2(pretrained: bool = False, **kwargs: Any) -> FLattenPVTv2:
    """Plain PVTv2-B2 (timm's weights): 25.4 M params."""
    return _create("pvt_v2_b2", pretrained, FLattenPVTv2Config(**_B2, **_PLAIN), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def pvt_v2_b3(pretrained: bool = False, **kwargs: Any) -> FLattenPVTv2:
    """Plain PVTv2-B3 (timm's weights): 45.2 M params."""
    return _create("pvt_v2_b3", pretrained, FLattenPVTv2Config(**_B3, **_PLAIN), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def pvt_v2_b4(pretrained: bool = False, **kwargs: Any) -> FLattenPVTv2:
    """Plain PVTv2-B4 (timm's weights): 62.6 M params."""
    return _create("pvt_v2_b4", pretrained, FLattenPVTv2Config(**_B4, **_PLAIN), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def pvt_v2_b5(pretrained: bool = False, **kwargs: Any) -> FLattenPVTv2:
    """Plain PVTv2-B5 (timm's weights): 82.0 M params."""
    return _create("pvt_v2_b5", pretrained, FLattenPVTv2Config(**_B5, **_PLAIN), **kwargs)


@register_backbone(default_cfg=_cfg(input_size=(3, 64, 64), pool_size=(2, 2)), test=True)
def test_flatten_pvt_v2(pretrained: bool = False, **kwargs: Any) -> FLattenPVTv2:
    """Tiny FLatten-PVTv2 for tests."""
    cfg = FLattenPVTv2Config((1, 1, 1, 1), (16, 32, 64, 64), (1, 2, 2, 2), (2, 2, 2, 2), img_size=64)
    return _create("test_flatten_pvt_v2", pretrained, cfg, **kwargs)
