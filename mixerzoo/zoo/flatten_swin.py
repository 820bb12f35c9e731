"""FLatten-Swin — Swin Transformer with focused linear attention in its early stages (and plain Swin).

Papers: "FLatten Transformer: Vision Transformer using Focused Linear Attention", Han et al., ICCV 2023,
arXiv:2308.00442; "Swin Transformer", Liu et al., ICCV 2021, arXiv:2103.14030.
Original code: https://github.com/LeapLabTHU/FLatten-Transformer (commit abdb115f, ``models/flatten_swin.py``),
MIT; microsoft/Swin-Transformer, MIT.

Differences from the original, and why:
* Key layout is timm's Swin (``layers.i.downsample`` at the start of stage i, ``head.fc``; Swin's
  ``relative_position_index``/``attn_mask`` are recomputed, not stored), so timm's Swin weights load into the
  plain ``window`` host unchanged; the official FLatten layout loads through :func:`checkpoint_filter`.
* FLatten's released configs give focused-linear ("L") stages a window at least as large as their map
  (56 at 224², 96 at 384²), i.e. one window = the whole map, no shift. Here an "L" stage *is* global
  attention over the map; its per-token positional term is learned for the native map and bilinearly
  resized for other input sizes (bit-exact at the native size). Softmax ("S") stages are Swin W-MSA /
  SW-MSA (window 7, or 12 when FLatten's window exceeds 56).
* Any input size: zero padding to a multiple of the patch size, odd maps padded before patch merging,
  and window attention pads and masks (see ``mixerzoo.plugins.window``).
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
)
from mixerzoo.zoo._blocks import FusedMlp as Mlp, PatchEmbedNHWC as PatchEmbed, fused_cpu_inference as _fused_inference  # noqa: F401
from mixerzoo.zoo._blocks import fused_mlp_residual, inference_chunk_size
from mixerzoo.zoo._builder import build_backbone
from mixerzoo.zoo._checks import check_input, image_size, refuse_scripting
from mixerzoo.zoo._host import StagedBackbone, strict_filter
from mixerzoo.zoo._registry import register_backbone

__all__ = ["FLattenSwin", "FLattenSwinConfig", "checkpoint_filter"]


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class FLattenSwinConfig:
    depths: tuple[int, ...] = (2, 2, 6, 2)
    embed_dim: int = 96
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    mixers: str | tuple[str, ...] = ("focused_linear", "focused_linear", "window", "window")
    mixer_options: Any = None  # dict for every stage, or one dict per stage
    window_size: int = 7  # window of the softmax ("window") stages
    img_size: int | tuple[int, int] = 224  # native resolution, int or (H, W): sizes the focused-linear positions
    patch_size: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    focusing_factor: float = 3.0
    kernel_size: int = 5

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths={self.depths!r} and num_heads={self.num_heads!r} must have the same length")


# ----------------------------------------------------------------------------------------- blocks
@register_notrace_module  # a leaf for torch.fx (shape-dependent padding / dispatch)
class PatchMerging(nn.Module):
    """Swin patch merging (timm channel order x00|x10|x01|x11) → LayerNorm → Linear(4C → 2C), NHWC."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
            H, W = H + H % 2, W + W % 2
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class SwinBlock(nn.Module):
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
        fused = fused_mlp_residual(x, self.norm2, self.mlp, self)  # CPU inference: tiled, in place on x
        if fused is not None:
            return fused
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


