"""ResNets with CNN attention gates (CBAM, triplet attention, or any registry gate) in every block.

Papers: "CBAM: Convolutional Block Attention Module", Woo et al., ECCV 2018, arXiv:1807.06521;
"Rotate to Attend: Convolutional Triplet Attention Module", Misra et al., WACV 2021, arXiv:2010.03045.
Original code: https://github.com/Jongchan/attention-module (commit 459efad0, MIT) and
https://github.com/LandskapeAI/triplet-attention (commit f07524e4, MIT).

Structure (as both official ``MODELS/*resnet.py``): the ImageNet ResNet-18/34 (BasicBlock) and -50/101
(Bottleneck) with a gate after the last BN of every residual branch, before the addition. Keys follow
torchvision's ResNet (``conv1``, ``bn1``, ``layer1..4.j.{conv,bn}k``, ``downsample.0/1``, ``fc``), which is also
the official layout; only the gate keys differ (``layerI.J.gate.*``, see :func:`checkpoint_filter`).

Differences from the original, and why:
* The head pools with a global (adaptive) average pool instead of the official fixed ``AvgPool2d(7)``,
  so any input ≥ 32 px works. At 224² (7×7 final map) both are identical; at other sizes the official
  code either fails or pools a 7×7 window only.
* The gate is a registry name per stage (``gates="cbam"``, ``"triplet"``, a third-party gate, or ``None``
  for a plain ResNet) with ``gate_options`` (e.g. ``{"kernel_size": 3}`` for the k=3 triplet models).
* Optional stochastic depth (``drop_path_rate``, default 0 as the original) and classifier dropout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import Tensor, nn

from mixerzoo.zoo._blocks import DropPath, factory, make_mixer, resolve_mixers, stage_dpr
from mixerzoo.zoo._builder import build_backbone
from mixerzoo.zoo._checks import check_input
from mixerzoo.zoo._registry import register_backbone

__all__ = ["AttnResNet", "AttnResNetConfig", "BasicBlock", "Bottleneck", "checkpoint_filter"]

BLOCKS = ("basic", "bottleneck")
LAYERS = ("layer1", "layer2", "layer3", "layer4")


# ----------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class AttnResNetConfig:
    """``block`` "basic" (expansion 1) or "bottleneck" (expansion 4); ``widths`` are the blocks' inner widths
    (torchvision's ``planes``): stage ``i`` outputs ``widths[i] · expansion`` channels."""

    block: str = "basic"
    depths: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem_width: int = 64
    gates: str | None | tuple[str | None, ...] = "cbam"
    gate_options: Any = None  # dict for every stage, or one dict per stage

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise ValueError(f"block={self.block!r} must be one of {BLOCKS}")
        if len(self.depths) != 4 or len(self.widths) != 4:
            raise ValueError(f"depths={self.depths!r} and widths={self.widths!r} must both have 4 entries")


# ----------------------------------------------------------------------------------------- blocks
def _make_gate(name: str | None, dim: int, options: dict[str, Any] | None) -> nn.Module | None:
    return None if name is None else make_mixer(name, dim, options)


class BasicBlock(nn.Module):
    """``relu(gate(bn2(conv2(relu(bn1(conv1 x))))) + shortcut(x))``, 3×3 convs; ``[B, C, H, W]``."""

    expansion = 1

    def __init__(
        self, in_dim: int, width: int, *, stride: int, gate: str | None, gate_options: Any, drop_path: float
    ) -> None:
        super().__init__()
        out_dim = width * self.expansion
        self.conv1 = nn.Conv2d(in_dim, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, out_dim, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_dim)
        self.act = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_dim, out_dim, stride)
        self.gate = _make_gate(gate, out_dim, gate_options)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.gate is not None:
            out = self.gate(out)
        return self.act(self.drop_path(out) + shortcut)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride here, as torchvision) → 1×1 (×4) residual branch, gated after ``bn3``."""

    expansion = 4

    def __init__(
        self, in_dim: int, width: int, *, stride: int, gate: str | None, gate_options: Any, drop_path: float
    ) -> None:
        super().__init__()
        out_dim = width * self.expansion
        self.conv1 = nn.Conv2d(in_dim, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_dim, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_dim)
        self.act = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_dim, out_dim, stride)
        self.gate = _make_gate(gate, out_dim, gate_options)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.gate is not None:
            out = self.gate(out)
        return self.act(self.drop_path(out) + shortcut)


def _downsample(in_dim: int, out_dim: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_dim == out_dim:
        return None
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, 1, stride, bias=False), nn.BatchNorm2d(out_dim))


class Stage(nn.Sequential):
    """A ResNet ``layerN``: blocks ``0..depth-1`` (keys ``layerN.j.*``), grad-checkpointable."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(list(self), x)
        for block in self:
            x = block(x)
        return x


