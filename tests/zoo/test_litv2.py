"""LITv2 family: official-checkpoint parity, key accounting, any input size.

``tests/expect/litv2/test_litv2.safetensors`` was produced by the official ziplab/LITv2 code (commit 7501c866,
``classification/models/litv2.py``), with the CUDA ``DeformConv2dPack`` replaced by a stand-in on
``torchvision.ops.deform_conv2d`` (identical (dy, dx) tap-major offset layout): ``LITv2(img_size=64,
embed_dim=8, num_classes=10, depths=[1,1,2,1], num_heads=[1,2,4,4], has_msa=[0,0,1,1], alpha=0.9,
local_ws=[0,0,2,1])``, every floating tensor randomised (offsets and BN statistics included, rounded to fp16),
eval mode, on a 2×3×16×16 image nearest-upsampled ×4. The file holds that state dict in the official layout,
the small image and the official fp32 logits.
"""

from __future__ import annotations

import pytest
import torch

import mixerzoo
from mixerzoo.zoo.litv2 import checkpoint_filter
from tests.zoo._official_vectors import load_vector

TINY = {"num_classes": 10, "dims": (8, 16, 32, 64), "num_heads": (1, 2, 4, 4)}


def test_official_parity() -> None:
    state, image, logits = load_vector("litv2/test_litv2.safetensors")
    model = mixerzoo.create_model("test_litv2", **TINY).eval()
    model.load_state_dict(checkpoint_filter(state, model), strict=True)
    with torch.no_grad():
        out = model(image)
    assert (out - logits).abs().max().item() <= 1e-4


def test_filter_accounts_for_every_key() -> None:
    state, _, _ = load_vector("litv2/test_litv2.safetensors")
    model = mixerzoo.create_model("test_litv2", **TINY)
    mapped = checkpoint_filter(state, model)
    assert len(mapped) == len(state) and set(mapped) == set(model.state_dict())
    with pytest.raises(KeyError, match="match nothing"):
        checkpoint_filter({**state, "layers.0.blocks.0.bogus": torch.zeros(1)}, model)
    assert checkpoint_filter(model.state_dict(), model).keys() == model.state_dict().keys()  # ours passes through


def test_litv2_small_layout() -> None:
    model = mixerzoo.create_model("litv2_small", device="meta")
    assert len(model.state_dict()) == 219  # the official LITv2-S state dict
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 27.84


@pytest.mark.parametrize("hw", [(64, 64), (50, 70), (33, 97)])
def test_any_size(hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = mixerzoo.create_model("test_litv2").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *hw))
    assert out.shape == (1, 1000) and out.isfinite().all()


def test_padding_is_masked() -> None:
    """Hi-Fi on a 5×5 map: the bottom-right token sits alone in a padded 2×2 window, so with the padded
    keys masked it attends only to itself, exactly as HiLo on that single token does."""
    torch.manual_seed(0)
    hilo = mixerzoo.create_mixer("hilo", 32, num_heads=4, window_size=2, alpha=0.0).eval()
    x = torch.randn(1, 5, 5, 32)
    with torch.no_grad():
        y = hilo(x)
        alone = hilo(x[:, 4:, 4:].contiguous())
    torch.testing.assert_close(y[:, 4:, 4:], alone, atol=1e-6, rtol=1e-6)


def test_bf16_autocast_finite() -> None:
    torch.manual_seed(0)
    model = mixerzoo.create_model("test_litv2")
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    assert out.isfinite().all()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_deform_conv_matches_torchvision() -> None:
    """The channels-last gather + GEMM DTM equals ``torchvision.ops.deform_conv2d`` (the official DCN's maths),
    forward and every gradient, including samples that fall partly or wholly outside the map."""
    from torchvision.ops import deform_conv2d

    from mixerzoo.zoo.litv2 import deform_conv2x2_nhwc

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 8, 5, generator=g, dtype=torch.float64, requires_grad=True)  # [B, H, W, C]
    off = (torch.randn(2, 3, 4, 8, generator=g, dtype=torch.float64) * 1.5).requires_grad_()
    w = torch.randn(7, 5, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    ours = deform_conv2x2_nhwc(x, off, w, b)
    ref = deform_conv2d(x.permute(0, 3, 1, 2), off.permute(0, 3, 1, 2), w, b, stride=2).permute(0, 2, 3, 1)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-12)
    cot = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    grads = [torch.autograd.grad(y, (x, off, w, b), cot) for y in (ours, ref)]
    for a, r in zip(*grads):
        torch.testing.assert_close(a, r, atol=1e-10, rtol=1e-10)


def test_chunked_inference_equals_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU fp32 inference runs the MLP sub-layers a few images at a time (``_mlp_residual_inference``); it
    must equal the eager (autograd) path."""
    import mixerzoo.zoo.litv2 as litv2

    monkeypatch.setattr(litv2, "_CHUNK_BYTES", 1)  # one image per chunk everywhere
    torch.manual_seed(0)
    model = mixerzoo.create_model("test_litv2", **TINY).eval()
    x = torch.randn(3, 3, 64, 64)
    eager = model(x)  # parameters require grad: the eager path
    with torch.no_grad():
        fast = model(x)
    torch.testing.assert_close(fast, eager.detach(), atol=1e-5, rtol=1e-5)
