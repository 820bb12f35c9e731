"""FLatten-CSwin family and the ``cross_shaped`` mixer: official parity, key accounting, sizes, precision.

The vectors in ``tests/expect/flatten_cswin/`` were produced by the official LeapLabTHU/FLatten-Transformer code
(commit abdb115f, ``models/flatten_cswin.py`` run on CPU with an einops stand-in for its ``Rearrange``) with every
floating tensor randomised (positional terms, softplus scales and LayerNorm affines included; rounded to fp16),
eval mode, 10 classes, input 2×3×16×16 nearest-upsampled ×4 to 64×64; all use ``CSWinTransformer(img_size=64,
embed_dim=8, split_size=[1,2,2,2], num_heads=[2,2,4,4], mlp_ratio=2, la_split_size='16-8-4-2')`` and:

* ``test_flatten_cswin.safetensors``: ``depth=[1,1,2,1], attn_type='LLSS'`` — FLatten's released pattern: full-map
  focused linear attention (with LePE and the rank-restoration conv) in stages 0–1, 2-wide cross-shaped stripes
  on the 4×4 map of stage 2, full-map softmax in the last stage.
* ``cswin_ssss.safetensors``: ``depth=[1,1,1,1], attn_type='SSSS'`` — plain CSWin: 1-wide stripes on 16×16,
  2-wide on 8×8 and 4×4.
"""

from __future__ import annotations

import pytest
import torch

import mixerzoo
from mixerzoo.zoo import flatten_cswin
from tests.zoo._official_vectors import load_vector

CASES = {
    "test_flatten_cswin": {"num_classes": 10},
    "cswin_ssss": {"num_classes": 10, "depths": (1, 1, 1, 1), "attn_types": "SSSS"},
}


@pytest.mark.parametrize("vector", sorted(CASES))
def test_official_parity(vector: str) -> None:
    state, image, logits = load_vector(f"flatten_cswin/{vector}.safetensors")
    model = mixerzoo.create_model("test_flatten_cswin", **CASES[vector]).eval()
    mapped = flatten_cswin.checkpoint_filter(state, model)
    assert len(mapped) == len(state)  # strict key accounting: every official key is renamed, none dropped
    model.load_state_dict(mapped, strict=True)
    with torch.no_grad():
        out = model(image)
    assert (out - logits).abs().max().item() <= 1e-4
    with pytest.raises(KeyError, match="match nothing"):
        flatten_cswin.checkpoint_filter({**state, "bogus.weight": torch.zeros(1)}, model)


def test_tiny_config_exercises_every_path() -> None:
    model = mixerzoo.create_model("test_flatten_cswin")
    mixers = [s.blocks[0].attn for s in model.stages]
    assert [(m.kernel, m.full, len(m.lepe)) for m in mixers] == [
        ("focused_linear", True, 1), ("focused_linear", True, 1), ("softmax", False, 2), ("softmax", True, 1),
    ]  # fmt: skip


def test_layout_matches_official_counts() -> None:
    """Counted on the official model definitions (abdb115f): 21.20 M and 430 keys."""
    model = mixerzoo.create_model("flatten_cswin_tiny", device="meta")
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 4) == 21.2018
    assert len(model.state_dict()) == 430  # no buffers


def test_odd_sizes_and_features() -> None:
    model = mixerzoo.create_model("test_flatten_cswin").eval()
    with torch.no_grad():
        for hw in [(64, 64), (50, 70), (33, 31)]:
            out = model(torch.randn(1, 3, *hw))
            assert out.shape == (1, 1000) and out.isfinite().all()
        feats = model.forward_intermediates(torch.randn(1, 3, 50, 70), intermediates_only=True)
    assert [tuple(f.shape[-2:]) for f in feats] == [(12, 17), (6, 9), (3, 5), (2, 3)]  # official stem: 7×7/4, pad 2
    fo = mixerzoo.create_model("test_flatten_cswin", features_only=True, out_indices=(0, 2)).eval()
    with torch.no_grad():
        assert [tuple(f.shape) for f in fo(torch.randn(2, 3, 64, 64))] == [(2, 8, 16, 16), (2, 32, 4, 4)]


def test_stripes_pad_and_mask_like_a_smaller_map() -> None:
    """Padding is invisible: a map that needs padding gives the same result as the official unpadded maths on
    each stripe (checked against a direct per-stripe softmax + LePE written out here)."""
    torch.manual_seed(0)
    mixer = mixerzoo.create_mixer("cross_shaped", 16, num_heads=2, split_size=3).eval()
    H, W = 5, 7
    x = torch.randn(1, H * W, 16)
    with torch.no_grad():
        out = mixer(x, hw=(H, W))
        q, k, v = mixer.qkv(x).view(1, H, W, 3, 16).unbind(3)
        ref = torch.zeros(1, H, W, 16)
        vertical = [(slice(None), slice(s, s + 3)) for s in range(0, W, 3)]
        horizontal = [(slice(s, s + 3), slice(None)) for s in range(0, H, 3)]
        for branch, (c0, stripes) in enumerate([(0, vertical), (8, horizontal)]):
            for sl in stripes:
                qs, ks, vs = (t[0][sl][..., c0 : c0 + 8] for t in (q, k, v))
                h, w = qs.shape[:2]
                attn = (qs.reshape(-1, 8) * 8**-0.5) @ ks.reshape(-1, 8).T
                o = attn.softmax(-1) @ vs.reshape(-1, 8)
                lepe = mixer.lepe[branch](vs.permute(2, 0, 1)[None])[0].permute(1, 2, 0).reshape(-1, 8)
                ref[0][sl][..., c0 : c0 + 8] = (o + lepe).reshape(h, w, 8)
        ref = mixer.proj(ref.reshape(1, H * W, 16))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_focused_linear_needs_full_map() -> None:
    with pytest.raises(ValueError, match="full=True"):
        mixerzoo.create_mixer("cross_shaped", 16, num_heads=2, kernel="focused_linear")
    with pytest.raises(ValueError, match="la_split_sizes"):
        mixerzoo.create_model("test_flatten_cswin", la_split_sizes=(4, 8, 4, 2))


def test_full_size_224_forward() -> None:
    model = mixerzoo.create_model("flatten_cswin_tiny", depths=(1, 1, 1, 1)).eval()  # the 224² maps, fewer blocks
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and out.isfinite().all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_finite(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = mixerzoo.create_model("test_flatten_cswin")
    with torch.autocast("cpu", dtype=dtype):
        out = model(torch.randn(1, 3, 32, 32) * 4)
    out.float().sum().backward()
    assert out.isfinite().all()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
