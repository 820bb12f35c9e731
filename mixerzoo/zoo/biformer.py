"""BiFormer — a four-stage ConvNet-stemmed transformer with bi-level routing attention.

Paper: "BiFormer: Vision Transformer with Bi-Level Routing Attention", Zhu et al., CVPR 2023,
arXiv:2303.08810. Original code: https://github.com/rayleizhu/BiFormer (commit 1697bbbe,
``models/biformer.py``), MIT license.

Differences from the original, and why:

* Key layout is timm-like (``stem.*``, ``stages.i.downsample.*``, ``stages.i.blocks.j.*``, ``head.*``);
  the official layout (``downsample_layers``, ``stages.i.j``, ``attn.qkv.qkv``, ``attn.wo``) loads through
  :func:`checkpoint_filter` with strict key accounting. Numerics are the official ones: BRA scaled by the
  full qk dim, detached routing, top-k (1, 4, 16) in stages 1–3 and plain attention with LePE on the
  block input (8 heads, no qkv bias) in stage 4, LayerNorm eps 1e-6, BatchNorm head.
* Any input size: the official model asserts sizes divisible by ``n_win`` at every stage (or, with
  ``auto_pad=True``, pads without masking). Here BRA pads to the region grid and masks the padded
  tokens out of routing and attention; ``auto_pad_parity=True`` gives the official unmasked padding.
* Mixers are registry plugins (``mixers=``): any nhwc/nchw/nlc mixer can replace ``bra``/``attention_lepe``
  per stage.
* ``out_norms=True`` adds the per-output LayerNorms of the official detection/segmentation backbone
  (``BiFormer_mm.extra_norms``); they are applied to every output of :meth:`BiFormer.forward_intermediates`
  (and so of ``features_only`` models).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
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
from mixerzoo.zoo._builder import build_backbone
from mixerzoo.zoo._host import NormPoolHead, Stage, StagedBackbone, strict_filter
from mixerzoo.zoo._registry import register_backbone

__all__ = ["BiFormer", "BiFormerConfig", "checkpoint_filter"]

_OWN_MIXERS = ("bra", "attention_lepe")


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class BiFormerConfig:
    depths: tuple[int, ...] = (2, 2, 8, 2)
    dims: tuple[int, ...] = (64, 128, 256, 512)
    mixers: str | tuple[str, ...] = ("bra", "bra", "bra", "attention_lepe")
    mixer_options: Any = None  # dict for every stage, or one dict per stage
    head_dim: int = 32
    topks: tuple[int, ...] = (1, 4, 16, -1)  # -1: no routing (stage 4 is attention_lepe)
    n_win: int = 7
    mlp_ratio: float = 3.0
    side_dwconv: int = 5
    qkv_bias: tuple[bool, ...] = (True, True, True, False)
    auto_pad_parity: bool = False
    out_norms: bool = False

    def __post_init__(self) -> None:
        n = len(self.depths)
        for name in ("dims", "topks", "qkv_bias"):
            if len(getattr(self, name)) != n:
                value = getattr(self, name)
                raise ValueError(f"{name}={value!r} must have one entry per stage (depths={self.depths!r})")
        if self.n_win < 1:
            raise ValueError(f"n_win={self.n_win!r} must be >= 1")


# ----------------------------------------------------------------------------------------- blocks
class Mlp(nn.Module):
    """Linear → GELU → Linear on ``[..., C]`` (official keys ``mlp.0``/``mlp.3``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _NormMlpFunction(torch.autograd.Function):
    """``fc2(GELU(fc1(LayerNorm(x))))`` that saves only ``x`` and ``fc1``'s output for backward.

    Eager autograd keeps four activations per block (LN input, LN output, fc1 output, GELU output: ``8·C``
    per token at mlp_ratio 3); here LN and GELU (element-wise, cheap) are recomputed in backward, which
    keeps ``4·C``. Same forward ops, same matmuls in backward (at 640² this is ~140 MB of BiFormer-T's
    saved activations). Parameter order: LN weight, LN bias, fc1 weight/bias, fc2 weight/bias.
    """

    @staticmethod
    def forward(ctx, x, eps, ln_w, ln_b, w1, b1, w2, b2):  # noqa: ANN001, ANN205, PLR0913
        h = F.linear(F.layer_norm(x, x.shape[-1:], ln_w, ln_b, eps), w1, b1)
        ctx.eps = eps
        ctx.save_for_backward(x, h, ln_w, ln_b, w1, w2)
        return F.linear(F.gelu(h), w2, b2)

    @staticmethod
    def backward(ctx, gy):  # noqa: ANN001, ANN205
        x, h, ln_w, ln_b, w1, w2 = ctx.saved_tensors
        need = ctx.needs_input_grad
        gy2 = gy.reshape(-1, gy.shape[-1])
        h2 = h.reshape(-1, h.shape[-1])
        a = F.gelu(h2)
        gw2 = gy2.t().mm(a) if need[6] else None
        gb2 = gy2.sum(0) if need[7] else None
        del a
        dh = torch.ops.aten.gelu_backward(gy2.mm(w2), h2)
        with torch.enable_grad():
            xd = x.detach().requires_grad_(need[0])
            wd = ln_w.detach().requires_grad_(need[2]) if ln_w is not None else None
            bd = ln_b.detach().requires_grad_(need[3]) if ln_b is not None else None
            xn = F.layer_norm(xd, x.shape[-1:], wd, bd, ctx.eps)
        gw1 = dh.t().mm(xn.detach().reshape(-1, xn.shape[-1])) if need[4] else None
        gb1 = dh.sum(0) if need[5] else None
        gx = gln_w = gln_b = None
        if need[0] or need[2] or need[3]:
            dxn = dh.mm(w1).view(xn.shape)
            leaves = [t for t in (xd, wd, bd) if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad(xn, leaves, dxn))
            gx = next(grads) if need[0] else None
            gln_w = next(grads) if wd is not None and need[2] else None
            gln_b = next(grads) if bd is not None and need[3] else None
        return gx, None, gln_w, gln_b, gw1, gb1, gw2, gb2


def _norm_mlp(x: Tensor, norm: nn.LayerNorm, mlp: Mlp) -> Tensor:
    """``mlp(norm(x))``; with autograd on (eager, no autocast), through :class:`_NormMlpFunction` to save memory."""
    plain = (
        eager_only(x)  # torch.fx proxy, TorchScript, compile/export, autocast (casts only the plain ops)
        or not torch.is_grad_enabled()
        or type(mlp) is not Mlp
        or not isinstance(mlp.act, nn.GELU)
        or mlp.act.approximate != "none"
        or not isinstance(norm, nn.LayerNorm)
    )
    if plain:
        return mlp(norm(x))
    return _NormMlpFunction.apply(
        x, norm.eps, norm.weight, norm.bias, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias
    )


class BiFormerBlock(nn.Module):
    """``x += DWConv3×3(x)``; then (NHWC) ``x += mixer(LN(x))``, ``x += MLP(LN(x))``; ``[B, C, H, W]`` in and out."""

    def __init__(self, dim: int, *, mixer: nn.Module, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.token_mixer = mixer
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pos_embed(x)
        x = x.permute(0, 2, 3, 1)
        x = x + self.drop_path(self._mix(self.norm1(x)))
        x = x + self.drop_path(self._mlp(x))
        return x.permute(0, 3, 1, 2)

    def _mlp(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self.mlp(self.norm2(x))
        return _norm_mlp(x, self.norm2, self.mlp)

    def _mix(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript: built-in (nhwc) mixers only
            return self.token_mixer(x)
        return run_mixer(self.token_mixer, x, "nhwc")


class ConvBN(nn.Sequential):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, 3, 2, 1)
        self.norm = nn.BatchNorm2d(out_dim)


class Stem(nn.Module):
    """conv3×3 s2 → BN → GELU → conv3×3 s2 → BN (stride 4)."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, 2, 1)
        self.norm1 = nn.BatchNorm2d(dim // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, 2, 1)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


# ------------------------------------------------------------------------------------------ model
class BiFormer(StagedBackbone):
    """BiFormer on ``[B, C, H, W]``; any H, W ≥ 1 (padding to the region grid is masked). Stage outputs
    ``[B, C_i, H/4·2^-i, W/4·2^-i]`` (ceil), NCHW or NHWC; ``forward_features`` is before the head's norm."""

    output_fmts = ("NCHW", "NHWC")

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 8, 2),
        dims: Sequence[int] = (64, 128, 256, 512),
        mixers: str | Sequence[str] = ("bra", "bra", "bra", "attention_lepe"),
        mixer_options: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        head_dim: int = 32,
        topks: Sequence[int] = (1, 4, 16, -1),
        n_win: int = 7,
        mlp_ratio: float = 3.0,
        side_dwconv: int = 5,
        qkv_bias: Sequence[bool] = (True, True, True, False),
        auto_pad_parity: bool = False,
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
        names = resolve_mixers(mixers, n, host="BiFormer", kinds=("mixer",), layouts=("nchw", "nhwc", "nlc"))
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
                defaults: dict[str, Any] = {"num_heads": dims[i] // head_dim}
                if names[i] == "bra":
                    defaults.update(
                        n_win=n_win, topk=topks[i], qkv_bias=qkv_bias[i], side_dwconv=side_dwconv,
                        auto_pad_parity=auto_pad_parity,
                    )  # fmt: skip
                elif names[i] == "attention_lepe":  # official: 8 heads whatever the width
                    defaults = {"num_heads": 8, "qkv_bias": qkv_bias[i], "side_dwconv": side_dwconv}
                blocks = [
                    BiFormerBlock(
                        dims[i], mixer=make_mixer(names[i], dims[i], opts[i], **defaults),
                        mlp_ratio=mlp_ratio, drop_path=dpr[i][j],
                    )
                    for j in range(depths[i])
                ]  # fmt: skip
                down = nn.Identity() if i == 0 else ConvBN(dims[i - 1], dims[i])
                stages.append(Stage(down, blocks))
                self.feature_info.append({"num_chs": dims[i], "reduction": 4 * 2**i, "module": f"stages.{i}"})
            self.stages = nn.Sequential(*stages)
            self.out_norms = nn.ModuleList([LayerNorm2d(d, eps=1e-6) for d in dims]) if out_norms else None
            # the official head: BatchNorm on the map → global pool → dropout → Linear
            self.head = NormPoolHead(nn.BatchNorm2d(dims[-1]), dims[-1], num_classes, global_pool, drop_rate)
        self._finish(dtype)

    def _intermediate(self, i: int, x: Tensor, norm: bool, last: bool, output_fmt: str) -> Tensor:
        # out_norms=True: every output goes through its detection-backbone LayerNorm; otherwise norm=True applies
        # the head's BatchNorm to the last stage's output
        if self.out_norms is not None:
            x = self.out_norms[i](x)
        elif norm and last:
            x = self.head.norm(x)
        return x.permute(0, 2, 3, 1) if output_fmt == "NHWC" else x


# ------------------------------------------------------------------------------ checkpoint filter
_BLOCK_RULES = (
    # official models/biformer.py Block + ops/bra_legacy.py BiLevelRoutingAttention / _common.AttentionLePE
    (r"^attn\.qkv\.qkv\.", "token_mixer.qkv."),  # BRA's QKVLinear wrapper
    (r"^attn\.wo\.", "token_mixer.proj."),  # BRA output linear
    (r"^attn\.", "token_mixer."),  # lepe, AttentionLePE qkv/proj
    (r"^mlp\.0\.", "mlp.fc1."),  # nn.Sequential(Linear, Identity, GELU, Linear)
    (r"^mlp\.3\.", "mlp.fc2."),
)


def checkpoint_filter(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map the official rayleizhu/BiFormer layout (``downsample_layers``, ``stages.i.j``) to ours.

    Accepts the raw state dict or the official file's ``{"model": state_dict}``. Our own layout passes
    through. Every official key must land on a model key, else ``KeyError`` lists the leftovers.
    """
    sd = dict(state_dict.get("model", state_dict)) if isinstance(state_dict.get("model"), Mapping) else dict(state_dict)
    if "stem.conv1.weight" in sd:
        return sd
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}  # our key -> the checkpoint's, for error messages
    for k, v in sd.items():
        nk = k
        # stem: downsample_layers.0 = Sequential(conv, BN, GELU, conv, BN)
        m = re.match(r"^downsample_layers\.0\.(\d)\.(.*)$", k)
        if m:
            nk = f"stem.{ {'0': 'conv1', '1': 'norm1', '3': 'conv2', '4': 'norm2'}[m.group(1)] }.{m.group(2)}"
        # downsamplers: downsample_layers.i = Sequential(conv, BN)
        m = re.match(r"^downsample_layers\.([1-9])\.(\d)\.(.*)$", k)
        if m:
            nk = f"stages.{m.group(1)}.downsample.{ {'0': 'conv', '1': 'norm'}[m.group(2)] }.{m.group(3)}"
        m = re.match(r"^stages\.(\d+)\.(\d+)\.(.*)$", k)
        if m:
            rest = m.group(3)
            for pat, rep in _BLOCK_RULES:
                rest, hit = re.subn(pat, rep, rest)
                if hit:
                    break
            nk = f"stages.{m.group(1)}.blocks.{m.group(2)}.{rest}"
        nk = re.sub(r"^norm\.", "head.norm.", nk)  # final BatchNorm2d
        nk = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", nk)
        # detection backbone (BiFormer_mm): extra_norms.i → out_norms.i
        nk = re.sub(r"^extra_norms\.", "out_norms.", nk)
        out[nk] = v
        origin[nk] = k
    return strict_filter(out, model, "BiFormer", origin)


# ------------------------------------------------------------------------------ pretrained cfgs
def _cfg(**kw: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.9,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.conv1", "classifier": "head.fc", "license": "mit",
        "paper_ids": "arXiv:2303.08810", "origin_url": "https://github.com/rayleizhu/BiFormer", **kw,
    }  # fmt: skip


_ONEDRIVE = "https://api.onedrive.com/v1.0/shares/{}/root/content"
PRETRAINED: dict[str, dict[str, Any]] = {
    # official OneDrive links (models/biformer.py model_urls); repeatedly broken upstream (issues #14, #53)
    "biformer_tiny.orig_in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChHEOoGkgwgQzEDlM")),
    "biformer_small.orig_in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChHDyM-x9KWRBZ832")),
    "biformer_base.orig_in1k": _cfg(url=_ONEDRIVE.format("s!AkBbczdRlZvChHI_XPhoadjaNxtO")),
}


def _create(variant: str, pretrained: bool, config: BiFormerConfig, **kwargs: Any) -> BiFormer:
    return build_backbone(BiFormer, variant, pretrained, config, checkpoint_filter=checkpoint_filter, **kwargs)


# ------------------------------------------------------------------------------ variant builders
@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def biformer_tiny(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    """BiFormer-T: 13.1 M params, 2.2 GMACs, 81.4 % top-1."""
    return _create("biformer_tiny", pretrained, BiFormerConfig((2, 2, 8, 2), (64, 128, 256, 512)), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def biformer_small(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    """BiFormer-S: 25.5 M params, 4.5 GMACs, 83.8 % top-1."""
    return _create("biformer_small", pretrained, BiFormerConfig((4, 4, 18, 4), (64, 128, 256, 512)), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def biformer_base(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    """BiFormer-B: 56.8 M params, 9.8 GMACs, 84.3 % top-1."""
    return _create("biformer_base", pretrained, BiFormerConfig((4, 4, 18, 4), (96, 192, 384, 768)), **kwargs)


@register_backbone(default_cfg=_cfg(input_size=(3, 64, 64), pool_size=(2, 2)), test=True)
def test_biformer(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    """Tiny BiFormer for tests (n_win 2: regions of 8×8, 4×4, 2×2 tokens at 64²)."""
    cfg = BiFormerConfig((1, 1, 1, 1), (16, 32, 48, 64), head_dim=8, topks=(1, 2, 4, -1), n_win=2)
    return _create("test_biformer", pretrained, cfg, **kwargs)
