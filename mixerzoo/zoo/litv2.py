"""LITv2 — a hierarchical host whose late stages use HiLo attention.

Paper: "Fast Vision Transformers with HiLo Attention", Pan et al., NeurIPS 2022, arXiv:2205.13213.
Original code: https://github.com/ziplab/LITv2 (commit 7501c866), Apache-2.0.

Differences from the original, and why:
* Deformable token merging is :func:`deform_conv2x2_nhwc` (gathers + one GEMM on channels-last maps, autograd
  by PyTorch): the maths of ``torchvision.ops.deform_conv2d`` and of the official CUDA extension, same (dy, dx)
  tap-major offset layout (checked against the repo's ``deform_conv2d_naive.py``), so no custom build and a
  fast CPU path (tested against
  torchvision, forward and gradients).
* CPU fp32 inference runs each block's MLP sub-layer a few images at a time (same ops, no autograd), see
  ``_mlp_residual_inference``.
* Key layout is timm-style (``stages.i.downsample`` at the *start* of stage i, ``head`` a Linear); the
  official layout (``layers.i.downsample`` at the end of stage i, ``norm_layer``, ``mlp.dwconv.dwconv``)
  loads through :func:`checkpoint_filter`.
* Any input size (the official classification model asserts its training size): the image is zero-padded
  to a multiple of the patch size, odd maps to even before token merging, and HiLo pads and masks its
  windows (see ``mixerzoo.plugins.hilo``). Identical to the original at multiples of 32.
* Token mixers come from the registry per stage (``mixers=``); ``"none"`` is LITv2's MLP-only block
  (``has_msa = 0``: no ``norm1``/``attn``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import Tensor, nn

from mixerzoo.zoo._blocks import (
    DropPath,
    eager_only,
    factory,
    make_mixer,
    resolve_mixers,
    run_mixer,
    stage_dpr,
    stage_options,
)
from mixerzoo.zoo._blocks import fused_cpu_inference as _fused_inference
from mixerzoo.zoo._builder import build_backbone
from mixerzoo.zoo._checks import refuse_scripting
from mixerzoo.zoo._host import LinearHeadBackbone, Stage, strict_filter
from mixerzoo.zoo._registry import register_backbone

__all__ = ["LITv2", "LITv2Config", "checkpoint_filter", "deform_conv2x2_nhwc"]

NO_MIXER = "none"




# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class LITv2Config:
    depths: tuple[int, ...] = (2, 2, 6, 2)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    mixers: str | tuple[str, ...] = ("none", "none", "hilo", "hilo")
    mixer_options: Any = None  # dict for every stage, or one dict per stage
    window_sizes: tuple[int, ...] = (0, 0, 2, 1)  # HiLo s per stage (official LOCAL_WS)
    alpha: float = 0.9
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    patch_size: int = 4

    def __post_init__(self) -> None:
        n = len(self.depths)
        for name in ("dims", "num_heads", "window_sizes"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}={getattr(self, name)!r} must have len(depths)={n} entries")


# ----------------------------------------------------------------------------------------- blocks
@register_notrace_module  # a leaf for torch.fx (shape-dependent padding / dispatch)
class DWMlp(nn.Module):
    """fc1 → depthwise 3×3 conv on the hidden map → GELU → fc2, on ``[B, H, W, C]``."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(x)
        if _fused_inference(x, self):  # depthwise conv + GELU in one oneDNN pass (channels-last)
            c = self.dwconv
            x = torch.ops.mkldnn._convolution_pointwise(
                x.permute(0, 3, 1, 2), c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups, "gelu", [], "none"
            ).permute(0, 2, 3, 1)
        else:
            x = self.act(self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        x = self.drop(x)
        return self.drop(self.fc2(x))


class LITBlock(nn.Module):
    """``x + attn(LN(x))`` (absent for ``mixer="none"``) then ``x + DWMlp(LN(x))``, on ``[B, H, W, C]``."""

    def __init__(
        self,
        dim: int,
        *,
        mixer: str,
        mixer_options: dict[str, Any] | None,
        num_heads: int,
        window_size: int,
        alpha: float,
        qkv_bias: bool,
        mlp_ratio: float,
        drop_path: float,
        drop: float,
    ) -> None:
        super().__init__()
        if mixer != NO_MIXER:
            self.norm1 = nn.LayerNorm(dim)
            self.attn = make_mixer(
                mixer, dim, mixer_options, num_heads=num_heads, window_size=max(window_size, 1), alpha=alpha,
                qkv_bias=qkv_bias, proj_drop=drop,
            )  # fmt: skip
        else:
            self.norm1 = self.attn = None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = DWMlp(dim, int(dim * mlp_ratio), drop)

    def _chunked_inference(self, x: Tensor) -> bool:
        if self.training or eager_only(x):
            return False  # fx/TorchScript/compile record the eager path; dropout / drop-path / autocast run eagerly
        return x.is_contiguous() and _fused_inference(x, self)

    def forward(self, x: Tensor) -> Tensor:
        if self.attn is not None:
            x = x + self.drop_path(run_mixer(self.attn, self.norm1(x), "nhwc"))
        if self._chunked_inference(x):  # same maths, batch-chunked, no autograd
            return _mlp_residual_inference(x, self.norm2, self.mlp)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


# Hidden-map bytes per chunk of the inference MLP: below glibc's 32 MiB mmap threshold, but few chunks. Measured on
# LITv2-S, batch 8 (ratio to resnet50): 1 thread 3 MiB 1.17, 8 MiB 1.24, 16 MiB 1.24, unchunked 1.19; 2 threads on
# an oversubscribed machine 3 MiB 0.46, 8 MiB 0.84, 16 MiB 1.04, unchunked 1.06 (every chunk adds parallel regions).
_CHUNK_BYTES = 16 << 20


def _mlp_residual_inference(x: Tensor, norm: nn.LayerNorm, mlp: DWMlp) -> Tensor:
    """``x + mlp(norm(x))`` for CPU fp32 inference on contiguous ``[B, H, W, C]``, a few images at a time.

    Same ops as the eager path; chunking the batch keeps the 4×-wide hidden map small (LITv2-S's first stage
    at batch 8 would be 38 MB: above glibc's mmap threshold, so every call page-faults fresh memory), and
    fc2 writes into the output buffer, where the residual is added in place.
    """
    B, H, W, C = x.shape
    hidden = mlp.fc1.out_features
    k = max(1, min(B, _CHUNK_BYTES // max(H * W * hidden * x.element_size(), 1)))
    out = torch.empty_like(x)
    c = mlp.dwconv
    for i in range(0, B, k):
        xc = x[i : i + k]
        n = xc.shape[0] * H * W
        h = mlp.fc1(F.layer_norm(xc, norm.normalized_shape, norm.weight, norm.bias, norm.eps))
        h = torch.ops.mkldnn._convolution_pointwise(
            h.permute(0, 3, 1, 2), c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups, "gelu", [], "none"
        )  # depthwise conv + GELU, channels-last in and out
        o = out[i : i + k].view(n, C)
        torch.addmm(mlp.fc2.bias, h.permute(0, 2, 3, 1).reshape(n, hidden), mlp.fc2.weight.t(), out=o)
        o.add_(xc.reshape(n, C))
    return out


def deform_conv2x2_nhwc(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Deformable convolution, kernel 2×2, stride 2, no padding, one offset group, on channels-last maps.

    Same maths as ``torchvision.ops.deform_conv2d(x_nchw, offset_nchw, weight, bias, stride=2)`` (and the
    official DCN): tap ``(i, j)`` of output ``(oy, ox)`` samples ``x`` bilinearly at
    ``(2·oy + i + dy, 2·ox + j + dx)``; corners outside the map read 0, a point with ``y <= -1``, ``y >= H``,
    ``x <= -1`` or ``x >= W`` reads 0. Built from gathers of whole channel rows and one GEMM, so it is
    vectorised over channels, needs no layout change, and autograd gives every gradient (offsets included).

    Args:
        x: ``[B, H, W, C]`` with even H, W.
        offset: ``[B, H/2, W/2, 8]``, (dy, dx) per tap, taps row-major (torchvision's channel order).
        weight: ``[O, C, 2, 2]``; bias: ``[O]`` or None.

    Returns:
        ``[B, H/2, W/2, O]``.
    """
    B, H, W, C = x.shape
    Ho, Wo = H // 2, W // 2
    dev, pdt = x.device, torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    off = offset.to(pdt).view(B, Ho, Wo, 4, 2)
    taps = torch.arange(4, device=dev)
    py = (torch.arange(Ho, device=dev) * 2)[:, None, None] + taps // 2  # (Ho, 1, 4) integer sample origins
    px = (torch.arange(Wo, device=dev) * 2)[None, :, None] + taps % 2  # (1, Wo, 4)
    y = py.to(pdt) + off[..., 0]  # (B, Ho, Wo, 4)
    xx = px.to(pdt) + off[..., 1]
    inside = ((y > -1) & (y < H) & (xx > -1) & (xx < W)).to(pdt)
    y0, x0 = y.floor(), xx.floor()
    ly, lx = y - y0, xx - x0
    hy, hx = 1 - ly, 1 - lx
    y0, x0 = y0.long(), x0.long()
    y1, x1 = y0 + 1, x0 + 1
    rows = (torch.arange(B, device=dev) * (H * W)).view(B, 1, 1, 1)
    x_rows = x.reshape(B * H * W, C)
    cols = None
    for yi, xi, wgt in ((y0, x0, hy * hx), (y0, x1, hy * lx), (y1, x0, ly * hx), (y1, x1, ly * lx)):
        valid = (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W)
        idx = (rows + yi.clamp(0, H - 1) * W + xi.clamp(0, W - 1)).reshape(-1)
        w = (wgt * inside * valid.to(pdt)).reshape(-1, 1).to(x.dtype)
        v = x_rows.index_select(0, idx)
        if cols is None:
            cols = v * w
        elif torch.is_grad_enabled() and (cols.requires_grad or v.requires_grad or w.requires_grad):
            cols = cols + v * w
        else:
            cols.addcmul_(v, w)
    cols = cols.view(B * Ho * Wo, 4 * C)  # (tap, channel) order
    w2 = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], 4 * C)
    out = cols @ w2.t() if bias is None else torch.addmm(bias, cols, w2.t())
    return out.view(B, Ho, Wo, weight.shape[0])  # explicit sizes: B may be 0


class DeformConv2d(nn.Module):
    """Deformable conv 2×2 s2 with its offset predictor (official ``DeformConv2dPack`` keys), ``[B, H, W, C]``."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 2, stride: int = 2) -> None:
        super().__init__()
        if kernel_size != 2 or stride != 2:
            raise ValueError(f"kernel_size={kernel_size!r}, stride={stride!r}: LITv2's DTM is 2×2 stride 2")
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.conv_offset = nn.Conv2d(in_dim, 2 * kernel_size * kernel_size, kernel_size, stride)
        nn.init.uniform_(self.weight, -1 / math.sqrt(in_dim * kernel_size**2), 1 / math.sqrt(in_dim * kernel_size**2))
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, H, W, C]`` (even H, W) → ``[B, H/2, W/2, out_dim]``."""
        offset = self.conv_offset(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # channels-last conv
        if x.dtype in (torch.float16, torch.bfloat16):  # sample and accumulate in fp32 (bilinear weights need it)
            out = deform_conv2x2_nhwc(x.float(), offset.float(), self.weight.float(), self.bias.float())
            return out.to(x.dtype)
        return deform_conv2x2_nhwc(x, offset, self.weight.to(x.dtype), self.bias.to(x.dtype))


@register_notrace_module  # a leaf for torch.fx (shape-dependent padding / dispatch)
class TokenMerging(nn.Module):
    """LITv2's deformable token merging (DTM): ``[B, H, W, C]`` → ``[B, ⌈H/2⌉, ⌈W/2⌉, 2C]``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.dconv = DeformConv2d(in_dim, out_dim)
        self.norm = nn.BatchNorm2d(out_dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] % 2 or x.shape[2] % 2:
            x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
        x = self.dconv(x)
        return self.act(self.norm(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)


@register_notrace_module  # a leaf for torch.fx (shape-dependent padding / dispatch)
class PatchEmbed(nn.Module):
    """Conv ``p×p`` stride ``p`` → LayerNorm; ``[B, C, H, W]`` → ``[B, ⌈H/p⌉, ⌈W/p⌉, D]``."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        if x.shape[2] % p or x.shape[3] % p:
            x = F.pad(x, (0, (-x.shape[3]) % p, 0, (-x.shape[2]) % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


# ------------------------------------------------------------------------------------------ model
class LITv2(LinearHeadBackbone):
    """LITv2 (MLP-only early stages, HiLo late stages, deformable token merging); input ``[B, C, H, W]``; stage
    outputs ``[B, C_i, H/4·2^-i, W/4·2^-i]`` (ceil), NCHW or NHWC; ``forward_features`` is normed."""

    output_fmts = ("NCHW", "NHWC")
    stem_pattern = r"^patch_embed"
    final_norm_pattern = r"^norm"

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 6, 2),
        dims: Sequence[int] = (96, 192, 384, 768),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        mixers: str | Sequence[str] = ("none", "none", "hilo", "hilo"),
        mixer_options: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        window_sizes: Sequence[int] = (0, 0, 2, 1),
        alpha: float = 0.9,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        patch_size: int = 4,
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
        names = (mixers,) * n if isinstance(mixers, str) else tuple(mixers)
        if len(names) != n:
            raise ValueError(f"mixers={mixers!r}: LITv2 needs one mixer name or {n} names (one per stage)")
        real = [m for m in names if m != NO_MIXER]
        if real:
            resolve_mixers(real, len(real), host="LITv2", kinds=("mixer",), layouts=("nchw", "nhwc", "nlc"))
        opts = stage_options(mixer_options, n)
        self._check_pool(global_pool)
        self._setup(
            in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, drop_rate=drop_rate,
            num_features=dims[-1],
        )  # fmt: skip
        dpr = stage_dpr(depths, drop_path_rate)
        with factory(device):
            self.patch_embed = PatchEmbed(in_chans, dims[0], patch_size)
            stages, self.feature_info = [], []
            for i in range(n):
                down = TokenMerging(dims[i - 1], dims[i]) if i > 0 else nn.Identity()
                block = {"mixer": names[i], "mixer_options": opts[i], "num_heads": num_heads[i], "alpha": alpha,
                         "window_size": window_sizes[i], "qkv_bias": qkv_bias, "mlp_ratio": mlp_ratio,
                         "drop": proj_drop_rate}  # fmt: skip
                stages.append(Stage(down, [LITBlock(dims[i], drop_path=r, **block) for r in dpr[i]]))
                self.feature_info.append({"num_chs": dims[i], "reduction": patch_size * 2**i, "module": f"stages.{i}"})
            self.stages = nn.Sequential(*stages)
            self.norm = nn.LayerNorm(dims[-1])
            self._make_head(dims[-1], num_classes, drop_rate)
        self._finish(dtype)

    def __prepare_scriptable__(self) -> nn.Module:
        refuse_scripting(self)  # torch.jit.script: one clear line instead of a TorchScript frontend error
        return self

    def _init_weights(self, m: nn.Module) -> None:
        super()._init_weights(m)  # Linear: truncated normal
        if isinstance(m, DWMlp):
            fan_out = m.dwconv.kernel_size[0] * m.dwconv.kernel_size[1]  # out_channels / groups = 1
            nn.init.normal_(m.dwconv.weight, 0, math.sqrt(2.0 / fan_out))
            nn.init.zeros_(m.dwconv.bias)

    def _embed(self, x: Tensor) -> Tensor:
        return self.patch_embed(x)

    def _features_out(self, x: Tensor) -> Tensor:
        return self.norm(x).permute(0, 3, 1, 2)  # the body runs NHWC; forward_features is normed

    def _intermediates_out(self, x: Tensor, full: bool) -> Tensor:
        return (self.norm(x) if full else x).permute(0, 3, 1, 2)

    def _intermediate(self, i: int, x: Tensor, norm: bool, last: bool, output_fmt: str) -> Tensor:
        x = self.norm(x) if norm and last else x  # norm=True: the final LayerNorm on the last output
        return x.permute(0, 3, 1, 2) if output_fmt == "NCHW" else x

    def _prune_norm(self, max_index: int, prune_norm: bool) -> None:
        if prune_norm:
            self.norm = nn.Identity()


# ------------------------------------------------------------------------------ checkpoint filter
def checkpoint_filter(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map the official ziplab/LITv2 layout (``classification/models/litv2.py``) to ours; ours passes through.

    Every official key is renamed or the call fails (strict key accounting).
    """
    sd = dict(state_dict["model"]) if "model" in state_dict else dict(state_dict)
    if not any(k.startswith("layers.") for k in sd):
        return sd
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        nk = k
        # official downsample sits at the END of stage i (layers.i.downsample); ours at the start of i + 1
        m = re.match(r"^layers\.(\d+)\.downsample\.(.*)$", nk)
        if m:
            rest = m.group(2).replace("norm_layer.", "norm.")
            nk = f"stages.{int(m.group(1)) + 1}.downsample.{rest}"
        # blocks: layers.i.blocks.j -> stages.i.blocks.j; DWConv's inner module is flattened
        nk = re.sub(r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks.", nk)
        nk = nk.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv.")
        out[nk] = v
    return strict_filter(out, model, "LITv2")


# ------------------------------------------------------------------------------ pretrained cfgs
def _cfg(**kw: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0",
        "paper_ids": "arXiv:2205.13213", "origin_url": "https://github.com/ziplab/LITv2", **kw,
    }  # fmt: skip


_REL = "https://github.com/ziplab/LITv2/releases/download/v1.0"
PRETRAINED: dict[str, dict[str, Any]] = {
    "litv2_small.orig_in1k": _cfg(url=f"{_REL}/litv2_s.pth"),
    "litv2_medium.orig_in1k": _cfg(url=f"{_REL}/litv2_m.pth"),
    "litv2_base.orig_in1k": _cfg(url=f"{_REL}/litv2_b.pth"),
    "litv2_base_384.orig_in1k": _cfg(url=f"{_REL}/litv2_b_384.pth", input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
}


def _create(variant: str, pretrained: bool, config: LITv2Config, **kwargs: Any) -> LITv2:
    return build_backbone(LITv2, variant, pretrained, config, checkpoint_filter=checkpoint_filter, **kwargs)


_SMALL = LITv2Config((2, 2, 6, 2), (96, 192, 384, 768), (3, 6, 12, 24))
_MEDIUM = LITv2Config((2, 2, 18, 2), (96, 192, 384, 768), (3, 6, 12, 24))
_BASE = LITv2Config((2, 2, 18, 2), (128, 256, 512, 1024), (4, 8, 16, 32))


# ------------------------------------------------------------------------------ variant builders
@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def litv2_small(pretrained: bool = False, **kwargs: Any) -> LITv2:
    """LITv2-S: 27.8 M params, 3.7 GMACs, 82.0 % top-1 (drop_path 0.2 in training)."""
    return _create("litv2_small", pretrained, _SMALL, **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def litv2_medium(pretrained: bool = False, **kwargs: Any) -> LITv2:
    """LITv2-M: 48.8 M params, 7.5 GMACs, 83.3 % top-1 (drop_path 0.3 in training)."""
    return _create("litv2_medium", pretrained, _MEDIUM, **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def litv2_base(pretrained: bool = False, **kwargs: Any) -> LITv2:
    """LITv2-B: 86.5 M params, 13.2 GMACs, 83.6 % top-1 (drop_path 0.5 in training)."""
    return _create("litv2_base", pretrained, _BASE, **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def litv2_base_384(pretrained: bool = False, **kwargs: Any) -> LITv2:
    """LITv2-B fine-tuned at 384²: 86.5 M params, 39.7 GMACs, 84.7 % top-1."""
    return _create("litv2_base_384", pretrained, _BASE, **kwargs)


@register_backbone(default_cfg=_cfg(input_size=(3, 64, 64), pool_size=(2, 2)), test=True)
def test_litv2(pretrained: bool = False, **kwargs: Any) -> LITv2:
    """Tiny LITv2 for tests (HiLo with both branches in stage 3, plain MHSA in stage 4)."""
    cfg = LITv2Config((1, 1, 2, 1), (16, 32, 64, 128), (1, 2, 4, 4))
    return _create("test_litv2", pretrained, cfg, **kwargs)
