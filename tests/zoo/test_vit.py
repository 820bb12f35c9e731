"""ViT: key-compatible with timm's ViT, same logits with the same weights."""

from __future__ import annotations

import pytest
import timm
import torch

import mixerzoo


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224"])
def test_logits_equal_timm_vit_with_the_same_weights(name: str) -> None:
    ref = timm.create_model(name).eval()
    ours = mixerzoo.create_model(name).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)
        _, inter = ours.forward_intermediates(x, indices=2)
        _, ref_inter = ref.forward_intermediates(x, indices=2)
    for a, b in zip(inter, ref_inter, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_params() -> None:
    for name, n in {"vit_tiny_patch16_224": 5.72e6, "vit_small_patch16_224": 22.05e6, "vit_base_patch16_224": 86.57e6}.items():
        got = sum(p.numel() for p in mixerzoo.create_model(name, device="meta").parameters())
        assert abs(got - n) / n < 0.005, (name, got)


def test_fixed_size_error_and_dynamic_size() -> None:
    model = mixerzoo.create_model("test_vit").eval()
    with pytest.raises(AssertionError, match="Input height"):
        model(torch.randn(1, 3, 48, 48))
    dyn = mixerzoo.create_model("test_vit", dynamic_img_size=True).eval()
    assert dyn(torch.randn(1, 3, 48, 40)).shape == (1, 1000)
    model.set_input_size(48)
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 1000)


def test_only_nlc_mixers() -> None:
    with pytest.raises(ValueError, match="'pooling'.*nchw.*VisionTransformer"):
        mixerzoo.create_model("test_vit", mixers="pooling")
