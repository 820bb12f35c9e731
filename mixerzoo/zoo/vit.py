"""Vision Transformer (ViT) whose token mixers come from the registry.

Paper: "An Image is Worth 16x16 Words", Dosovitskiy et al., ICLR 2021, arXiv:2010.11929.
Reference implementation for the key layout: timm 1.0.31 ``vision_transformer.py`` (Apache-2.0).

Differences from timm's ViT, and why:
* The attention sub-layer is a registry mixer (``mixers=``, one name or one per block); it keeps the key
  name ``attn`` so timm's ViT checkpoints (``timm/vit_*``) load unchanged and give the same logits.
* Only the features the three registered variants need (class token, learned absolute position
  embedding, optional layer scale, token / avg pooling); no register tokens, no patch dropout.
* Mixers must take the ``nlc`` layout (the class token has no place on a 2-D grid).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from timm.layers import LayerScale, PatchEmbed, resample_abs_pos_embed
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import Tensor, nn

from mixerzoo.zoo._blocks import DropPath, Mlp, factory, init_weights, make_mixer, resolve_mixers, trunc_normal_
from mixerzoo.zoo._builder import build_backbone, unwrap_state_dict
from mixerzoo.zoo._checks import check_input
from mixerzoo.zoo._host import strict_filter
from mixerzoo.zoo._registry import register_backbone

__all__ = ["VisionTransformer", "ViTConfig", "checkpoint_filter"]


@dataclass(frozen=True)
class ViTConfig:
    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    init_values: float | None = None
    mixers: str | tuple[str, ...] = "attention"
    mixer_options: Any = None
    dynamic_img_size: bool = False

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, ``x + mlp(LN(x))`` on ``[B, N, C]``."""

    def __init__(
        self, dim: int, *, mixer: str, mixer_options: dict[str, Any] | None, num_heads: int, mlp_ratio: float,
        qkv_bias: bool, init_values: float | None, drop_path: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = make_mixer(mixer, dim, mixer_options, num_heads=num_heads, qkv_bias=qkv_bias)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class VisionTransformer(nn.Module):
    """ViT with a class token; ``forward_features`` returns normed tokens ``[B, 1 + N, C]``."""

    output_fmt = "NLC"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float | None = None,
        mixers: str | Sequence[str] = "attention",
        mixer_options: dict[str, Any] | None = None,
        dynamic_img_size: bool = False,
        *,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if global_pool not in ("", "token", "avg"):
            raise ValueError(f"global_pool={global_pool!r} must be one of '', 'token', 'avg'")
        names = resolve_mixers(mixers, depth, host="VisionTransformer", kinds=("mixer",), layouts=("nlc",))
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        with factory(device):
            self.patch_embed = PatchEmbed(
                img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                dynamic_img_pad=False, strict_img_size=not dynamic_img_size,
                output_fmt="NHWC" if dynamic_img_size else None, flatten=not dynamic_img_size,
            )  # fmt: skip
            num_patches = self.patch_embed.num_patches
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, embed_dim) * 0.02)
            self.blocks = nn.Sequential(
                *[
                    Block(
                        embed_dim, mixer=names[i], mixer_options=mixer_options, num_heads=num_heads,
                        mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, init_values=init_values, drop_path=dpr[i],
                    )  # fmt: skip
                    for i in range(depth)
                ]
            )
            r = self.patch_embed.feat_ratio() if hasattr(self.patch_embed, "feat_ratio") else patch_size
            self.feature_info = [{"module": f"blocks.{i}", "num_chs": embed_dim, "reduction": r} for i in range(depth)]
            self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
            self.head_drop = nn.Dropout(drop_rate)
            self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        init_weights(self, self._init_weights)  # skipped on meta
        if dtype is not None:
            self.to(dtype=dtype)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ---- timm contract -----------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": r"^cls_token|pos_embed|patch_embed", "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("", "token", "avg"):
                raise ValueError(f"global_pool={global_pool!r} must be one of '', 'token', 'avg'")
            self.global_pool = global_pool
        ref = self.cls_token
        self.head = (
            nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype) if num_classes > 0 else nn.Identity()
        )
        self.head.train(self.training)

    def set_input_size(self, img_size: int | tuple[int, int] | None = None, patch_size: Any = None) -> None:
        """Change the input resolution, resampling the position embedding (timm's hook)."""
        if patch_size is not None:
            raise ValueError(f"patch_size={patch_size!r}: changing the patch size is not supported")
        if img_size is None:
            return
        prev = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size=img_size)
        new = self.patch_embed.grid_size
        if new != prev:
            with torch.no_grad():
                pe = resample_abs_pos_embed(self.pos_embed, new_size=new, old_size=prev, num_prefix_tokens=1)
            self.pos_embed = nn.Parameter(pe, requires_grad=self.pos_embed.requires_grad)

    def _tokens(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        if self.dynamic_img_size:
            B, H, W, C = x.shape
            pos = resample_abs_pos_embed(self.pos_embed, new_size=(H, W), old_size=self.patch_embed.grid_size, num_prefix_tokens=1)
            x = x.reshape(B, H * W, C)
        else:
            pos = self.pos_embed
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + pos

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Block outputs without the class token, ``[B, C, H/p, W/p]`` (NCHW) or ``[B, N, C]`` (NLC)."""
        if not torch.jit.is_scripting():
            check_input(self, x)  # one-line error naming the model and (B, C, H, W)
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r} must be 'NCHW' or 'NLC'")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        B, _, height, width = x.shape
        x = self._tokens(x)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[: max_index + 1]
        intermediates = []
        for i, blk in enumerate(blocks):
            x = blk(x)
            if i in take:
                intermediates.append(self.norm(x) if norm else x)
        intermediates = [y[:, self.num_prefix_tokens :] for y in intermediates]
        if output_fmt == "NCHW":
            H, W = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [y.reshape(B, H, W, y.shape[-1]).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` → normed tokens ``[B, 1 + HW/p², C]``."""
        if not torch.jit.is_scripting():
            check_input(self, x)  # one-line error naming the model and (B, C, H, W)
        x = self._tokens(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens :].mean(dim=1)
        elif self.global_pool == "token":
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter(state_dict: dict[str, Tensor], model: VisionTransformer) -> dict[str, Tensor]:
    """timm's ViT layout is ours; resample ``pos_embed`` when the grid differs. Unknown keys fail."""
    out = {}
    for k, v in unwrap_state_dict(state_dict).items():
        if k == "pos_embed" and v.shape != model.pos_embed.shape:
            v = resample_abs_pos_embed(v, new_size=model.patch_embed.grid_size, num_prefix_tokens=1)
        out[k] = v
    return strict_filter(out, model, "ViT")


def _cfg(**kw: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.9,
        "interpolation": "bicubic", "fixed_input_size": True, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0",
        "paper_ids": "arXiv:2010.11929", "origin_url": "https://github.com/google-research/vision_transformer", **kw,
    }  # fmt: skip


PRETRAINED: dict[str, dict[str, Any]] = {
    "vit_tiny_patch16_224.augreg_in21k_ft_in1k": _cfg(hf_hub_id="timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"),
    "vit_small_patch16_224.augreg_in21k_ft_in1k": _cfg(hf_hub_id="timm/vit_small_patch16_224.augreg_in21k_ft_in1k"),
    "vit_base_patch16_224.augreg2_in21k_ft_in1k": _cfg(hf_hub_id="timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"),
}


def _create(variant: str, pretrained: bool, config: ViTConfig, **kwargs: Any) -> VisionTransformer:
    kwargs.setdefault("out_indices", 3)  # timm's isotropic default (the last 3 blocks); the caller's wins
    return build_backbone(VisionTransformer, variant, pretrained, config, checkpoint_filter=checkpoint_filter, **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def vit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-Ti/16 at 224²: 5.7 M params, 1.08 GMACs."""
    return _create("vit_tiny_patch16_224", pretrained, ViTConfig(embed_dim=192, num_heads=3), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def vit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-S/16 at 224²: 22.1 M params, 4.25 GMACs."""
    return _create("vit_small_patch16_224", pretrained, ViTConfig(embed_dim=384, num_heads=6), **kwargs)


@register_backbone(PRETRAINED, checkpoint_filter=checkpoint_filter)
def vit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-B/16 at 224²: 86.6 M params, 16.9 GMACs."""
    return _create("vit_base_patch16_224", pretrained, ViTConfig(embed_dim=768, num_heads=12), **kwargs)


@register_backbone(default_cfg=_cfg(input_size=(3, 32, 32)), test=True)
def test_vit(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Tiny ViT for tests (32², patch 8, 3 blocks)."""
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
    return _create("test_vit", pretrained, cfg, **kwargs)
