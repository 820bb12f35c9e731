"""FLatten-PVT — Pyramid Vision Transformer (v1) with focused linear attention in every stage.

Papers: "FLatten Transformer: Vision Transformer using Focused Linear Attention", Han et al., ICCV 2023,
arXiv:2308.00442; "Pyramid Vision Transformer", Wang et al., ICCV 2021, arXiv:2102.12122.
Original code: https://github.com/LeapLabTHU/FLatten-Transformer (commit abdb115f, ``models/flatten_pvt.py``),
MIT; whai362/PVT, Apache-2.0.

Differences from the original, and why:
* Key layout groups each stage (``stages.i.patch_embed``, ``stages.i.pos_embed``, ``stages.i.blocks.j``);
  the official flat layout (``patch_embed{i}``, ``pos_embed{i}``, ``block{i}.j``) loads through
  :func:`checkpoint_filter`. The official model builds a final ``norm`` but never applies it (the call is
  commented out); it is not built here and its checkpoint keys are dropped by the filter.
* Any input size: the image is zero-padded to the patch size; stage position embeddings and the
  focused-linear positional terms are bilinearly resized to the actual token grid (bit-exact at 224²).
* Token mixers come from the registry per stage (``mixers=("spatial_reduction",) * 4`` gives a plain PVT).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.models._manipulate import checkpoint_seq
from timm.layers import register_notrace_module
from torch import Tensor, nn

from mixerzoo.zoo._blocks import (
    DropPath,
    factory,
    make_mixer,
    resolve_mixers,
    run_mixer,
    stage_dpr,
    stage_options,
    trunc_normal_,
)
from mixerzoo.zoo._blocks import FusedMlp as Mlp, PatchEmbedNHWC as PatchEmbed, fused_cpu_inference as _fused_inference  # noqa: F401
from mixerzoo.zoo._blocks import fused_mlp_residual, inference_chunk_size
from mixerzoo.zoo._builder import build_backbone
from mixerzoo.zoo._checks import check_input, image_size, refuse_scripting
from mixerzoo.zoo._host import LinearHeadBackbone, strict_filter
from mixerzoo.zoo._registry import register_backbone

__all__ = ["FLattenPVT", "FLattenPVTConfig", "checkpoint_filter"]


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class FLattenPVTConfig:
    depths: tuple[int, ...] = (2, 2, 2, 2)
    dims: tuple[int, ...] = (64, 128, 320, 512)
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    mlp_ratios: tuple[float, ...] = (8, 8, 4, 4)
    sr_ratios: tuple[int, ...] = (1, 1, 1, 1)  # FLatten's released configs: la_sr_ratios '1111'
    mixers: str | tuple[str, ...] = "focused_linear"
    mixer_options: Any = None
    img_size: int | tuple[int, int] = 224  # native resolution, int or (H, W)
    patch_size: int = 4
    qkv_bias: bool = True
    focusing_factor: float = 3.0
    kernel_size: int = 5

    def __post_init__(self) -> None:
        n = len(self.depths)
        for name in ("dims", "num_heads", "mlp_ratios", "sr_ratios"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}={getattr(self, name)!r} must have len(depths)={n} entries")


# ----------------------------------------------------------------------------------------- blocks
class PVTBlock(nn.Module):
    """``x + mixer(LN(x))`` then ``x + MLP(LN(x))`` on ``[B, H, W, C]`` (LayerNorm eps 1e-6)."""

    def __init__(
        self, dim: int, *, mixer: str, mixer_options: dict[str, Any] | None, mlp_ratio: float, drop_path: float,
        drop: float, **mixer_defaults: Any,
    ) -> None:  # fmt: skip
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = make_mixer(mixer, dim, mixer_options, proj_drop=drop, **mixer_defaults)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(run_mixer(self.attn, self.norm1(x), "nhwc"))
        fused = fused_mlp_residual(x, self.norm2, self.mlp, self)  # CPU inference: tiled, in place on x
        if fused is not None:
            return fused
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


@register_notrace_module  # a leaf for torch.fx (shape-dependent resampling)
class PosEmbedAdd(nn.Module):
    """``x + pos_embed`` on ``[B, H, W, C]``; the native-grid embedding is bilinearly resized to other grids."""

    def __init__(self, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: Tensor, pos_embed: Tensor) -> Tensor:
        B, H, W, C = x.shape
        pos = pos_embed.reshape(1, self.grid[0], self.grid[1], C)
        if (H, W) != tuple(self.grid):
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(H, W), mode="bilinear", align_corners=False)
            pos = pos.permute(0, 2, 3, 1)
        return x + pos


class PVTStage(nn.Module):
    """Patch embedding (+ learned position embedding on the native grid) and blocks, ``[B, H, W, C]``."""

    def __init__(
        self, in_dim: int, dim: int, depth: int, *, patch_size: int, grid: tuple[int, int], dpr: Sequence[float],
        **block: Any,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.grid = (grid[0], grid[1])
        self.patch_embed = PatchEmbed(in_dim, dim, patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        self.add_pos = PosEmbedAdd(self.grid)
        trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[PVTBlock(dim, drop_path=dpr[j], **block) for j in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.add_pos(self.patch_embed(x), self.pos_embed)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)  # NCHW between stages (the next patch embedding is a conv)


# ------------------------------------------------------------------------------------------ model
class FLattenPVT(LinearHeadBackbone):
    """PVT (v1) host with per-stage registry mixers (FLatten: ``focused_linear`` everywhere). Stage outputs
    ``[B, C_i, H/4·2^-i, W/4·2^-i]``, NCHW (there is no final norm; ``norm`` is a no-op)."""

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 2, 2),
        dims: Sequence[int] = (64, 128, 320, 512),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        sr_ratios: Sequence[int] = (1, 1, 1, 1),
        mixers: str | Sequence[str] = "focused_linear",
        mixer_options: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 4,
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
        names = resolve_mixers(mixers, n, host="FLattenPVT", kinds=("mixer",), layouts=("nchw", "nhwc", "nlc"))
        opts = stage_options(mixer_options, n)
        self._check_pool(global_pool)
        self._setup(
            in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, drop_rate=drop_rate,
            num_features=dims[-1],
        )  # fmt: skip
        img_h, img_w = image_size(img_size)
        dpr = stage_dpr(depths, drop_path_rate)
        with factory(device):
            stages, self.feature_info = [], []
            for i in range(n):
                reduction = patch_size * 2**i
                grid = (img_h // reduction, img_w // reduction)
                stages.append(
                    PVTStage(
                        in_chans if i == 0 else dims[i - 1], dims[i], depths[i], patch_size=patch_size if i == 0 else 2,
                        grid=grid, dpr=dpr[i], mixer=names[i], mixer_options=opts[i], mlp_ratio=mlp_ratios[i],
                        drop=proj_drop_rate, num_heads=num_heads[i], qkv_bias=qkv_bias, qkv_layout="split",
                        sr_ratio=sr_ratios[i], pos_size=grid, focusing_factor=focusing_factor,
                        kernel_size=kernel_size,
                    )
                )  # fmt: skip
                self.feature_info.append({"num_chs": dims[i], "reduction": reduction, "module": f"stages.{i}"})
            self.stages = nn.Sequential(*stages)
            self._make_head(dims[-1], num_classes, drop_rate)
        self._finish(dtype)

    def __prepare_scriptable__(self) -> nn.Module:
        refuse_scripting(self)  # torch.jit.script: one clear line instead of a TorchScript frontend error
        return self

    def _embed(self, x: Tensor) -> Tensor:
        return x  # no stem: every stage starts with its own patch embedding

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        blocks = (
            r"^stages\.(\d+)"
            if coarse
            else [(r"^stages\.(\d+)\.(?:patch_embed|pos_embed)", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None)]
        )
        return {"stem": r"^stages\.0\.(?:patch_embed|pos_embed)", "blocks": blocks}

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` → ``[B, num_features, ⌈H/32⌉, ⌈W/32⌉]``."""
        if not torch.jit.is_scripting():
            check_input(self, x)  # one-line error naming the model and (B, C, H, W)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        p = self.stages[0].patch_embed.patch_size
        image_bytes = -(-x.shape[-2] // p) * -(-x.shape[-1] // p) * self.feature_info[0]["num_chs"] * x.element_size()
        n = inference_chunk_size(x, image_bytes, self)
        if n is None:
            return self.stages(x)
        # CPU inference: the first three stages in image chunks (same outputs, no page-faulting whole-batch
        # buffers; measured best at 224² against chunking one or two stages)
        head = self.stages[:3]
        return self.stages[3:](torch.cat([head(c) for c in x.split(n)]))


# ------------------------------------------------------------------------------ checkpoint filter
def checkpoint_filter(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Official FLatten-PVT layout (LeapLabTHU/FLatten-Transformer ``models/flatten_pvt.py``) → ours; ours passes
    through.

    Every source key is renamed, or dropped for a stated reason, or the call fails.
    """
    sd = dict(state_dict["model"]) if "model" in state_dict else dict(state_dict)
    if "patch_embed1.proj.weight" not in sd:
        return sd
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k in ("norm.weight", "norm.bias"):
            continue  # built but never applied by the official forward (``# x = self.norm(x)``)
        nk = re.sub(r"^patch_embed(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.patch_embed.", k)
        nk = re.sub(r"^pos_embed(\d)$", lambda m: f"stages.{int(m.group(1)) - 1}.pos_embed", nk)
        nk = re.sub(r"^block(\d)\.(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.", nk)
        out[nk] = v
    return strict_filter(out, model, "FLattenPVT")


# ------------------------------------------------------------------------------ pretrained cfgs
def _cfg(**kw: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "stages.0.patch_embed.proj", "classifier": "head", "license": "mit",
        "paper_ids": "arXiv:2308.00442", "origin_url": "https://github.com/LeapLabTHU/FLatten-Transformer", **kw,
    }  # fmt: skip


PRETRAINED: dict[str, dict[str, Any]] = {
    "flatten_pvt_tiny.orig_in1k": _cfg(url="https://cloud.tsinghua.edu.cn/f/3ab1d773f19d45648690/?dl=1"),
}


def _create(variant: str, pretrained: bool, config: FLattenPVTConfig, **kwargs: Any) -> FLattenPVT:
    return build_backbone(FLattenPVT, variant, pretrained, config, checkpoint_filter=checkpoint_filter, **kwargs)


# ------------------------------------------------------------------------------ variant builders
@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def flatten_pvt_tiny(pretrained: bool = False, **kwargs: Any) -> FLattenPVT:
    """FLatten-PVT-T: 12.2 M params, 2.0 GMACs, 77.8 % top-1."""
    return _create("flatten_pvt_tiny", pretrained, FLattenPVTConfig((2, 2, 2, 2)), **kwargs)


@register_backbone(default_cfg=_cfg())
def flatten_pvt_small(pretrained: bool = False, **kwargs: Any) -> FLattenPVT:
    """FLatten-PVT-S: 21.7 M params, 4.0 GMACs (no released weights)."""
    return _create("flatten_pvt_small", pretrained, FLattenPVTConfig((3, 4, 6, 3)), **kwargs)


@register_backbone(default_cfg=_cfg())
def flatten_pvt_medium(pretrained: bool = False, **kwargs: Any) -> FLattenPVT:
    """FLatten-PVT-M (no released weights)."""
    return _create("flatten_pvt_medium", pretrained, FLattenPVTConfig((3, 4, 18, 3)), **kwargs)


@register_backbone(default_cfg=_cfg())
def flatten_pvt_large(pretrained: bool = False, **kwargs: Any) -> FLattenPVT:
    """FLatten-PVT-L (no released weights)."""
    return _create("flatten_pvt_large", pretrained, FLattenPVTConfig((3, 8, 27, 3)), **kwargs)


@register_backbone(default_cfg=_cfg(input_size=(3, 64, 64), pool_size=(2, 2)), test=True)
def test_flatten_pvt(pretrained: bool = False, **kwargs: Any) -> FLattenPVT:
    """Tiny FLatten-PVT for tests."""
    cfg = FLattenPVTConfig((1, 1, 1, 1), (16, 32, 64, 64), (1, 2, 2, 2), (2, 2, 2, 2), img_size=64)
    return _create("test_flatten_pvt", pretrained, cfg, **kwargs)
