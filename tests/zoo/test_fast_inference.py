"""CPU inference fast paths of the NHWC families (zoo/_blocks.py): tiled MLP residual and image chunking.

Both must give the eager/autograd path's outputs (they are only taken without autograd) and must step aside
whenever autograd, dropout or fx tracing needs the eager graph.
"""

from __future__ import annotations

import copy

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


def _mlp_grads(mlp: FusedMlp, x: torch.Tensor, weight: torch.Tensor) -> list[torch.Tensor]:
    y = mlp(x)
    inputs = [t for t in (x, *mlp.parameters()) if t.requires_grad]
    return [y, *torch.autograd.grad((y * weight).sum(), inputs)]


# one tile; 100 rows at ≤ 30 per tile → 4 tiles of 25
@pytest.mark.parametrize("tile_bytes", [1 << 40, 4 * 32 * 30])
@pytest.mark.parametrize("x_grad", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_training_mlp_matches_autograd(
    tile_bytes: int, x_grad: bool, bias: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPU fp32 training runs FusedMlp through _CpuMlpFunction: output and every gradient equal eager autograd
    in float64."""
    monkeypatch.setattr(_blocks, "_MLP_TILE_BYTES", tile_bytes)
    monkeypatch.setattr(_blocks, "_MLP_MIN_TILE", 1)
    torch.manual_seed(0)
    mlp = FusedMlp(8, 32)
    if not bias:
        mlp.fc1.bias = mlp.fc2.bias = None
    x = torch.randn(4, 5, 5, 8, requires_grad=x_grad)
    weight = torch.randn(4, 5, 5, 8)
    assert _blocks._cpu_mlp_train(x, mlp)
    got = _mlp_grads(mlp, x, weight)
    ref_mlp = copy.deepcopy(mlp).double()
    monkeypatch.setattr(_blocks, "_cpu_mlp_train", lambda x, m: False)  # eager autograd, float64
    want = _mlp_grads(ref_mlp, x.detach().double().requires_grad_(x_grad), weight.double())
    assert len(got) == len(want) == 1 + x_grad + (4 if bias else 2)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-5)


def test_training_mlp_declines() -> None:
    """The eager graph is kept where _CpuMlpFunction's assumptions fail."""
    x = torch.randn(2, 3, 8, requires_grad=True)
    mlp = FusedMlp(8, 32)
    assert _blocks._cpu_mlp_train(x, mlp)
    assert not _blocks._cpu_mlp_train(x.double(), mlp)  # fp32 only
    with torch.no_grad():
        assert not _blocks._cpu_mlp_train(x, mlp)  # no autograd
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _blocks._cpu_mlp_train(x, mlp)
    assert not _blocks._cpu_mlp_train(x, FusedMlp(8, 32, drop=0.1).train())  # active dropout
    assert _blocks._cpu_mlp_train(x, FusedMlp(8, 32, drop=0.1).eval())
    tanh = FusedMlp(8, 32)
    tanh.act = nn.GELU(approximate="tanh")
    assert not _blocks._cpu_mlp_train(x, tanh)
