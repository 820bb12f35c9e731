"""NAT / DiNAT / DiNAT_s: parity with the official implementation, checkpoint filter, sizes, swaps.

``tests/expect/nat/tiny_{nat,dinat,dinat_s}_official.safetensors`` were produced by running the official
classification code (SHI-Labs/Neighborhood-Attention-Transformer @ d334f5bb: ``classification/nat.py``,
``dinat.py``, ``dinats.py``) with a NATTEN-free stand-in for ``natten.NeighborhoodAttention2D`` (NATTEN
0.14 semantics, a pure-PyTorch gather written from NATTEN's index rule (SHI-Labs/NATTEN), independent
of mixerzoo) on tiny configurations::

    NAT(embed_dim=4, mlp_ratio=3, depths=[1, 1, 1, 1], num_heads=[2, 2, 4, 4], kernel_size=3,
        num_classes=10, layer_scale=1e-5)                                   # input 96×80
    DiNAT(embed_dim=4, mlp_ratio=2, depths=[2, 2, 2, 1], num_heads=[2, 2, 4, 4], kernel_size=3,
          num_classes=10, dilations=[[1, 4], [1, 2], [1, 2], [1]])          # input 96×96
    DiNAT_s(embed_dim=4, mlp_ratio=4, depths=[2, 1, 2, 1], num_heads=[2, 2, 4, 4], kernel_size=3,
            num_classes=10, dilations=[[1, 4], [1], [1, 2], [1]])           # input 98×95 (padding paths)

with every parameter randomised (generator seed 1: norm weights 1 + 0.2·N(0,1), layer-scale gammas
0.5 + 0.2·N(0,1), everything else 0.2·N(0,1)), in eval mode. Keys ``sd.*`` hold the official state dict,
``input`` (stored as fp16, exactly representable) and ``logits`` (fp32).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mixerzoo
from mixerzoo.zoo.nat import NAT, checkpoint_filter

EXPECT = Path(__file__).resolve().parents[1] / "expect" / "nat"
CASES = {
    "nat": ("test_nat", {"mlp_ratio": 3.0}),
    "dinat": ("test_dinat", {"mlp_ratio": 2.0, "dilations": ((1, 4), (1, 2), (1, 2), (1,))}),
    "dinat_s": ("test_dinat_s", {"dilations": ((1, 4), (1,), (1, 2), (1,))}),
}


def _case(name: str) -> tuple[dict[str, torch.Tensor], NAT, dict[str, torch.Tensor]]:
    data = load_file(EXPECT / f"tiny_{name}_official.safetensors")
    sd = {k[3:]: v for k, v in data.items() if k.startswith("sd.")}
    arch, kw = CASES[name]
    model = mixerzoo.create_model(arch, dims=(4, 8, 16, 32), num_classes=10, **kw).eval()
    return data, model, sd


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_equal_official(name: str) -> None:
    data, model, sd = _case(name)
    model.load_state_dict(checkpoint_filter(sd, model), strict=True)
    with torch.no_grad():
        out = model(data["input"].float())
    torch.testing.assert_close(out, data["logits"], rtol=0, atol=1e-4)


def test_unshifted_borders_would_break_parity() -> None:
    """Sanity of the vectors: zero-padded (unshifted) border windows differ at the 1e-4 level."""
    data, model, sd = _case("nat")
    model.load_state_dict(checkpoint_filter(sd, model), strict=True)
    with torch.no_grad():
        for blk in (b for s in model.stages for b in s.blocks):
            blk.token_mixer.rpb.copy_(blk.token_mixer.rpb.flip(-1))  # a mirrored bias index breaks it too
        out = model(data["input"].float())
    assert (out - data["logits"]).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(CASES))
def test_checkpoint_filter_strict_key_accounting(name: str) -> None:
    _, model, sd = _case(name)
    mapped = checkpoint_filter(sd, model)
    assert set(mapped) == set(model.state_dict()) and len(mapped) == len(sd)
    assert checkpoint_filter(mapped, model) == mapped  # our layout passes through
    with pytest.raises(KeyError, match=r"levels\.0\.blocks\.0\.attn\.bogus|layers\.0\.blocks\.0\.attn\.bogus"):
        prefix = "layers" if name == "dinat_s" else "levels"
        checkpoint_filter({**sd, f"{prefix}.0.blocks.0.attn.bogus": torch.zeros(1)}, model)


def test_detection_norms_load_into_out_norms() -> None:
    model = mixerzoo.create_model("test_nat", out_norms=True)
    sd = {}
    for k, v in model.state_dict().items():
        k = k.replace("out_norms.", "norm").replace("stem.conv1.", "patch_embed.proj.0.")
        sd[k.replace("stem.conv2.", "patch_embed.proj.1.").replace("stem.norm.", "patch_embed.norm.")] = v
    assert set(checkpoint_filter(sd, model)) == set(model.state_dict())


# official state-dict sizes and parameter counts (instantiated from the official code with the stand-in)
OFFICIAL: dict[str, tuple[int, int]] = {
    "nat_mini": (253, 19_984_174), "nat_small": (469, 50_743_297), "dinat_small": (409, 50_719_681),
    "dinat_large": (409, 200_943_514), "dinat_s_tiny": (173, 28_288_354),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_real_variant_layouts(name: str) -> None:
    model = mixerzoo.create_model(name, device="meta")
    keys, params = OFFICIAL[name]
    assert len(model.state_dict()) == keys
    assert sum(p.numel() for p in model.parameters()) == params
    blocks = [b for s in model.stages for b in s.blocks]
    assert (blocks[0].gamma1 is not None) == (name == "nat_small")  # layer scale per variant
    assert all(b.norm1.eps == 1e-5 for b in blocks)
    if name.startswith("dinat"):
        assert [b.token_mixer.dilation for b in model.stages[0].blocks][:2] == [1, 8]


def test_dilations_and_kernel_of_large_variants() -> None:
    m384 = mixerzoo.create_model("dinat_large_384", device="meta")
    assert [b.token_mixer.dilation for b in m384.stages[0].blocks] == [1, 13, 1]
    k11 = mixerzoo.create_model("dinat_large_384_11x11", device="meta")
    assert k11.stages[0].blocks[0].token_mixer.rpb.shape == (6, 21, 21)
    assert k11.pretrained_cfg["input_size"] == (3, 384, 384)


def test_tokenizer_has_no_activation() -> None:
    model = mixerzoo.create_model("test_nat")
    assert [type(m).__name__ for m in model.stem.children()] == ["Conv2d", "Conv2d", "LayerNorm"]


@pytest.mark.parametrize("size", [(96, 96), (100, 131), (97, 96)])
def test_any_size_above_the_limit(size) -> None:
    model = mixerzoo.create_model("test_dinat").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 1000)


def test_small_input_clear_error_or_pad_mask() -> None:
    model = mixerzoo.create_model("test_dinat", small_input="error").eval()
    with pytest.raises(ValueError, match=r"kernel_size \* dilation = 12, got H=16, W=8.*small_input='pad_mask'"):
        model(torch.randn(1, 3, 64, 32))
    padded = mixerzoo.create_model("test_dinat", small_input="pad_mask").eval()
    with torch.no_grad():
        assert torch.isfinite(padded(torch.randn(1, 3, 64, 32))).all()


@pytest.mark.parametrize("name", ["test_nat", "test_dinat", "test_dinat_s"])
def test_small_input_pad_mask_is_the_default_for_fine_tuning(name: str) -> None:
    """Fine-tuning at small sizes works by default; above the limit the default changes nothing."""
    model = mixerzoo.create_model(name, num_classes=3)
    assert all(m.small_input == "pad_mask" for m in model.modules() if hasattr(m, "small_input"))
    out = model(torch.randn(2, 3, 32, 40))  # every stage below kernel_size × dilation
    out.sum().backward()
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    strict = mixerzoo.create_model(name, num_classes=3, small_input="error").eval()
    strict.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, *model.pretrained_cfg["input_size"][1:])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), strict(x), rtol=0, atol=0)


def test_features_and_out_norms() -> None:
    model = mixerzoo.create_model("test_dinat_s", features_only=True, out_norms=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 98, 95))
    assert [tuple(f.shape) for f in feats] == [(1, 16, 25, 24), (1, 32, 13, 12), (1, 64, 7, 6), (1, 128, 4, 3)]
    for f in feats:  # LayerNorm with unit weight / zero bias: channel mean 0 at every pixel
        torch.testing.assert_close(f.mean(1), torch.zeros_like(f.mean(1)), atol=1e-5, rtol=0)
    plain = mixerzoo.create_model("test_nat").eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        nhwc = plain.forward_intermediates(x, norm=True, output_fmt="NHWC", intermediates_only=True)
        ref = plain.head.norm(plain.forward_features(x).permute(0, 2, 3, 1))
    torch.testing.assert_close(nhwc[-1], ref)


def test_mixer_swaps() -> None:
    model = mixerzoo.create_model("test_nat", mixers=("bra", "attention", "pooling", "neighborhood"), num_classes=3)
    model(torch.randn(2, 3, 96, 96)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="mixers="):
        mixerzoo.create_model("test_nat", mixers=("bra", "attention"))