# ------------------------------------------------------------------------------------------ model
class AttnResNet(nn.Module):
    """ImageNet ResNet with a registry gate in every residual branch; input ``[B, C, H, W]``, H, W ≥ 32.

    The classifier pools globally (adaptive average), unlike the official fixed ``AvgPool2d(7)``.
    """

    __jit_unused_properties__ = ["stages"]  # noqa: RUF012  (TorchScript's hook, a plain class list)

    def __init__(
        self,
        block: str = "basic",
        depths: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_width: int = 64,
        gates: str | None | Sequence[str | None] = "cbam",
        gate_options: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
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
        if block not in BLOCKS:
            raise ValueError(f"block={block!r} must be one of {BLOCKS}")
        n = len(depths)
        if n != 4 or len(widths) != n:
            raise ValueError(f"depths={tuple(depths)!r} and widths={tuple(widths)!r} must both have 4 entries")
        gate_names = self._resolve_gates(gates, n)
        if gate_options is None or isinstance(gate_options, Mapping):
            opts = [dict(gate_options or {})] * n
        else:
            opts = [dict(o or {}) for o in gate_options]
            if len(opts) != n:
                raise ValueError(f"gate_options={gate_options!r}: need one dict or {n} (one per stage)")
        block_cls = BasicBlock if block == "basic" else Bottleneck
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = widths[-1] * block_cls.expansion
        self.grad_checkpointing = False
        dpr = stage_dpr(depths, drop_path_rate)
        with factory(device):
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_width)
            self.act1 = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.feature_info: list[dict[str, Any]] = []
            in_dim = stem_width
            for i in range(n):
                blocks = []
                for j in range(depths[i]):
                    blocks.append(
                        block_cls(
                            in_dim, widths[i], stride=2 if (i > 0 and j == 0) else 1, gate=gate_names[i],
                            gate_options=opts[i], drop_path=dpr[i][j],
                        )
                    )  # fmt: skip
                    in_dim = widths[i] * block_cls.expansion
                self.add_module(f"layer{i + 1}", Stage(blocks))
                self.feature_info.append({"num_chs": in_dim, "reduction": 4 * 2**i, "module": f"layer{i + 1}"})
            self.pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
            self.head_drop = nn.Dropout(drop_rate)
            self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()
        if dtype is not None:
            self.to(dtype=dtype)

    @staticmethod
    def _resolve_gates(gates: str | None | Sequence[str | None], n: int) -> tuple[str | None, ...]:
        if gates is None or isinstance(gates, str):
            names: tuple[str | None, ...] = (gates,) * n
        else:
            names = tuple(gates)
            if len(names) != n:
                raise ValueError(f"gates={gates!r}: AttnResNet needs one gate name or {n} (one per stage)")
        named = [g for g in names if g is not None]
        if any(not isinstance(g, str) for g in named):
            raise ValueError(f"gates={gates!r}: each entry must be a registry name or None")
        try:
            resolve_mixers(named, len(named), host="AttnResNet (gates=)", kinds=("gate",), layouts=("nchw",))
        except ValueError as err:
            raise ValueError(f"gates={gates!r}: {err}") from err
        return names

    def _init_weights(self) -> None:
        # as the official constructors: convs kaiming-normal fan_out, BN (1, 0), fc kaiming-normal with zero
        # bias; gates keep their own init (their "SpatialGate" BN weights start at 0)
        gate_modules = {id(m) for b in self.modules() if getattr(b, "gate", None) is not None for m in b.gate.modules()}
        for m in self.modules():
            if id(m) in gate_modules:
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if isinstance(self.fc, nn.Linear):
            nn.init.kaiming_normal_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    # ---- timm contract -----------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": r"^conv1|^bn1", "blocks": r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)"}

    @property
    def stages(self) -> list[nn.Module]:
        """``[layer1, layer2, layer3, layer4]`` (a pruned stage is an ``nn.Identity``)."""
        return [getattr(self, name) for name in LAYERS]

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for s in self.stages:
            if isinstance(s, Stage):
                s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
            self.pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        ref = self.conv1.weight
        self.fc = (
            nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            if num_classes > 0
            else nn.Identity()
        )
        self.pool.train(self.training)
        self.fc.train(self.training)

    def forward_stem(self, x: Tensor) -> Tensor:
        # the body runs in channels_last memory format (faster convs and gates on CPU and GPU); the logical
        # layout stays NCHW, so callers see no difference
        x = x.contiguous(memory_format=torch.channels_last)
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs ``[B, C_i, H/4·2^-i, W/4·2^-i]`` for the stages in ``indices``."""
        if not torch.jit.is_scripting():
            check_input(self, x)  # one-line error naming the model and (B, C, H, W)
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: AttnResNet supports 'NCHW' only")
        take, max_index = feature_take_indices(len(LAYERS), indices)
        intermediates = []
        x = self.forward_stem(x)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[: max_index + 1]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take, max_index = feature_take_indices(len(LAYERS), indices)
        for name in LAYERS[max_index + 1 :]:
            setattr(self, name, nn.Identity())  # keeps the attribute, as timm's ResNet
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` → ``[B, num_features, H/32, W/32]`` (ceil)."""
        if not torch.jit.is_scripting():
            check_input(self, x)  # one-line error naming the model and (B, C, H, W)
        x = self.forward_stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# ------------------------------------------------------------------------------ checkpoint filter
