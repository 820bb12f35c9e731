"""FLatten-PVTv2 family: official parity, key accounting, timm's PVTv2 weights, sizes, reduced precision.

The vectors in ``tests/expect/flatten_pvt_v2/`` were produced by the official LeapLabTHU/FLatten-Transformer code
(commit abdb115f, ``models/flatten_pvt_v2.py`` run on CPU with an einops stand-in) with every floating tensor
randomised (positional terms, softplus scales and LayerNorm affines included; rounded to fp16), eval mode,
10 classes, input 2×3×16×16 nearest-upsampled ×4 to 64×64:

* ``test_flatten_pvt_v2.safetensors``: ``PyramidVisionTransformerV2(img_size=64, embed_dims=[16,32,64,64],
  num_heads=[1,2,2,2], mlp_ratios=[2,2,2,2], depths=[1,1,1,1], qkv_bias=True, norm_layer=LayerNorm(eps=1e-6),
  la_sr_ratios='1111', attn_type='LLLL')`` — the released FLatten configuration, shrunk.
* ``mixed_llss_sr2.safetensors``: the same with ``embed_dims=[16,32,32,32]``, ``sr_ratios=[8,4,2,1]``,
  ``la_sr_ratios='2111'``, ``attn_type='LLSS'`` — focused linear attention with spatial reduction (stage 0) and
  PVTv2's softmax SRA (stages 2–3).
"""

from __future__ import annotations

import pytest
import timm
import torch

import mixerzoo
from mixerzoo.plugins.focused_linear import resize_positional_encoding
from mixerzoo.zoo import flatten_pvt_v2
from tests.zoo._official_vectors import load_vector

_FLA, _SRA = "focused_linear", "spatial_reduction"
CASES = {
    "test_flatten_pvt_v2": {"num_classes": 10},
    "mixed_llss_sr2": {
        "num_classes": 10, "dims": (16, 32, 32, 32), "mixers": (_FLA, _FLA, _SRA, _SRA), "sr_ratios": (2, 1, 2, 1),
    },
}  # fmt: skip


@pytest.mark.parametrize("vector", sorted(CASES))
def test_official_parity(vector: str) -> None:
    state, image, logits = load_vector(f"flatten_pvt_v2/{vector}.safetensors")
    model = mixerzoo.create_model("test_flatten_pvt_v2", **CASES[vector]).eval()
    mapped = flatten_pvt_v2.checkpoint_filter(state, model)
    assert len(mapped) == len(state)  # strict key accounting: every official key is renamed, none dropped
    model.load_state_dict(mapped, strict=True)
    with torch.no_grad():
        out = model(image)
    assert (out - logits).abs().max().item() <= 1e-4
    with pytest.raises(KeyError, match="match nothing"):
        flatten_pvt_v2.checkpoint_filter({**state, "bogus.weight": torch.zeros(1)}, model)
    wrapped = flatten_pvt_v2.checkpoint_filter({"model": state}, model)  # the released ``{'model': ...}`` files
    assert wrapped.keys() == mapped.keys()


@pytest.mark.parametrize(
    ("name", "params_m", "keys"),
    [
        ("flatten_pvt_v2_b0", 3.5948, 186),  # official models/flatten_pvt_v2.py: 3.59 M, 186 keys
        ("flatten_pvt_v2_b1", 12.9312, 186),  # official: 12.93 M
        # b2–b5: counted here on the official model definitions (abdb115f) with la_sr_ratios='1111'
        ("flatten_pvt_v2_b2", 22.5483, 346),
        ("flatten_pvt_v2_b3", 38.2738, 586),
        ("flatten_pvt_v2_b4", 51.8370, 846),
        ("flatten_pvt_v2_b5", 67.0615, 1066),
    ],
)
def test_layouts_match_official_counts(name: str, params_m: float, keys: int) -> None:
    model = mixerzoo.create_model(name, device="meta")
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 4) == params_m
    assert len(model.state_dict()) == keys  # no buffers: the official key count exactly


@pytest.mark.parametrize("b", [0, 5])  # b1–b4 differ from b0/b5 only in depths and dims
def test_plain_host_has_timm_layout(b: int) -> None:
    ours = mixerzoo.create_model(f"pvt_v2_b{b}", device="meta")
    ref = timm.create_model(f"pvt_v2_b{b}", device="meta")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_plain_host_equals_timm() -> None:
    """The ``spatial_reduction`` host takes timm's PVTv2 weights unchanged and gives timm's outputs."""
    torch.manual_seed(0)
    ref = timm.create_model(
        "pvt_v2_b0", num_classes=10, depths=(1, 1, 2, 1), embed_dims=(16, 32, 64, 64), num_heads=(1, 2, 2, 2)
    ).eval()
    ours = mixerzoo.create_model(
        "pvt_v2_b0", num_classes=10, depths=(1, 1, 2, 1), dims=(16, 32, 64, 64), num_heads=(1, 2, 2, 2)
    ).eval()
    ours.load_state_dict(flatten_pvt_v2.checkpoint_filter(ref.state_dict(), ours), strict=True)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
        for a, r in zip(ours.forward_intermediates(x, intermediates_only=True),
                        ref.forward_intermediates(x, intermediates_only=True), strict=True):  # fmt: skip
            torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


def test_native_size_uses_positional_terms_as_is_and_any_size_runs() -> None:
    model = mixerzoo.create_model("test_flatten_pvt_v2").eval()
    flas = [m for m in model.modules() if type(m).__name__ == "FocusedLinearAttention"]
    assert [f.pos_hw for f in flas] == [(16, 16), (8, 8), (4, 4), (2, 2)]  # official grids for img_size=64
    for f in flas:
        assert resize_positional_encoding(f.positional_encoding, f.pos_hw, f.pos_hw) is f.positional_encoding
    with torch.no_grad():
        for hw in [(64, 64), (96, 80), (50, 70), (33, 31)]:
            out = model(torch.randn(1, 3, *hw))
            assert out.shape == (1, 1000) and out.isfinite().all()
        feats = model.forward_intermediates(torch.randn(1, 3, 50, 70), intermediates_only=True)
    assert [tuple(f.shape[-2:]) for f in feats] == [(13, 18), (7, 9), (4, 5), (2, 3)]


def test_features_only() -> None:
    model = mixerzoo.create_model("test_flatten_pvt_v2", features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 8, 8), (2, 64, 2, 2)]
    assert model.feature_info.reduction() == [8, 32]


def test_full_size_224_forward() -> None:
    model = mixerzoo.create_model("flatten_pvt_v2_b0").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and out.isfinite().all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_finite(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = mixerzoo.create_model("test_flatten_pvt_v2")
    with torch.autocast("cpu", dtype=dtype):
        out = model(torch.randn(1, 3, 32, 32) * 4)
    out.float().sum().backward()
    assert out.isfinite().all()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
