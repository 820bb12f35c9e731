"""BiFormer-STL — bi-level routing attention in the Swin-T layout (the BiFormer paper's ablation model).

Paper: "BiFormer: Vision Transformer with Bi-Level Routing Attention", Zhu et al., CVPR 2023,
arXiv:2303.08810. Original code: https://github.com/rayleizhu/BiFormer (commit 1697bbbe,
``models/biformer_stl.py`` with ``ops/bra_legacy.py``, and ``models/biformer_stl_nchw.py`` with
``ops/bra_nchw.py``), MIT license.

Swin-T layout: patchify conv 4×4 s4 + BatchNorm, downsamplers BatchNorm + conv 2×2 s2, depths 2-2-6-2,
widths 96-192-384-768, MLP ratio 4, no conditional position conv; BRA (top-k 1/4/16, 7×7 regions, scale
``dim ** -0.5``, LePE 5×5 on v) in stages 1–3 and full attention with LePE (8 heads, bias-free qkv) in
stage 4; BatchNorm head.

Differences from the original, and why:

* Key layout is timm-like (``stem.*``, ``stages.i.downsample.*``, ``stages.i.blocks.j.{norm1, token_mixer,
  norm2, mlp}``, ``head.*``); both official layouts load through :func:`checkpoint_filter` with strict key
  accounting (the nchw layout's 1×1 convs become Linear weights).
* Both official variants run NHWC blocks here on the registry mixers ``bra`` and ``attention_lepe``.
  ``biformer_stl_nchw`` differs from ``biformer_stl`` only in stage 4, whose LePE conv reads ``v`` instead
  of the block input: that is this file's ``attention_lepe_v`` mixer. Its ``nchwBRA`` equals the legacy
  BRA (hence ``bra``) whenever every stage map is a multiple of ``n_win`` (224²: 56/28/14/7).
* Any input size: the official models assert (legacy) or pad unmasked with a floor-sized region grid
  (nchw) when a stage map is not a multiple of ``n_win``; here ``bra`` pads to the region grid and masks
  the padding (``auto_pad_parity=True``: the legacy unmasked padding). The stem and downsamplers floor odd
  sizes, as the official convs do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from timm.models._manipulate import checkpoint_seq
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

__all__ = ["AttentionLePEV", "BiFormerSTL", "BiFormerSTLConfig", "checkpoint_filter"]

LOCAL_MIXERS = ("attention_lepe_v",)


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class BiFormerSTLConfig:
    depths: tuple[int, ...] = (2, 2, 6, 2)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    mixers: str | tuple[str, ...] = ("bra", "bra", "bra", "attention_lepe")  # "attention_lepe_v" is local
    mixer_options: Any = None  # dict for every stage, or one dict per stage
    head_dim: int = 32
    topks: tuple[int, ...] = (1, 4, 16, -1)  # -1: no routing (stage 4 is full attention)
    n_win: int = 7
    mlp_ratio: float = 4.0
    side_dwconv: int = 5
    qkv_bias: tuple[bool, ...] = (True, True, True, False)
    auto_pad_parity: bool = False

    def __post_init__(self) -> None:
        n = len(self.depths)
        for name in ("dims", "topks", "qkv_bias"):
            value = getattr(self, name)
            if len(value) != n:
                raise ValueError(f"{name}={value!r} must have one entry per stage (depths={self.depths!r})")
        if self.n_win < 1:
            raise ValueError(f"n_win={self.n_win!r} must be >= 1")


# ----------------------------------------------------------------------------------------- blocks
class AttentionLePEV(nn.Module):
    """Full multi-head attention plus a depthwise LePE conv on **v** (``nchwAttentionLePE``), ``[B, H, W, C]``.

    ``out = proj(softmax(q·kᵀ·s)·v + DWConv(v))`` with ``s = head_dim ** -0.5``; the legacy
    ``attention_lepe`` applies the conv to the block input instead.
    """

    layout: ClassVar[str] = "nhwc"
    kind: ClassVar[str] = "mixer"

    def __init__(self, dim: int, *, num_heads: int = 8, qkv_bias: bool = False, side_dwconv: int = 5) -> None:
        super().__init__()
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f"num_heads={num_heads!r} must be a positive divisor of dim={dim}")
        if side_dwconv < 1 or side_dwconv % 2 == 0:
            raise ValueError(f"side_dwconv={side_dwconv!r} must be an odd positive int")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
        self.proj = nn.Linear(dim, dim)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}"

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, heads, N, head_dim]
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H, W, C)
        v_map = v.transpose(1, 2).reshape(B, H, W, C).permute(0, 3, 1, 2)
        out = out + self.lepe(v_map).permute(0, 2, 3, 1)
        return self.proj(out)


class STLBlock(nn.Module):
    """``x + mixer(LN(x))`` then ``x + MLP(LN(x))`` on ``[B, H, W, C]`` (LayerNorm eps 1e-6)."""

    def __init__(self, dim: int, *, mixer: nn.Module, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.token_mixer = mixer
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self._mix(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x

    def _mix(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript: nhwc mixers only
            return self.token_mixer(x)
        return run_mixer(self.token_mixer, x, "nhwc")


@register_notrace_module  # a leaf for torch.fx (input-size check)
class PatchStem(nn.Module):
    """conv4×4 s4 → BatchNorm (NCHW); checks that the input survives the model's total stride ``min_size``."""

    def __init__(self, in_chans: int, dim: int, min_size: int = 4) -> None:
        super().__init__()
        self.min_size = min_size
        self.conv = nn.Conv2d(in_chans, dim, 4, 4)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2], x.shape[-1]
        if H < self.min_size or W < self.min_size:
            raise ValueError(
                f"BiFormerSTL needs inputs of at least {self.min_size}×{self.min_size} (its unpadded stride), "
                f"got H={H}, W={W}"
            )
        return self.norm(self.conv(x))


