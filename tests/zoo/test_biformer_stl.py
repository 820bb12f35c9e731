"""BiFormer-STL / STL-nchw: parity with the official implementation, checkpoint filter, sizes.

``tests/expect/biformer_stl/tiny_{stl,stl_nchw}_official.safetensors`` were made by running the official
``models/biformer_stl.py`` (with ``ops/bra_legacy.py``, ``models/_common.py``) and
``models/biformer_stl_nchw.py`` (with ``ops/bra_nchw.py``, ``ops/torch/rrsda.py``) of rayleizhu/BiFormer @
1697bbbe in a scratch directory (fairscale's ``checkpoint_wrapper`` stubbed as identity; it is unused without
``use_checkpoint_stages``) on tiny configurations::

    BiFormerSTL(depth=[1, 2, 1, 1], embed_dim=[8, 16, 24, 32], mlp_ratios=[4] * 4, head_dim=8,
                norm_layer=nn.BatchNorm2d, n_wins=(2, 2, 2, 2), side_dwconv=5, num_classes=10,
                topks=(1, 2, 4, -2))                                     # stl: stage 4 = AttentionLePE
    nchwBiFormerSTL(... the same ..., topks=(1, 2, 4, -1))               # stl_nchw: stage 4 = nchwAttentionLePE

with every floating-point tensor randomised (generator seed 1: BN running_var 0.5 + U(0,1), 1-D weights
1 + 0.2·N(0,1), the rest 0.2·N(0,1)) and rounded to fp16 (stored as fp16, exact), eval mode, input
``[2, 3, 64, 64]`` (stage maps 16/8/4/2: regions of 8×8, 4×4, 2×2 and 1×1 tokens; top-1 routing among 4
regions in stage 1). Keys ``sd.*`` hold the official state dict, ``input`` (fp16) and ``logits`` (fp32).
The same check at full size (official ``biformer_stl`` / ``biformer_stl_nchw`` with perturbed random
weights, 224²) gave |Δlogits| ≤ 2.4e-6 (not stored).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mixerzoo
from mixerzoo.zoo.biformer_stl import BiFormerSTL, checkpoint_filter

EXPECT = Path(__file__).resolve().parents[1] / "expect" / "biformer_stl"
MIXERS = {
    "stl": ("bra", "bra", "bra", "attention_lepe"),
    "stl_nchw": ("bra", "bra", "bra", "attention_lepe_v"),
}


def _model(mixers: tuple[str, ...]) -> BiFormerSTL:
    return mixerzoo.create_model(
        "test_biformer_stl", dims=(8, 16, 24, 32), depths=(1, 2, 1, 1), num_classes=10, mixers=mixers
    ).eval()


def _case(name: str) -> tuple[dict[str, torch.Tensor], BiFormerSTL, dict[str, torch.Tensor]]:
    data = load_file(EXPECT / f"tiny_{name}_official.safetensors")
    sd = {k[3:]: (v.float() if v.is_floating_point() else v) for k, v in data.items() if k.startswith("sd.")}
    return data, _model(MIXERS[name]), sd


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_logits_equal_official(name: str) -> None:
    data, model, sd = _case(name)
    model.load_state_dict(checkpoint_filter({"model": sd}, model), strict=True)
    with torch.no_grad():
        out = model(data["input"].float())
    torch.testing.assert_close(out, data["logits"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_stage4_lepe_placement_matters(name: str) -> None:
    """Sanity of the vectors: LePE on the block input (legacy) vs on v (nchw) is visible in the logits."""
    data, _, sd = _case(name)
    swapped = _model(MIXERS["stl_nchw" if name == "stl" else "stl"])
    swapped.load_state_dict(checkpoint_filter(sd, swapped), strict=True)
    with torch.no_grad():
        out = swapped(data["input"].float())
    assert (out - data["logits"]).abs().max() > 1e-2


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_checkpoint_filter_strict_key_accounting(name: str) -> None:
    _, model, sd = _case(name)
    mapped = checkpoint_filter(sd, model)
    assert set(mapped) == set(model.state_dict()) and len(mapped) == len(sd)
    assert all(mapped[k].shape == v.shape for k, v in model.state_dict().items())
    assert checkpoint_filter(mapped, model) == mapped  # our layout passes through
    with pytest.raises(KeyError, match=r"stages\.0\.blocks\.0\.attn\.bogus"):
        checkpoint_filter({**sd, "stages.0.blocks.0.attn.bogus": torch.zeros(1)}, model)
    if name == "stl_nchw":  # the refactored layout stores 1×1 convs
        assert sd["stages.0.blocks.0.attn.qkv_linear.weight"].shape == (24, 8, 1, 1)
        assert sd["stages.3.blocks.0.mlp.2.weight"].shape == (32, 128, 1, 1)


def test_real_variant_layouts() -> None:
    for name in ("biformer_stl", "biformer_stl_nchw"):
        model = mixerzoo.create_model(name, device="meta")
        assert len(model.state_dict()) == 201  # official: 201 keys (incl. BN buffers), 28,372,552 params
        assert sum(p.numel() for p in model.parameters()) == 28_372_552
        mixers = [type(s.blocks[0].token_mixer).__name__ for s in model.stages]
        last = "AttentionLePEV" if name.endswith("nchw") else "AttentionLePE"
        assert mixers == ["BiLevelRoutingAttention"] * 3 + [last]
        assert [s.blocks[0].token_mixer.num_heads for s in model.stages] == [3, 6, 12, 8]
        assert [s.blocks[0].token_mixer.topk for s in model.stages[:3]] == [1, 4, 16]


@pytest.mark.parametrize("size", [(64, 64), (96, 64), (70, 90)])
def test_any_size(size) -> None:
    model = mixerzoo.create_model("test_biformer_stl").eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    assert [tuple(f.shape[-2:]) for f in feats] == [(size[0] // r, size[1] // r) for r in (4, 8, 16, 32)]


def test_too_small_input_clear_error() -> None:
    model = mixerzoo.create_model("test_biformer_stl").eval()
    with pytest.raises(ValueError, match=r"at least 32×32 .* got H=28, W=64"):
        model(torch.randn(1, 3, 28, 64))


def test_intermediates_norm_and_features() -> None:
    model = mixerzoo.create_model("test_biformer_stl").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        nhwc = model.forward_intermediates(x, norm=True, output_fmt="NHWC", intermediates_only=True)
        ref = model.head.norm(model.forward_features(x)).permute(0, 2, 3, 1)
    torch.testing.assert_close(nhwc[-1], ref)
    feats = mixerzoo.create_model("test_biformer_stl", features_only=True, out_indices=(1, 3)).eval()
    assert [tuple(f.shape) for f in feats(x)] == [(1, 32, 8, 8), (1, 64, 2, 2)]
