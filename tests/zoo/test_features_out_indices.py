"""``features_only=True, out_indices=...`` on the isotropic families (ViT, isotropic NAT/DiNAT, ViT-rpb), as in timm.

Their builders passed a fixed ``out_indices=3`` next to the caller's (``got multiple values for keyword argument
'out_indices'``); 3 (the last three blocks) is now only the default.
"""

from __future__ import annotations

import pytest
import timm
import torch

import mixerzoo


@pytest.mark.parametrize("name", ["test_vit", "test_nat_isotropic"])
def test_out_indices_select_blocks(name: str) -> None:
    torch.manual_seed(0)
    model = mixerzoo.create_model(name, features_only=True, out_indices=(1, 2)).eval()
    assert model.feature_info.module_name() == ["blocks.1", "blocks.2"]
    torch.manual_seed(0)
    full = mixerzoo.create_model(name).eval()  # same init
    x = torch.randn(2, *full.pretrained_cfg["input_size"])
    with torch.no_grad():
        feats = model(x)
        ref = full.forward_intermediates(x, indices=(1, 2), intermediates_only=True)
    assert len(feats) == 2
    for f, r in zip(feats, ref, strict=True):
        torch.testing.assert_close(f, r)


@pytest.mark.parametrize("name", ["vitrpb_small", "nat_isotropic_small", "vit_small_patch16_224"])
def test_out_indices_real_variants_like_timm(name: str) -> None:
    model = mixerzoo.create_model(name, features_only=True, out_indices=(1, 2), device="meta")
    assert model.feature_info.module_name() == ["blocks.1", "blocks.2"]
    default = mixerzoo.create_model(name, features_only=True, device="meta")
    ref = timm.create_model("vit_small_patch16_224", features_only=True, device="meta")  # timm's own default
    assert default.feature_info.module_name() == ref.feature_info.module_name() == ["blocks.9", "blocks.10", "blocks.11"]