class NormDownsample(nn.Module):
    """BatchNorm → conv2×2 s2 (NCHW; the official norm-then-conv patch merging)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.conv = nn.Conv2d(dim, out_dim, 2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.norm(x))


class STLStage(Stage):
    """Downsample (NCHW) → blocks (NHWC) → NCHW."""

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x).permute(0, 2, 3, 1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------ model
class BiFormerSTL(StagedBackbone):
    """BiFormer in the Swin-T layout on ``[B, C, H, W]``; any H, W ≥ 32 (region padding is masked). Stage
    outputs ``[B, C_i, H/4·2^-i, W/4·2^-i]`` (floor), NCHW or NHWC; ``forward_features`` is before the head's norm."""

    output_fmts = ("NCHW", "NHWC")

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 6, 2),
        dims: Sequence[int] = (96, 192, 384, 768),
        mixers: str | Sequence[str] = ("bra", "bra", "bra", "attention_lepe"),
        mixer_options: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        head_dim: int = 32,
        topks: Sequence[int] = (1, 4, 16, -1),
        n_win: int = 7,
        mlp_ratio: float = 4.0,
        side_dwconv: int = 5,
        qkv_bias: Sequence[bool] = (True, True, True, False),
        auto_pad_parity: bool = False,
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
        names = (mixers,) * n if isinstance(mixers, str) else tuple(mixers)
        if len(names) != n:
            raise ValueError(f"mixers={mixers!r}: BiFormerSTL needs one mixer name or {n} (one per stage)")
        registry = [m for m in names if m not in LOCAL_MIXERS]
        resolve_mixers(registry, len(registry), host="BiFormerSTL", kinds=("mixer",), layouts=("nchw", "nhwc", "nlc"))
        opts = stage_options(mixer_options, n)
        self._setup(
            in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, drop_rate=drop_rate,
            num_features=dims[-1],
        )  # fmt: skip
        dpr = stage_dpr(depths, drop_path_rate)
        with factory(device):
            self.stem = PatchStem(in_chans, dims[0], min_size=4 * 2 ** (n - 1))
            stages, self.feature_info = [], []
            for i in range(n):
                blocks = []
                for j in range(depths[i]):
                    if names[i] == "attention_lepe_v":  # official: 8 heads whatever the width
                        kw = {"num_heads": 8, "qkv_bias": qkv_bias[i], "side_dwconv": side_dwconv, **opts[i]}
                        mixer: nn.Module = AttentionLePEV(dims[i], **kw)
                    else:
                        defaults: dict[str, Any] = {"num_heads": dims[i] // head_dim}
                        if names[i] == "bra":
                            defaults.update(
                                n_win=n_win, topk=topks[i], qkv_bias=qkv_bias[i], side_dwconv=side_dwconv,
                                auto_pad_parity=auto_pad_parity,
                            )  # fmt: skip
                        elif names[i] == "attention_lepe":
                            defaults = {"num_heads": 8, "qkv_bias": qkv_bias[i], "side_dwconv": side_dwconv}
                        mixer = make_mixer(names[i], dims[i], opts[i], **defaults)
                    blocks.append(STLBlock(dims[i], mixer=mixer, mlp_ratio=mlp_ratio, drop_path=dpr[i][j]))
                down = nn.Identity() if i == 0 else NormDownsample(dims[i - 1], dims[i])
                stages.append(STLStage(down, blocks))
                self.feature_info.append({"num_chs": dims[i], "reduction": 4 * 2**i, "module": f"stages.{i}"})
            self.stages = nn.Sequential(*stages)
            # the official head: BatchNorm on the map → global pool → dropout → Linear
            self.head = NormPoolHead(nn.BatchNorm2d(dims[-1]), dims[-1], num_classes, global_pool, drop_rate)
        self._finish(dtype)

    def _intermediate(self, i: int, x: Tensor, norm: bool, last: bool, output_fmt: str) -> Tensor:
        x = self.head.norm(x) if norm and last else x  # norm=True: the head's BatchNorm on the last output
        return x.permute(0, 2, 3, 1) if output_fmt == "NHWC" else x


# ------------------------------------------------------------------------------ checkpoint filter
_BLOCK_RULES = (
    # models/biformer_stl.py BiFormerBlock + ops/bra_legacy.py BiLevelRoutingAttention / _common.AttentionLePE
    (r"^attn\.qkv\.qkv\.", "token_mixer.qkv."),  # legacy BRA's QKVLinear wrapper
    (r"^attn\.wo\.", "token_mixer.proj."),  # legacy BRA output linear
    # models/biformer_stl_nchw.py + ops/bra_nchw.py nchwBRA (1×1 convs)
    (r"^attn\.qkv_linear\.", "token_mixer.qkv."),
    (r"^attn\.output_linear\.", "token_mixer.proj."),
    (r"^attn\.", "token_mixer."),  # lepe; (nchw)AttentionLePE qkv/proj
    (r"^mlp\.0\.", "mlp.fc1."),  # nn.Sequential(Linear|Conv1×1, GELU, Linear|Conv1×1)
    (r"^mlp\.2\.", "mlp.fc2."),
)
_STEM = {"0": "conv", "1": "norm"}  # downsample_layers.0 = Sequential(conv4×4, BN)
_DOWN = {"0": "norm", "1": "conv"}  # downsample_layers.i = Sequential(BN, conv2×2)


def checkpoint_filter(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map the official BiFormer-STL / STL-nchw layouts (``downsample_layers``, ``stages.i.blocks.j``) to ours.

    Accepts the raw state dict or the official file's ``{"model": state_dict}``; nchw 1×1-conv weights are
    reshaped to the Linear weights they equal. Our own layout passes through. Every official key must land
    on a model key of the same shape, else ``KeyError`` lists the leftovers.
    """
    sd = unwrap_state_dict(state_dict)
    if "stem.conv.weight" in sd:
        return sd
    target = model.state_dict()
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}  # our key -> the checkpoint's, for error messages
    for k, v in sd.items():
        nk = k
        m = re.match(r"^downsample_layers\.0\.(\d)\.(.*)$", k)
        if m:
            nk = f"stem.{_STEM[m.group(1)]}.{m.group(2)}"
        m = re.match(r"^downsample_layers\.([1-9])\.(\d)\.(.*)$", k)
        if m:
            nk = f"stages.{m.group(1)}.downsample.{_DOWN[m.group(2)]}.{m.group(3)}"
        m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$", k)
        if m:
            rest = m.group(3)
            for pat, rep in _BLOCK_RULES:
                rest, hit = re.subn(pat, rep, rest)
                if hit:
                    break
            nk = f"stages.{m.group(1)}.blocks.{m.group(2)}.{rest}"
        nk = re.sub(r"^norm\.", "head.norm.", nk)  # final BatchNorm2d
        nk = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", nk)
        if nk in target and v.dim() == 4 and target[nk].dim() == 2 and v.shape[2:] == (1, 1):
            v = v.flatten(1)  # nchw: Conv2d 1×1 (out, in, 1, 1) → Linear (out, in)
        out[nk] = v
        origin[nk] = k
    return strict_filter(out, model, "BiFormerSTL", origin)


# ------------------------------------------------------------------------------ pretrained cfgs
def _cfg(**kw: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.9,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.conv", "classifier": "head.fc", "license": "mit",
        "paper_ids": "arXiv:2303.08810", "origin_url": "https://github.com/rayleizhu/BiFormer", **kw,
    }  # fmt: skip


_ONEDRIVE = "https://api.onedrive.com/v1.0/shares/{}/root/content"
PRETRAINED: dict[str, dict[str, Any]] = {
    # official OneDrive links (README table, models/biformer_stl*.py model_urls); fragile upstream (issue #53)
    "biformer_stl.orig_in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChSf-m7ujkvx9lIQ1")),
    "biformer_stl_nchw.orig_in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChWYrKbWbMgqd2Ai0")),
}


def _create(variant: str, pretrained: bool, config: BiFormerSTLConfig, **kwargs: Any) -> BiFormerSTL:
    return build_backbone(BiFormerSTL, variant, pretrained, config, checkpoint_filter=checkpoint_filter, **kwargs)


# ------------------------------------------------------------------------------ variant builders
@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def biformer_stl(pretrained: bool = False, **kwargs: Any) -> BiFormerSTL:
    """BiFormer-STL (Swin-T layout, legacy BRA): 28.4 M params, 4.6 GMACs, 82.7 % top-1."""
    return _create("biformer_stl", pretrained, BiFormerSTLConfig(), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def biformer_stl_nchw(pretrained: bool = False, **kwargs: Any) -> BiFormerSTL:
    """BiFormer-STL-nchw (refactored BRA; stage-4 LePE on v): 28.4 M params, 4.6 GMACs, 82.7 % top-1."""
    cfg = BiFormerSTLConfig(mixers=("bra", "bra", "bra", "attention_lepe_v"))
    return _create("biformer_stl_nchw", pretrained, cfg, **kwargs)


# ------------------------------------------------------------------------------ tiny test variant
@register_backbone(default_cfg=_cfg(input_size=(3, 64, 64), pool_size=(2, 2)), test=True)
def test_biformer_stl(pretrained: bool = False, **kwargs: Any) -> BiFormerSTL:
    """Tiny BiFormer-STL for tests (n_win 2: regions of 8×8, 4×4, 2×2 tokens at 64²; LePE-on-v stage 4)."""
    cfg = BiFormerSTLConfig(
        (1, 1, 1, 1), (16, 32, 48, 64), ("bra", "bra", "bra", "attention_lepe_v"), head_dim=8, topks=(1, 2, 4, -1),
        n_win=2,
    )  # fmt: skip
    return _create("test_biformer_stl", pretrained, cfg, **kwargs)
