"""bf16 autocast (``--amp bf16``): a training step for one tiny variant of every family, and inference.

Hand-written fast paths (fused norm+MLP autograd functions, oneDNN fused ops, in-place tiling) step aside under
autocast: autocast casts only the plain ops, so a fused path mixed bf16 activations with fp32 weights
(BiFormer: ``expected m1 and m2 to have the same dtype`` in backward).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mixerzoo
from mixerzoo.zoo import get_entry
from mixerzoo.zoo._blocks import FusedMlp, eager_only, fused_cpu_inference

TINY = mixerzoo.list_models("test_*", include_test=True)
ONE_PER_FAMILY = sorted({get_entry(n).family: n for n in reversed(TINY)}.values())


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_bf16_autocast_training_step(name: str) -> None:
    model = mixerzoo.create_model(name, num_classes=5).train()
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = F.cross_entropy(out.float(), torch.tensor([1, 3]))
    assert out.dtype == torch.bfloat16
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no grad for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ["test_litv2", "test_flatten_swin"])  # oneDNN fused ops, in-place MLP tiling
def test_bf16_autocast_inference_matches_fp32(name: str) -> None:
    model = mixerzoo.create_model(name).eval()
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.15)


def test_fused_paths_step_aside_under_autocast() -> None:
    x = torch.randn(4, 8)
    mlp = FusedMlp(8, 16).eval()
    with torch.no_grad():
        assert not eager_only(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert eager_only(x)
            assert not fused_cpu_inference(x, mlp)
            assert mlp(x).dtype == torch.bfloat16  # the plain (autocast) linear ran, not the fused fp32 kernel