# official gate sub-keys → ours, after the block attribute (cbam / triplet_attention / pcam / triplet)
_GATE_RULES: tuple[tuple[str, str], ...] = (
    # Jongchan/attention-module MODELS/cbam.py: mlp.0 is a Flatten and mlp.2 the ReLU, hence 1 and 3
    (r"ChannelGate\.mlp\.1\.", "channel.fc1."),
    (r"ChannelGate\.mlp\.3\.", "channel.fc2."),
    (r"SpatialGate\.spatial\.(conv|bn)\.", r"spatial.\1."),
    # LandskapeAI/triplet-attention MODELS/triplet_attention.py (ChannelGateH pools over H → our cw)
    (r"ChannelGateH\.spatial\.(conv|bn)\.", r"cw.\1."),
    (r"ChannelGateW\.spatial\.(conv|bn)\.", r"hc.\1."),
    # (its SpatialGate → our hw; handled in _map_gate_key because CBAM uses the same name)
    # triplet-attention root triplet_attention.py: AttentionGate's BasicConv is called `conv`
    (r"(cw|hc|hw)\.conv\.(conv|bn)\.", r"\1.\2."),
)
_GATE_ATTRS = ("cbam", "triplet_attention", "pcam", "triplet")


def _map_gate_key(attr: str, rest: str) -> str | None:
    if attr != "cbam" and rest.startswith("SpatialGate.spatial."):
        return "hw." + rest[len("SpatialGate.spatial.") :]  # triplet MODELS/ (and `pcam`): third branch
    for pat, rep in _GATE_RULES:
        new, n = re.subn("^" + pat, rep, rest)
        if n:
            return new
    return None