class SwinStage(nn.Module):
    def __init__(
        self, in_dim: int, dim: int, depth: int, *, downsample: bool, dpr: Sequence[float], window_size: int,
        **block: Any,
    ) -> None:  # fmt: skip
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = PatchMerging(in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(
            *[
                SwinBlock(dim, drop_path=dpr[j], window_size=window_size, shift_size=0 if j % 2 == 0 else window_size // 2, **block)
                for j in range(depth)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


# ------------------------------------------------------------------------------------------ model
class FLattenSwin(StagedBackbone):
    """Swin host with per-stage registry mixers (FLatten: ``focused_linear`` ×2, ``window`` ×2). Stage outputs
    ``[B, C_i, H/4·2^-i, W/4·2^-i]``, NCHW or NHWC; ``forward_features`` is normed. The head is timm Swin's
    (``head.fc``: average → dropout → Linear)."""

    output_fmts = ("NCHW", "NHWC")
    no_weight_decay_suffixes = ("relative_position_bias_table", "positional_encoding")
    stem_pattern = r"^patch_embed"
    final_norm_pattern = r"^norm"
    body_name = "layers"

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 6, 2),
        embed_dim: int = 96,
        num_heads: Sequence[int] = (3, 6, 12, 24),
        mixers: str | Sequence[str] = ("focused_linear", "focused_linear", "window", "window"),
        mixer_options: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        window_size: int = 7,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 4,
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
        names = resolve_mixers(mixers, n, host="FLattenSwin", kinds=("mixer",), layouts=("nchw", "nhwc", "nlc"))
        opts = stage_options(mixer_options, n)
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool={global_pool!r}: FLattenSwin supports 'avg' or ''")
        img_h, img_w = image_size(img_size)
        dims = [embed_dim * 2**i for i in range(n)]
        self._setup(
            in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, drop_rate=drop_rate,
            num_features=dims[-1],
        )  # fmt: skip
        dpr = stage_dpr(depths, drop_path_rate)
        with factory(device):
            self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
            layers, self.feature_info = [], []
            for i in range(n):
                grid = (img_h // patch_size // 2**i, img_w // patch_size // 2**i)
                layers.append(
                    SwinStage(
                        dims[max(i - 1, 0)], dims[i], depths[i], downsample=i > 0, dpr=dpr[i], window_size=window_size,
                        mixer=names[i], mixer_options=opts[i], mlp_ratio=mlp_ratio, drop=proj_drop_rate,
                        num_heads=num_heads[i], qkv_bias=qkv_bias, qkv_layout="fused", pos_size=grid,
                        focusing_factor=focusing_factor, kernel_size=kernel_size,
                    )
                )  # fmt: skip
                self.feature_info.append({"num_chs": dims[i], "reduction": patch_size * 2**i, "module": f"layers.{i}"})
            self.layers = nn.Sequential(*layers)
            self.norm = nn.LayerNorm(dims[-1])
            self.head = _Head(dims[-1], num_classes, drop_rate)
        self._finish(dtype)

    def __prepare_scriptable__(self) -> nn.Module:
        refuse_scripting(self)  # torch.jit.script: one clear line instead of a TorchScript frontend error
        return self

    def _body(self) -> nn.Sequential:
        return self.layers  # timm's Swin key layout: layers.i

    def _set_body(self, body: nn.Sequential) -> None:
        self.layers = body

    def _embed(self, x: Tensor) -> Tensor:
        return self.patch_embed(x)

    def _intermediates_out(self, x: Tensor, full: bool) -> Tensor:
        return (self.norm(x) if full else x).permute(0, 3, 1, 2)  # the final norm only on a full pass

    def _intermediate(self, i: int, x: Tensor, norm: bool, last: bool, output_fmt: str) -> Tensor:
        x = self.norm(x) if norm and last else x  # norm=True: the final LayerNorm on the last output
        return x.permute(0, 3, 1, 2) if output_fmt == "NCHW" else x

    def _prune_norm(self, max_index: int, prune_norm: bool) -> None:
        if prune_norm:
            self.norm = nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None and global_pool not in ("avg", ""):
            raise ValueError(f"global_pool={global_pool!r}: FLattenSwin supports 'avg' or ''")
        super().reset_classifier(num_classes, global_pool)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` → normed ``[B, num_features, ⌈H/32⌉, ⌈W/32⌉]``."""
        if not torch.jit.is_scripting():
            check_input(self, x)  # one-line error naming the model and (B, C, H, W)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.layers, self.patch_embed(x))
        else:
            x = self._forward_layers(x)
        return self.norm(x).permute(0, 3, 1, 2)

    def _forward_layers(self, x: Tensor) -> Tensor:
        """patch_embed + layers. In CPU inference the first two (high-resolution) stages run in image chunks
        (``inference_chunk_size``: same outputs, no page-faulting whole-batch buffers; measured best at 224²
        against chunking one or three stages)."""
        p = self.patch_embed.patch_size
        grid = -(-x.shape[-2] // p) * -(-x.shape[-1] // p)
        image_bytes = grid * self.patch_embed.proj.out_channels * x.element_size()
        n = inference_chunk_size(x, image_bytes, self)
        if n is None:
            return self.layers(self.patch_embed(x))
        head = self.layers[:2]
        x = torch.cat([head(self.patch_embed(c)) for c in x.split(n)])
        return self.layers[2:](x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, self.global_pool, pre_logits=pre_logits)


class _Head(nn.Module):
    """Global average → dropout → ``fc`` (timm's Swin ``head.fc`` key)."""

    def __init__(self, dim: int, num_classes: int, drop_rate: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_features: int, num_classes: int, global_pool: str | None, ref: Tensor) -> None:
        fc = nn.Linear(num_features, num_classes, device=ref.device, dtype=ref.dtype) if num_classes > 0 else None
        self.fc = (fc if fc is not None else nn.Identity()).train(self.training)

    def forward(self, x: Tensor, global_pool: str, pre_logits: bool = False) -> Tensor:
        if global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


# ------------------------------------------------------------------------------ checkpoint filter
_BUFFERS = re.compile(r"\.(relative_position_index|attn_mask)$")


def checkpoint_filter(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Official FLatten-Swin / microsoft Swin layout (FLatten-Transformer ``models/flatten_swin.py``) → ours
    (= timm's Swin).

    Every source key is renamed, or dropped for a stated reason, or the call fails.
    """
    sd = dict(state_dict["model"]) if "model" in state_dict else dict(state_dict)
    old = "layers.0.downsample.reduction.weight" in sd  # original: downsample at the END of stage i
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if _BUFFERS.search(k):
            continue  # Swin's index / shift-mask buffers: recomputed from the config (timm does the same)
        nk = k
        if old:
            nk = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", nk)
            nk = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", nk)
        out[nk] = v
    return strict_filter(out, model, "FLattenSwin")


# ------------------------------------------------------------------------------ pretrained cfgs
def _cfg(**kw: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "patch_embed.proj", "classifier": "head.fc", "license": "mit",
        "paper_ids": "arXiv:2308.00442", "origin_url": "https://github.com/LeapLabTHU/FLatten-Transformer", **kw,
    }  # fmt: skip


_TC = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"
_SWIN = {"paper_ids": "arXiv:2103.14030", "origin_url": "https://github.com/microsoft/Swin-Transformer", "crop_pct": 0.9}
PRETRAINED: dict[str, dict[str, Any]] = {
    "flatten_swin_tiny.orig_in1k": _cfg(url=_TC.format("e1518e76703e4e57a7f2")),
    "flatten_swin_small.orig_in1k": _cfg(url=_TC.format("94188e52af354bf4a88b")),
    "flatten_swin_base.orig_in1k": _cfg(url=_TC.format("7a9e5186bad04e7fb3a9")),
    "flatten_swin_base_384.orig_in1k": _cfg(
        url=_TC.format("0d0330cf2e5249f1abb6"), input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0
    ),
    "swin_tiny_patch4_window7_224.ms_in1k": _cfg(hf_hub_id="timm/swin_tiny_patch4_window7_224.ms_in1k", **_SWIN),
    "swin_small_patch4_window7_224.ms_in1k": _cfg(hf_hub_id="timm/swin_small_patch4_window7_224.ms_in1k", **_SWIN),
    "swin_base_patch4_window7_224.ms_in1k": _cfg(hf_hub_id="timm/swin_base_patch4_window7_224.ms_in1k", **_SWIN),
}


def _create(variant: str, pretrained: bool, config: FLattenSwinConfig, **kwargs: Any) -> FLattenSwin:
    return build_backbone(FLattenSwin, variant, pretrained, config, checkpoint_filter=checkpoint_filter, **kwargs)


_T = {"depths": (2, 2, 6, 2), "embed_dim": 96, "num_heads": (3, 6, 12, 24)}
_S = {"depths": (2, 2, 18, 2), "embed_dim": 96, "num_heads": (3, 6, 12, 24)}
_B = {"depths": (2, 2, 18, 2), "embed_dim": 128, "num_heads": (4, 8, 16, 32)}
_PLAIN = ("window",) * 4


# ------------------------------------------------------------------------------ variant builders
@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def flatten_swin_tiny(pretrained: bool = False, **kwargs: Any) -> FLattenSwin:
    """FLatten-Swin-T: 29.2 M params, 4.5 GMACs, 82.1 % top-1."""
    return _create("flatten_swin_tiny", pretrained, FLattenSwinConfig(**_T), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def flatten_swin_small(pretrained: bool = False, **kwargs: Any) -> FLattenSwin:
    """FLatten-Swin-S: 50.5 M params, 8.8 GMACs, 83.5 % top-1."""
    return _create("flatten_swin_small", pretrained, FLattenSwinConfig(**_S), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def flatten_swin_base(pretrained: bool = False, **kwargs: Any) -> FLattenSwin:
    """FLatten-Swin-B: 89.0 M params, 15.5 GMACs, 83.8 % top-1."""
    return _create("flatten_swin_base", pretrained, FLattenSwinConfig(**_B), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def flatten_swin_base_384(pretrained: bool = False, **kwargs: Any) -> FLattenSwin:
    """FLatten-Swin-B at 384² (softmax stages use window 12): 85.0 % top-1."""
    return _create("flatten_swin_base_384", pretrained, FLattenSwinConfig(**_B, window_size=12, img_size=384), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def swin_tiny_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> FLattenSwin:
    """Plain Swin-T (``window`` mixers everywhere; timm's weights): 28.3 M params, 81.2 % top-1."""
    return _create("swin_tiny_patch4_window7_224", pretrained, FLattenSwinConfig(**_T, mixers=_PLAIN), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def swin_small_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> FLattenSwin:
    """Plain Swin-S (timm's weights): 49.6 M params, 83.2 % top-1."""
    return _create("swin_small_patch4_window7_224", pretrained, FLattenSwinConfig(**_S, mixers=_PLAIN), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def swin_base_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> FLattenSwin:
    """Plain Swin-B (timm's weights): 87.8 M params, 83.5 % top-1."""
    return _create("swin_base_patch4_window7_224", pretrained, FLattenSwinConfig(**_B, mixers=_PLAIN), **kwargs)


@register_backbone(default_cfg=_cfg(input_size=(3, 64, 64), pool_size=(2, 2)), test=True)
def test_flatten_swin(pretrained: bool = False, **kwargs: Any) -> FLattenSwin:
    """Tiny FLatten-Swin for tests (window 2 so the softmax stage shifts)."""
    cfg = FLattenSwinConfig((1, 1, 2, 1), 16, (1, 2, 2, 4), window_size=2, img_size=64)
    return _create("test_flatten_swin", pretrained, cfg, **kwargs)
