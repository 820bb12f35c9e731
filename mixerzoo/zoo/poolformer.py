"""PoolFormer (MetaFormer) — a host of per-stage token mixers.

Paper: "MetaFormer Is Actually What You Need for Vision", Yu et al., CVPR 2022, arXiv:2111.11418.
Original code: https://github.com/sail-sg/poolformer (commit a075575b), Apache-2.0.

Differences from the original, and why:
* Key layout is timm's (``stem.conv``, ``stages.i.downsample.conv``, ``stages.i.blocks.j.*``,
  ``head.norm``/``head.fc``), so timm's hub weights load unchanged; the official layout
  (``patch_embed``/``network.N``) loads through :func:`checkpoint_filter`.
* The head is the official one — GroupNorm(1 group) over the last feature map, spatial mean, Linear —
  not timm's pool → LayerNorm2d → Linear (logits differ; bodies are identical).
* Any token mixer from the registry can replace pooling, per stage (``mixers=``).

The module is named ``poolformer`` rather than ``metaformer`` because timm already has a module of that
name (timm's ``list_models(module=...)`` keys on the last module component).
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
from mixerzoo.zoo._builder import build_backbone, unwrap_state_dict
from mixerzoo.zoo._host import NormPoolHead, Stage, StagedBackbone, strict_filter
from mixerzoo.zoo._registry import register_backbone

__all__ = ["PoolFormer", "PoolFormerConfig", "checkpoint_filter"]


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class PoolFormerConfig:
    depths: tuple[int, ...] = (2, 2, 6, 2)
    dims: tuple[int, ...] = (64, 128, 320, 512)
    mixers: str | tuple[str, ...] = "pooling"
    mixer_options: Any = None  # dict for every stage, or one dict per stage
    mlp_ratio: float = 4.0
    layer_scale_init: float | None = 1e-5
    pool_size: int = 3

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.dims):
            raise ValueError(f"depths={self.depths!r} and dims={self.dims!r} must have the same length")


# ----------------------------------------------------------------------------------------- blocks
class GroupNorm1(nn.GroupNorm):
    """GroupNorm with one group: normalises each sample over (C, H, W) jointly."""

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__(1, num_channels, eps=eps)


class Scale(nn.Module):
    """Per-channel layer scale on ``[B, C, H, W]`` (key ``scale``, as timm's ``Scale``)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.view(1, -1, 1, 1)


class PoolFormerBlock(nn.Module):
    """``x + ls1 · mixer(GN(x))`` then ``x + ls2 · MLP(GN(x))`` on ``[B, C, H, W]``."""

    __constants__ = ["fused_residual"]  # noqa: RUF012 - TorchScript's constant list

    def __init__(
        self,
        dim: int,
        *,
        mixer: str,
        mixer_options: dict[str, Any] | None,
        mlp_ratio: float,
        layer_scale_init: float | None,
        pool_size: int,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = GroupNorm1(dim)
        self.token_mixer = make_mixer(mixer, dim, mixer_options, pool_size=pool_size)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale1 = Scale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.norm2 = GroupNorm1(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, use_conv=True)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale2 = Scale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        # a constant for TorchScript (dead branches are pruned): fuse layer scale + residual when possible
        self.fused_residual = layer_scale_init is not None and drop_path == 0

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript: the mixer must take nchw (pooling, identity, gates)
            y = self.token_mixer(self.norm1(x))
        else:
            y = run_mixer(self.token_mixer, self.norm1(x), "nchw")
        if self.fused_residual:  # x + ls1·y as one addcmul pass
            x = torch.addcmul(x, self.layer_scale1.scale.view(1, -1, 1, 1), y)
        else:
            x = x + self.drop_path1(self.layer_scale1(y))
        h = self.mlp.act(self.mlp.fc1(self.norm2(x)))
        if self.fused_residual:
            # fold the layer scale into fc2 (one pass less over the map): ls·(W h + b) = (ls·W) h + ls·b
            ls = self.layer_scale2.scale
            bias = self.mlp.fc2.bias
            if bias is not None:
                bias = bias * ls
            return x + F.conv2d(h, self.mlp.fc2.weight * ls.view(-1, 1, 1, 1), bias)
        return x + self.drop_path2(self.layer_scale2(self.mlp.fc2(h)))


class Downsample(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, 3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Stem(nn.Module):
    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, 7, 4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


# ------------------------------------------------------------------------------------------ model
class PoolFormer(StagedBackbone):
    """PoolFormer / MetaFormer with registry mixers; input ``[B, C, H, W]``, any H, W ≥ 1; stage outputs
    ``[B, C_i, H/4·2^-i, W/4·2^-i]`` (ceil)."""

    init_types = (nn.Conv2d, nn.Linear)

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 6, 2),
        dims: Sequence[int] = (64, 128, 320, 512),
        mixers: str | Sequence[str] = "pooling",
        mixer_options: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        mlp_ratio: float = 4.0,
        layer_scale_init: float | None = 1e-5,
        pool_size: int = 3,
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
        names = resolve_mixers(mixers, n, host="PoolFormer", kinds=("mixer",), layouts=("nchw", "nhwc", "nlc"))
        opts = stage_options(mixer_options, n)
        self._setup(
            in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, drop_rate=drop_rate,
            num_features=dims[-1],
        )  # fmt: skip
        dpr = stage_dpr(depths, drop_path_rate)
        with factory(device):
            self.stem = Stem(in_chans, dims[0])
            stages, self.feature_info = [], []
            for i in range(n):
                down = Downsample(dims[i - 1], dims[i]) if i > 0 else nn.Identity()
                block = {"mixer": names[i], "mixer_options": opts[i], "mlp_ratio": mlp_ratio,
                         "layer_scale_init": layer_scale_init, "pool_size": pool_size}  # fmt: skip
                stages.append(Stage(down, [PoolFormerBlock(dims[i], drop_path=r, **block) for r in dpr[i]]))
                self.feature_info.append({"num_chs": dims[i], "reduction": 4 * 2**i, "module": f"stages.{i}"})
            self.stages = nn.Sequential(*stages)
            # the official head: GroupNorm(1) on the map → global pool → dropout → Linear
            self.head = NormPoolHead(GroupNorm1(dims[-1]), dims[-1], num_classes, global_pool, drop_rate)
        self._finish(dtype)

    def _prune_norm(self, max_index: int, prune_norm: bool) -> None:
        # pruned below the last stage: the head's GroupNorm no longer fits, and the features shrink
        dim = self.feature_info[max_index]["num_chs"]
        if prune_norm or dim != self.num_features:
            self.head.norm = nn.Identity()
        self.num_features = self.head_hidden_size = dim

    def _embed(self, x: Tensor) -> Tensor:
        # the body runs in channels_last memory format (1×1 convs become plain GEMMs on CPU and GPU); the
        # logical layout stays NCHW
        return self.stem(x).contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------ checkpoint filter
def checkpoint_filter(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map the official sail-sg/poolformer layout (``patch_embed``, ``network.N``) to ours (= timm's).

    timm-layout checkpoints pass through unchanged. Every official key is consumed or the call fails.
    """
    sd = unwrap_state_dict(state_dict)
    if "stem.conv.weight" in sd:  # timm layout (timm/poolformer_*.sail_in1k): already ours
        return sd
    out: dict[str, Tensor] = {}
    # official: network.{0,2,4,6} are stages, {1,3,5} downsamplers (sail-sg/poolformer models/poolformer.py)
    for k, v in sd.items():
        nk = k
        nk = re.sub(r"^patch_embed\.proj\.", "stem.conv.", nk)
        m = re.match(r"^network\.(\d+)\.proj\.(.*)$", nk)
        if m:
            nk = f"stages.{(int(m.group(1)) + 1) // 2}.downsample.conv.{m.group(2)}"
        m = re.match(r"^network\.(\d+)\.(\d+)\.(.*)$", nk)
        if m:
            rest = m.group(3).replace("layer_scale_1", "layer_scale1.scale").replace("layer_scale_2", "layer_scale2.scale")
            nk = f"stages.{int(m.group(1)) // 2}.blocks.{m.group(2)}.{rest}"
        nk = re.sub(r"^norm\.", "head.norm.", nk)
        nk = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", nk)
        out[nk] = v
    return strict_filter(out, model, "PoolFormer")


# ------------------------------------------------------------------------------ pretrained cfgs
def _cfg(**kw: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.9,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.conv", "classifier": "head.fc", "license": "apache-2.0",
        "paper_ids": "arXiv:2111.11418", "origin_url": "https://github.com/sail-sg/poolformer", **kw,
    }  # fmt: skip


PRETRAINED: dict[str, dict[str, Any]] = {
    "poolformer_s12.sail_in1k": _cfg(hf_hub_id="timm/poolformer_s12.sail_in1k", crop_pct=0.9),
    "poolformer_s24.sail_in1k": _cfg(hf_hub_id="timm/poolformer_s24.sail_in1k", crop_pct=0.9),
    "poolformer_s36.sail_in1k": _cfg(hf_hub_id="timm/poolformer_s36.sail_in1k", crop_pct=0.9),
    "poolformer_m36.sail_in1k": _cfg(hf_hub_id="timm/poolformer_m36.sail_in1k", crop_pct=0.95),
    "poolformer_m48.sail_in1k": _cfg(hf_hub_id="timm/poolformer_m48.sail_in1k", crop_pct=0.95),
    "poolformer_s12.orig_in1k": _cfg(
        url="https://github.com/sail-sg/poolformer/releases/download/v1.0/poolformer_s12.pth.tar", crop_pct=0.9
    ),
}


def _create(variant: str, pretrained: bool, config: PoolFormerConfig, **kwargs: Any) -> PoolFormer:
    return build_backbone(PoolFormer, variant, pretrained, config, checkpoint_filter=checkpoint_filter, **kwargs)


# ------------------------------------------------------------------------------ variant builders
@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def poolformer_s12(pretrained: bool = False, **kwargs: Any) -> PoolFormer:
    """PoolFormer-S12: 11.9 M params, 1.8 GMACs, 77.2 % top-1."""
    return _create("poolformer_s12", pretrained, PoolFormerConfig((2, 2, 6, 2), (64, 128, 320, 512)), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def poolformer_s24(pretrained: bool = False, **kwargs: Any) -> PoolFormer:
    """PoolFormer-S24: 21.4 M params, 3.4 GMACs, 80.3 % top-1."""
    return _create("poolformer_s24", pretrained, PoolFormerConfig((4, 4, 12, 4), (64, 128, 320, 512)), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def poolformer_s36(pretrained: bool = False, **kwargs: Any) -> PoolFormer:
    """PoolFormer-S36: 30.9 M params, 5.0 GMACs, 81.4 % top-1."""
    cfg = PoolFormerConfig((6, 6, 18, 6), (64, 128, 320, 512), layer_scale_init=1e-6)
    return _create("poolformer_s36", pretrained, cfg, **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def poolformer_m36(pretrained: bool = False, **kwargs: Any) -> PoolFormer:
    """PoolFormer-M36: 56.2 M params, 8.8 GMACs, 82.1 % top-1."""
    cfg = PoolFormerConfig((6, 6, 18, 6), (96, 192, 384, 768), layer_scale_init=1e-6)
    return _create("poolformer_m36", pretrained, cfg, **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def poolformer_m48(pretrained: bool = False, **kwargs: Any) -> PoolFormer:
    """PoolFormer-M48: 73.5 M params, 11.6 GMACs, 82.5 % top-1."""
    cfg = PoolFormerConfig((8, 8, 24, 8), (96, 192, 384, 768), layer_scale_init=1e-6)
    return _create("poolformer_m48", pretrained, cfg, **kwargs)


@register_backbone(default_cfg=_cfg(input_size=(3, 64, 64), pool_size=(2, 2)), test=True)
def test_poolformer(pretrained: bool = False, **kwargs: Any) -> PoolFormer:
    """Tiny PoolFormer for tests."""
    return _create("test_poolformer", pretrained, PoolFormerConfig((1, 1, 1, 1), (16, 24, 32, 48)), **kwargs)
