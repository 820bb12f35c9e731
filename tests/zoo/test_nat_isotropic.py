"""Isotropic NAT / DiNAT / ViT-rpb: parity with the official implementation, checkpoint filter, sizes.

``tests/expect/nat_isotropic/tiny_{nat_isotropic,dinat_isotropic,vitrpb}_official.safetensors`` were made by
running the official ``classification/isotropic.py`` (SHI-Labs/Neighborhood-Attention-Transformer @ d334f5bb,
with ``dinats.py``/``nat.py`` for the NA layer, patch embedding and MLP) in a scratch directory, with a
NATTEN-free stand-in for ``natten.NeighborhoodAttention2D`` (NATTEN 0.14 semantics: dense attention masked
to the neighbourhood, written from NATTEN's index rule (SHI-Labs/NATTEN) independently of mixerzoo; it was
cross-checked against ``neighborhood_attention_2d(impl="reference")`` to 2e-7). Tiny configurations::

    NATIsotropic(img_size=36, patch_size=4, embed_dim=16, num_heads=2, mlp_ratio=4, num_classes=10,
                 depth=2, kernel_size=3, dilation=1)                                   # nat_isotropic
    ... depth=4, kernel_size=3, dilation=2                                             # dinat_isotropic
    ... depth=2, layer=VisionTransformerLayer (MHSARPB, 9×9 grid)                      # vitrpb

with every floating-point tensor randomised (generator seed 1: LayerNorm weights 1 + 0.2·N(0,1), the rest
0.2·N(0,1)), eval mode, input ``[2, 3, 36, 36]`` (a 9×9 token grid: asymmetric border windows). Keys ``sd.*``
hold the official state dict (the ViT-rpb one includes the ``relative_position_index`` buffers),
``input`` (fp16, exactly representable) and ``logits`` (fp32). The same check at full size (official
``dinat_isotropic_small`` / ``vitrpb_small``, random weights, 224²) gave |Δlogits| ≤ 2e-7 (not stored).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mixerzoo
from mixerzoo.zoo.nat_isotropic import NATIsotropic, checkpoint_filter, official_relative_position_index

EXPECT = Path(__file__).resolve().parents[1] / "expect" / "nat_isotropic"
CASES = {
    "nat_isotropic": {"depth": 2, "mixers": "neighborhood", "dilation": 1},
    "dinat_isotropic": {"depth": 4, "mixers": "neighborhood", "dilation": 2},
    "vitrpb": {"depth": 2, "mixers": "attention_rpb"},
}


def _case(name: str) -> tuple[dict[str, torch.Tensor], NATIsotropic, dict[str, torch.Tensor]]:
    data = load_file(EXPECT / f"tiny_{name}_official.safetensors")
    sd = {k[3:]: v for k, v in data.items() if k.startswith("sd.")}
    model = mixerzoo.create_model("test_nat_isotropic", num_classes=10, rpb_size=9, **CASES[name]).eval()
    return data, model, sd


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_equal_official(name: str) -> None:
    data, model, sd = _case(name)
    model.load_state_dict(checkpoint_filter(sd, model), strict=True)
    with torch.no_grad():
        out = model(data["input"].float())
    torch.testing.assert_close(out, data["logits"], rtol=0, atol=1e-4)


def test_wrong_dilation_breaks_parity() -> None:
    """Sanity of the vectors: the DiNAT vector is sensitive to the dilation schedule."""
    data, model, sd = _case("dinat_isotropic")
    wrong = mixerzoo.create_model("test_nat_isotropic", num_classes=10, depth=4, dilation=1, mixers="neighborhood")
    wrong.load_state_dict(checkpoint_filter(sd, model), strict=True)
    with torch.no_grad():
        out = wrong.eval()(data["input"].float())
    assert (out - data["logits"]).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(CASES))
def test_checkpoint_filter_strict_key_accounting(name: str) -> None:
    _, model, sd = _case(name)
    mapped = checkpoint_filter(sd, model)
    index_keys = [k for k in sd if k.endswith("relative_position_index")]
    assert len(index_keys) == (2 if name == "vitrpb" else 0)
    assert set(mapped) == set(model.state_dict()) and len(mapped) == len(sd) - len(index_keys)
    assert checkpoint_filter(mapped, model) == mapped  # our layout passes through
    with pytest.raises(KeyError, match=r"layers\.0\.attn\.bogus"):
        checkpoint_filter({**sd, "layers.0.attn.bogus": torch.zeros(1)}, model)
    if index_keys:  # a buffer that is not the official index is an error, not silently dropped
        bad = {**sd, index_keys[0]: sd[index_keys[0]].flip(0)}
        with pytest.raises(ValueError, match="relative index"):
            checkpoint_filter(bad, model)


def test_official_relative_position_index_matches_the_vector() -> None:
    _, _, sd = _case("vitrpb")
    torch.testing.assert_close(sd["layers.0.attn.relative_position_index"], official_relative_position_index(9))


# official state-dict sizes and parameter counts (instantiated from the official isotropic.py with the stand-in)
OFFICIAL: dict[str, tuple[int, int]] = {
    "nat_isotropic_small": (164, 21_999_736), "dinat_isotropic_base": (164, 86_465_800),
    "vitrpb_small": (176, 22_080_376), "vitrpb_base": (176, 86_627_080),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_real_variant_layouts(name: str) -> None:
    model = mixerzoo.create_model(name, device="meta")
    keys, params = OFFICIAL[name]
    rpb_buffers = 12 if name.startswith("vitrpb") else 0  # official buffers, checked and dropped by the filter
    assert len(model.state_dict()) == keys - rpb_buffers
    assert sum(p.numel() for p in model.parameters()) == params
    dil = [getattr(b.token_mixer, "dilation", None) for b in model.blocks]
    if name.startswith("dinat"):
        assert dil == [1, 2] * 6
    elif name.startswith("nat"):
        assert dil == [1] * 12
    assert all(b.norm1.eps == 1e-5 for b in model.blocks)


@pytest.mark.parametrize("size", [(32, 32), (36, 44), (35, 30)])
def test_any_size_above_the_limit(size) -> None:
    model = mixerzoo.create_model("test_nat_isotropic", mixers="neighborhood").eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, *size))
    assert feats.shape == (1, 16, -(-size[0] // 4), -(-size[1] // 4))


def test_small_input_and_rpb_grid_limits() -> None:
    model = mixerzoo.create_model("test_nat_isotropic", small_input="error").eval()
    with pytest.raises(ValueError, match=r"kernel_size \* dilation = 6, got H=5, W=8"):
        model(torch.randn(1, 3, 20, 32))
    with pytest.raises(ValueError, match=r"token grid 9×8 exceeds rpb_size=8"):
        model(torch.randn(1, 3, 36, 32))
    padded = mixerzoo.create_model("test_nat_isotropic", small_input="pad_mask", mixers="neighborhood").eval()
    with torch.no_grad():
        assert torch.isfinite(padded(torch.randn(1, 3, 20, 16))).all()


def test_rpb_on_a_smaller_grid_is_the_crop_of_the_full_bias() -> None:
    mixer = mixerzoo.create_model("test_nat_isotropic").blocks[2].token_mixer
    full = mixer.bias(8, 8).view(2, 8, 8, 8, 8)
    torch.testing.assert_close(mixer.bias(5, 7), full[:, :5, :7, :5, :7].reshape(2, 35, 35))


def test_intermediates_vit_style() -> None:
    model = mixerzoo.create_model("test_nat_isotropic").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=[0, 3], norm=True, output_fmt="NLC")
        ref = model.head.norm(model.forward_features(x).permute(0, 2, 3, 1)).flatten(1, 2)
    assert [t.shape for t in inter] == [(1, 64, 16)] * 2
    torch.testing.assert_close(inter[-1], ref)
    assert final.shape == (1, 16, 8, 8)
    feats = mixerzoo.create_model("test_nat_isotropic", features_only=True).eval()
    assert [f.shape for f in feats(x)] == [(1, 16, 8, 8)] * 3  # last three blocks, like timm's ViT
    assert model.no_weight_decay() == {f"blocks.{i}.token_mixer.rpb" for i in range(4)}
