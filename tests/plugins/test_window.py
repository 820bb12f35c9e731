"""Swin window mixer: W-MSA / SW-MSA against an explicit re-derivation of Swin's roll + mask + bias,
window shrinking, padding, timm key compatibility."""

from __future__ import annotations

import pytest
import timm
import torch

from mixerzoo.plugins import create_mixer


def _swin_reference(m: torch.nn.Module, x: torch.Tensor, ws: int, shift: int) -> torch.Tensor:
    """Swin as written in microsoft/Swin-Transformer: roll, partition, q·kᵀ + table[index] (+ -100 mask)."""
    B, H, W, C = x.shape
    nh, d = m.num_heads, m.head_dim
    xs = torch.roll(x, (-shift, -shift), (1, 2)) if shift else x
    win = xs.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, C)
    q, k, v = m.qkv(win).view(win.shape[0], ws * ws, 3, nh, d).permute(2, 0, 3, 1, 4)
    attn = q * m.scale @ k.transpose(-1, -2)
    idx = m.relative_position_index.view(-1)
    attn = attn + m.relative_position_bias_table[idx].view(ws * ws, ws * ws, nh).permute(2, 0, 1)
    if shift:
        img = torch.zeros(1, H, W, 1)
        cnt = 0
        for h in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            for w in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                img[:, h, w] = cnt
                cnt += 1
        mw = img.view(1, H // ws, ws, W // ws, ws, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws)
        mask = (mw[:, None] - mw[:, :, None]).ne(0).float() * -100.0
        attn = (attn.view(B, -1, nh, ws * ws, ws * ws) + mask[None, :, None]).view(-1, nh, ws * ws, ws * ws)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, ws * ws, C)
    out = m.proj(out).view(B, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
    return torch.roll(out, (shift, shift), (1, 2)) if shift else out


@pytest.mark.parametrize("shift", [0, 2])
def test_matches_swin(shift: int) -> None:
    torch.manual_seed(0)
    m = create_mixer("window", 32, num_heads=2, window_size=4, shift_size=shift).eval()
    with torch.no_grad():
        m.relative_position_bias_table.normal_(0, 1)
        x = torch.randn(2, 8, 12, 32)
        torch.testing.assert_close(m(x), _swin_reference(m, x, 4, shift), atol=1e-5, rtol=1e-5)


def test_small_map_shrinks_window_and_drops_shift() -> None:
    """A map no larger than the window is one window without shift; the bias is the table's centre block."""
    torch.manual_seed(0)
    big = create_mixer("window", 32, num_heads=2, window_size=7, shift_size=3).eval()
    small = create_mixer("window", 32, num_heads=2, window_size=5).eval()
    with torch.no_grad():
        big.relative_position_bias_table.normal_(0, 1)
        small.load_state_dict({k: v for k, v in big.state_dict().items() if "bias_table" not in k}, strict=False)
        t7 = big.relative_position_bias_table.view(13, 13, 2)
        small.relative_position_bias_table.copy_(t7[2:11, 2:11].reshape(81, 2))
        x = torch.randn(1, 5, 5, 32)
        torch.testing.assert_close(big(x), _swin_reference(small, x, 5, 0), atol=1e-5, rtol=1e-5)


def test_padding_masks_and_backward() -> None:
    torch.manual_seed(0)
    m = create_mixer("window", 32, num_heads=2, window_size=4).eval()
    x = torch.randn(1, 6, 9, 32)
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(y[:, :4, :8], m(x[:, :4, :8].contiguous()), atol=1e-5, rtol=1e-5)
        # the corner window (rows 4-7, cols 8-11 of the padded 8×12 map) holds two real tokens: (4, 8), (5, 8)
        tok = x[0, 4:6, 8]  # 2, C
        q, k, v = m.qkv(tok).view(2, 3, 2, 16).permute(1, 2, 0, 3)  # 3, heads, 2, d
        table = m.relative_position_bias_table.view(7, 7, 2)  # (dy + 3, dx + 3, head)
        bias = torch.stack([torch.stack([table[3 + i - j, 3] for j in range(2)]) for i in range(2)]).permute(2, 0, 1)
        a = ((q @ k.transpose(-1, -2)) * m.scale + bias).softmax(-1) @ v  # heads, 2, d
        torch.testing.assert_close(y[0, 4:6, 8], m.proj(a.transpose(0, 1).reshape(2, 32)), atol=1e-5, rtol=1e-5)
    m.train()
    m(x).sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in m.parameters())


def test_timm_keys() -> None:
    ref = timm.models.swin_transformer.WindowAttention(32, num_heads=2, window_size=4)
    m = create_mixer("window", 32, num_heads=2, window_size=4)
    assert set(m.state_dict()) == set(ref.state_dict())
    m.load_state_dict(ref.state_dict(), strict=True)
