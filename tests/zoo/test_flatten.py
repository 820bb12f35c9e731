"""FLatten families (Swin and PVT hosts): official parity, key accounting, sizes, reduced precision.

The vectors in ``tests/expect/flatten/`` were produced by the official LeapLabTHU/FLatten-Transformer code
(commit abdb115f) with every floating tensor randomised (positional terms and softplus scales included,
rounded to fp16), eval mode, 10 classes:

* ``flatten_swin_tiny_cfg.safetensors``: ``FLattenSwinTransformer(img_size=224, embed_dim=8,
  depths=[1,1,2,1], num_heads=[1,2,2,4], window_size=56, attn_type='LLSS')`` — 224² so that stage 3 runs
  real shifted 7×7 windows; input 2×3×28×28 nearest-upsampled ×8.
* ``test_flatten_pvt.safetensors``: ``PyramidVisionTransformer(img_size=64, patch_size=4,
  embed_dims=[16,32,64,64], num_heads=[1,2,2,2], mlp_ratios=[2,2,2,2], depths=[1,1,1,1], qkv_bias=True,
  norm_layer=LayerNorm(eps=1e-6), la_sr_ratios='1111', attn_type='LLLL')``; input 2×3×16×16 upsampled ×4.
"""

from __future__ import annotations

import pytest
import timm
import torch

import mixerzoo
from mixerzoo.zoo import flatten_pvt, flatten_swin
from tests.zoo._official_vectors import load_vector

SWIN_TINY = {"num_classes": 10, "embed_dim": 8, "num_heads": (1, 2, 2, 4), "window_size": 7, "img_size": 224}
PVT_TINY = {"num_classes": 10}


@pytest.mark.parametrize(
    ("vector", "name", "kw", "filt"),
    [
        ("flatten/flatten_swin_tiny_cfg.safetensors", "test_flatten_swin", SWIN_TINY, flatten_swin.checkpoint_filter),
        ("flatten/test_flatten_pvt.safetensors", "test_flatten_pvt", PVT_TINY, flatten_pvt.checkpoint_filter),
    ],
)
def test_official_parity(vector: str, name: str, kw: dict, filt) -> None:  # noqa: ANN001
    state, image, logits = load_vector(vector)
    model = mixerzoo.create_model(name, **kw).eval()
    mapped = filt(state, model)
    model.load_state_dict(mapped, strict=True)
    with torch.no_grad():
        out = model(image)
    assert (out - logits).abs().max().item() <= 1e-4
    # strict key accounting: only the documented drops (Swin buffers; PVT's unused final norm)
    dropped = set(state) - {k for k in state if k in mapped} - _renamed(state, mapped)
    assert all(k.endswith(("relative_position_index", "attn_mask")) or k.startswith("norm.") for k in dropped)
    with pytest.raises(KeyError, match="match nothing"):
        filt({**state, "bogus.weight": torch.zeros(1)}, model)


def _renamed(state: dict, mapped: dict) -> set[str]:
    values = {id(v) for v in mapped.values()}
    return {k for k, v in state.items() if id(v) in values}


def test_layouts_match_reference_counts() -> None:
    swin = mixerzoo.create_model("flatten_swin_tiny", device="meta")
    assert round(sum(p.numel() for p in swin.parameters()) / 1e6, 2) == 29.19  # official models/flatten_swin.py
    assert len(swin.state_dict()) == 196 - 11  # the official 196 keys minus 11 recomputed buffers
    pvt = mixerzoo.create_model("flatten_pvt_tiny", device="meta")
    assert round(sum(p.numel() for p in pvt.parameters()) / 1e6, 2) == 12.15
    assert len(pvt.state_dict()) == 168 - 2  # minus the never-applied final norm


def test_plain_swin_host_equals_timm() -> None:
    """The ``window`` host takes timm's Swin weights unchanged and gives timm's outputs."""
    torch.manual_seed(0)
    cfg = {"embed_dim": 16, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 2, 4), "window_size": 2}
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, num_classes=10, **cfg).eval()
    ours = mixerzoo.create_model("test_flatten_swin", mixers="window", num_classes=10, img_size=64, **cfg).eval()
    ours.load_state_dict(flatten_swin.checkpoint_filter(ref.state_dict(), ours), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["test_flatten_swin", "test_flatten_pvt"])
def test_native_size_uses_positional_terms_as_is(name: str) -> None:
    model = mixerzoo.create_model(name).eval()
    fla = next(m for m in model.modules() if type(m).__name__ == "FocusedLinearAttention")
    pe = fla.positional_encoding
    from mixerzoo.plugins.focused_linear import resize_positional_encoding

    assert resize_positional_encoding(pe, fla.pos_hw, fla.pos_hw) is pe  # bit-exact: no resampling at all
    with torch.no_grad():
        for hw in [(64, 64), (96, 80), (50, 70)]:
            out = model(torch.randn(1, 3, *hw))
            assert out.shape == (1, 1000) and out.isfinite().all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_autocast_is_finite(dtype: torch.dtype) -> None:
    """FLatten issues #15/#18: fp16 overflowed in the powers / key sums. Large activations on purpose."""
    torch.manual_seed(0)
    mixer = mixerzoo.create_mixer("focused_linear", 64, num_heads=2, pos_size=8)
    with torch.no_grad():
        mixer.qkv.weight.mul_(200.0)  # q, k of order 1e3: u^3 ~ 1e9 and sums overflow fp16's 65504
    x = torch.randn(2, 64, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        y = mixer(x, hw=(8, 8))
    y.float().square().mean().backward()
    assert y.isfinite().all() and x.grad.isfinite().all()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in mixer.parameters())


def test_model_autocast_fp16_finite() -> None:
    torch.manual_seed(0)
    model = mixerzoo.create_model("test_flatten_pvt")
    with torch.autocast("cpu", dtype=torch.float16):
        out = model(torch.randn(2, 3, 64, 64))
    out.float().sum().backward()
    assert out.isfinite().all()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
