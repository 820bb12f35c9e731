"""CPU inference fast paths of the NHWC families (zoo/_blocks.py): tiled MLP residual and image chunking.

Both must give the eager/autograd path's outputs (they are only taken without autograd) and must step aside
whenever autograd, dropout or fx tracing needs the eager graph.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mixerzoo
from mixerzoo.zoo import _blocks
from mixerzoo.zoo._blocks import FusedMlp, fused_mlp_residual, inference_chunk_size


class _Block(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FusedMlp(dim, hidden, drop)


@pytest.mark.parametrize("rows", [1, 7, 300, 1100])  # one tile, a ragged last tile, several tiles
def test_fused_mlp_residual_matches_eager(rows: int) -> None:
    torch.manual_seed(0)
    blk = _Block(24, 96).eval()
    x = torch.randn(2, rows, 24)
    with torch.no_grad():
        want = x + blk.mlp.fc2(nn.functional.gelu(blk.mlp.fc1(blk.norm2(x))))
        got = fused_mlp_residual(x.clone(), blk.norm2, blk.mlp, blk)
    assert got is not None
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fused_mlp_residual_writes_in_place() -> None:
    blk = _Block(8, 32).eval()
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        out = fused_mlp_residual(x, blk.norm2, blk.mlp, blk)
    assert out is x


def test_fused_mlp_residual_declines() -> None:
    blk = _Block(8, 32, drop=0.1)
    x = torch.randn(2, 4, 8)
    assert fused_mlp_residual(x, blk.norm2, blk.mlp, blk) is None  # autograd needed (params require grad)
    with torch.no_grad():
        assert fused_mlp_residual(x, blk.norm2, blk.mlp, blk) is None  # training with dropout
        assert fused_mlp_residual(x.transpose(1, 2), blk.norm2, blk.mlp, blk.eval()) is None  # not contiguous
        assert fused_mlp_residual(x.double(), blk.norm2, blk.mlp, blk) is None  # fp32 only
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert fused_mlp_residual(x, blk.norm2, blk.mlp, blk) is None
        assert fused_mlp_residual(x, blk.norm2, blk.mlp, blk) is not None  # eval: taken


def test_inference_chunk_size() -> None:
    m = nn.Linear(2, 2)
    x = torch.randn(8, 3, 4, 4)
    assert inference_chunk_size(x, 1 << 20, m) is None  # autograd needed
    with torch.no_grad():
        assert inference_chunk_size(x, 1 << 20, m) == 3  # 3 MiB budget
        assert inference_chunk_size(x, 1, m) is None  # the whole batch fits
        assert inference_chunk_size(x[:1], 1 << 30, m) is None  # nothing to split


@pytest.mark.parametrize("name", ["test_flatten_swin", "test_flatten_pvt"])
def test_chunked_inference_matches_batched(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = mixerzoo.create_model(name).eval()
    x = torch.randn(5, 3, 64, 64)
    want = model(x).detach()  # autograd enabled: whole batch, eager MLP
    monkeypatch.setattr(_blocks, "_CHUNK_BYTES", 40_000)  # force chunks of 1-2 images at 64²
    with torch.no_grad():
        n = inference_chunk_size(x, 16 * 16 * model.feature_info[0]["num_chs"] * 4, model)
        got = model(x)
    assert n is not None and n < 5
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fused_mlp_batch_split_keeps_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training-time FusedMlp on mmap-sized hidden activations runs in batch slices: same output and grads."""
    torch.manual_seed(0)
    mlp = FusedMlp(8, 32)
    x = torch.randn(4, 5, 5, 8, requires_grad=True)
    y_ref = mlp(x)
    g_ref = torch.autograd.grad(y_ref.square().sum(), [x, *mlp.parameters()])
    monkeypatch.setattr(_blocks, "_MMAP_MAX", 1024)  # 4·25·32·4 B hidden → 13 slices, capped at the batch (4)
    assert _blocks._mmap_free_parts(x, 32) == 4
    y = mlp(x)
    g = torch.autograd.grad(y.square().sum(), [x, *mlp.parameters()])
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