def checkpoint_filter(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """Map the official CBAM / triplet-attention ResNet checkpoints to this layout.

    Accepted: a ``{"state_dict": ...}`` training checkpoint; ``module.`` prefixes (DataParallel); CBAM's
    ``layerI.J.cbam.{ChannelGate.mlp.1/3, SpatialGate.spatial.conv/bn}``; triplet's ``MODELS/`` layout
    ``layerI.J.triplet_attention.{ChannelGateH,ChannelGateW,SpatialGate}.spatial.{conv,bn}``, the same under the
    block attribute ``pcam`` (the released ImageNet weights) or ``triplet``; and the root-file layout
    ``…{cw,hc,hw}.conv.{conv,bn}``. Our own layout passes through. ``num_batches_tracked`` buffers missing
    from old (PyTorch 0.4.0) checkpoints are taken from the model. Every source key must be consumed,
    else ``KeyError`` lists the leftovers.
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]  # the official train_imagenet.py checkpoint dict
    expected = model.state_dict()
    out: dict[str, Tensor] = {}
    unconsumed = []
    for k, v in state_dict.items():
        nk = k
        while nk.startswith("module."):  # nn.DataParallel
            nk = nk[len("module.") :]
        m = re.match(r"^(layer\d+\.\d+)\.(" + "|".join(_GATE_ATTRS) + r")\.(.*)$", nk)
        if m:
            rest = _map_gate_key(m.group(2), m.group(3))
            nk = f"{m.group(1)}.gate.{rest}" if rest is not None else nk
        if nk not in expected:
            unconsumed.append(k)
            continue
        out[nk] = v
    if unconsumed:
        raise KeyError(
            f"checkpoint_filter: {len(unconsumed)} checkpoint keys match nothing in {type(model).__name__}: "
            f"{unconsumed[:8]}"
        )
    for k, v in expected.items():
        if k.endswith("num_batches_tracked") and k not in out:
            out[k] = v.clone()
    return out


# ------------------------------------------------------------------------------ pretrained cfgs
_CBAM = {
    "license": "mit", "paper_ids": "arXiv:1807.06521", "origin_url": "https://github.com/Jongchan/attention-module",
}  # fmt: skip
_TRIPLET = {
    "license": "mit", "paper_ids": "arXiv:2010.03045", "origin_url": "https://github.com/LandskapeAI/triplet-attention",
}  # fmt: skip


def _cfg(**kw: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
        "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        "first_conv": "conv1", "classifier": "fc", **kw,
    }  # fmt: skip


PRETRAINED: dict[str, dict[str, Any]] = {
    # Google Drive releases (.pth.tar pickles, {"state_dict": module.-prefixed keys, ...}); the READMEs
    # of Jongchan/attention-module and LandskapeAI/triplet-attention. Drive may answer scripts with an HTML
    # confirmation page: download by hand and pass
    # pretrained_cfg_overlay=dict(file=...) (not verified here: no network).
    "resnet50_cbam.orig_in1k": _cfg(url="https://drive.google.com/file/d/1mvAVvhLR_2XY_bPYxh-SEz4vDmGzSArO", **_CBAM),
    "resnet18_triplet.orig_in1k": _cfg(
        url="https://drive.google.com/file/d/1jIDfA0Psce10L06hU0Rtz8t7s2U1oqLH", **_TRIPLET
    ),
    "resnet50_triplet.orig_in1k": _cfg(
        url="https://drive.google.com/file/d/1ptKswHzVmULGbE3DuX6vMCjEbqwUvGiG", **_TRIPLET
    ),
}


def _create(variant: str, pretrained: bool, config: AttnResNetConfig, **kwargs: Any) -> AttnResNet:
    return build_backbone(AttnResNet, variant, pretrained, config, checkpoint_filter=checkpoint_filter, **kwargs)


def _basic(depths: tuple[int, ...], gates: str) -> AttnResNetConfig:
    return AttnResNetConfig("basic", depths, gates=gates)


def _bottleneck(depths: tuple[int, ...], gates: str) -> AttnResNetConfig:
    return AttnResNetConfig("bottleneck", depths, gates=gates)


# ------------------------------------------------------------------------------ variant builders
@register_backbone(default_cfg=_cfg(**_CBAM), checkpoint_filter=checkpoint_filter)
def resnet18_cbam(pretrained: bool = False, **kwargs: Any) -> AttnResNet:
    """ResNet-18 + CBAM: 11.78 M params, 1.82 GMACs (no released weights)."""
    return _create("resnet18_cbam", pretrained, _basic((2, 2, 2, 2), "cbam"), **kwargs)


@register_backbone(default_cfg=_cfg(**_CBAM), checkpoint_filter=checkpoint_filter)
def resnet34_cbam(pretrained: bool = False, **kwargs: Any) -> AttnResNet:
    """ResNet-34 + CBAM: 21.96 M params, 3.67 GMACs (no released weights)."""
    return _create("resnet34_cbam", pretrained, _basic((3, 4, 6, 3), "cbam"), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def resnet50_cbam(pretrained: bool = False, **kwargs: Any) -> AttnResNet:
    """ResNet-50 + CBAM: 28.09 M params, 4.12 GMACs, 77.62 % top-1 (official checkpoint)."""
    return _create("resnet50_cbam", pretrained, _bottleneck((3, 4, 6, 3), "cbam"), **kwargs)


@register_backbone(default_cfg=_cfg(**_CBAM), checkpoint_filter=checkpoint_filter)
def resnet101_cbam(pretrained: bool = False, **kwargs: Any) -> AttnResNet:
    """ResNet-101 + CBAM: 49.33 M params, 7.85 GMACs (no released weights)."""
    return _create("resnet101_cbam", pretrained, _bottleneck((3, 4, 23, 3), "cbam"), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def resnet18_triplet(pretrained: bool = False, **kwargs: Any) -> AttnResNet:
    """ResNet-18 + triplet attention (k=7): 11.69 M params, 1.83 GMACs, 71.09 % top-1."""
    return _create("resnet18_triplet", pretrained, _basic((2, 2, 2, 2), "triplet"), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def resnet50_triplet(pretrained: bool = False, **kwargs: Any) -> AttnResNet:
    """ResNet-50 + triplet attention (k=7): 25.56 M params, 4.16 GMACs, 77.48 % top-1."""
    return _create("resnet50_triplet", pretrained, _bottleneck((3, 4, 6, 3), "triplet"), **kwargs)


# tiny variants: the shapes of the official-code test vectors in tests/expect/attn_resnet/
_TEST_CFG = _cfg(input_size=(3, 64, 64), pool_size=(2, 2), license="mit")


@register_backbone(default_cfg=_TEST_CFG, test=True)
def test_resnet_cbam(pretrained: bool = False, **kwargs: Any) -> AttnResNet:
    """Tiny BasicBlock ResNet with CBAM (stem 16, widths 16-16-16-32, depths 2-1-1-1) for tests."""
    cfg = AttnResNetConfig("basic", (2, 1, 1, 1), (16, 16, 16, 32), stem_width=16, gates="cbam")
    return _create("test_resnet_cbam", pretrained, cfg, **kwargs)


@register_backbone(default_cfg=_TEST_CFG, test=True)
def test_resnet_triplet(pretrained: bool = False, **kwargs: Any) -> AttnResNet:
    """Tiny Bottleneck ResNet with triplet attention (stem 16, widths 8-8-16-16, depths 2-1-1-1) for tests."""
    cfg = AttnResNetConfig("bottleneck", (2, 1, 1, 1), (8, 8, 16, 16), stem_width=16, gates="triplet")
    return _create("test_resnet_triplet", pretrained, cfg, **kwargs)
