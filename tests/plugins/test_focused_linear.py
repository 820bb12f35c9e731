"""Focused linear attention mixer against FLatten's maths written out in plain PyTorch (float64),
positional-term resizing, spatial reduction, reduced precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixerzoo.plugins import create_mixer
from mixerzoo.plugins.focused_linear import resize_positional_encoding


def _flatten_reference(m: torch.nn.Module, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """FLatten-Transformer models/flatten_swin.py (the 2024-05-28 code path), fused-qkv layout, no spatial reduction."""
    B, N, C = x.shape
    nh, d = m.num_heads, m.head_dim
    q, k, v = m.qkv(x).view(B, N, 3, C).unbind(2)
    k = k + m.positional_encoding
    sc = F.softplus(m.scale)
    q, k = (F.relu(q) + 1e-6) / sc, (F.relu(k) + 1e-6) / sc
    qn, kn = q.norm(dim=-1, keepdim=True), k.norm(dim=-1, keepdim=True)
    q, k = q**3, k**3
    q, k = q / q.norm(dim=-1, keepdim=True) * qn, k / k.norm(dim=-1, keepdim=True) * kn
    q, k, v = (t.view(B, N, nh, d).transpose(1, 2) for t in (q, k, v))
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    out = (q @ ((k.transpose(-2, -1) * N**-0.5) @ (v * N**-0.5)) * z).transpose(1, 2).reshape(B, N, C)
    vmap = v.reshape(B * nh, hw[0], hw[1], d).permute(0, 3, 1, 2)
    out = out + m.dwc(vmap).reshape(B, C, N).permute(0, 2, 1)
    return m.proj(out)


def test_matches_flatten_maths() -> None:
    torch.manual_seed(0)
    m = create_mixer("focused_linear", 48, num_heads=3, pos_size=(6, 5)).double().eval()
    with torch.no_grad():
        m.scale.normal_(0, 1)
        m.positional_encoding.normal_(0, 0.5)
        x = torch.randn(2, 30, 48, dtype=torch.float64)
        # 1e-5: the mixer folds 1/σ into the projections, so FLatten's +1e-6 lands after the division
        # (≤ 1e-6·|1 - 1/σ| per feature before focusing); float64 keeps everything else exact
        torch.testing.assert_close(m(x, hw=(6, 5)), _flatten_reference(m, x, (6, 5)), atol=1e-5, rtol=1e-5)


def test_official_key_shapes() -> None:
    m = create_mixer("focused_linear", 96, num_heads=3, pos_size=56)  # FLatten-Swin-T stage 0 (§3.3)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "qkv.weight": (288, 96), "qkv.bias": (288,), "proj.weight": (96, 96), "proj.bias": (96,),
        "dwc.weight": (32, 1, 5, 5), "dwc.bias": (32,), "scale": (1, 1, 96), "positional_encoding": (1, 3136, 96),
    }  # fmt: skip
    split = create_mixer("focused_linear", 64, num_heads=1, qkv_layout="split", pos_size=56)  # PVT-T stage 0
    assert {k for k in split.state_dict() if not k.startswith(("proj", "dwc"))} == {
        "q.weight", "q.bias", "kv.weight", "kv.bias", "scale", "positional_encoding"
    }


def test_positional_resize() -> None:
    pe = torch.randn(1, 6 * 4, 8)
    assert resize_positional_encoding(pe, (6, 4), (6, 4)) is pe
    r = resize_positional_encoding(pe, (6, 4), (12, 8))
    assert r.shape == (1, 96, 8)
    const = torch.ones(1, 24, 8)
    torch.testing.assert_close(resize_positional_encoding(const, (6, 4), (5, 7)), torch.ones(1, 35, 8))
    m = create_mixer("focused_linear", 32, num_heads=2, pos_size=4)
    y = m(torch.randn(1, 35, 32), hw=(5, 7))
    assert y.shape == (1, 35, 32) and y.isfinite().all()


def test_spatial_reduction_and_errors() -> None:
    torch.manual_seed(0)
    m = create_mixer("focused_linear", 32, num_heads=2, qkv_layout="split", sr_ratio=2, pos_size=8)
    assert m.positional_encoding.shape == (1, 16, 32)
    y = m(torch.randn(2, 64, 32), hw=(8, 8))
    y.sum().backward()
    assert y.shape == (2, 64, 32) and all(p.grad is not None for p in m.parameters())
    with pytest.raises(ValueError, match="sr_ratio"):
        create_mixer("focused_linear", 32, sr_ratio=2)  # needs the split layout
    with pytest.raises(ValueError, match="hw"):
        m(torch.randn(1, 64, 32), hw=(4, 4))
