"""PoolFormer: parity with timm's implementation (same weights) and with the official code (test vectors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import mixerzoo
from mixerzoo.zoo.poolformer import checkpoint_filter

EXPECT = Path(__file__).resolve().parents[1] / "expect" / "poolformer"


def test_features_equal_timm_poolformer_with_the_same_weights() -> None:
    ref = timm.create_model("poolformer_s12").eval()
    ours = mixerzoo.create_model("poolformer_s12").eval()
    ours.load_state_dict(checkpoint_filter(ref.state_dict(), ours), strict=True)  # timm layout passes through
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), rtol=0, atol=1e-5)
        # heads differ by design: official GroupNorm-on-map head vs timm's pool -> LayerNorm2d
        assert not torch.allclose(ours(x), ref(x), atol=1e-3)


def test_official_layout_and_head_match_official_outputs() -> None:
    """Vectors made by running sail-sg/poolformer@a075575b models/poolformer.py (outside this repo) on a tiny
    config, recorded in the file's metadata: official state dict (``sd.*``), input, logits."""
    blob = load_file(EXPECT / "official_tiny.safetensors")
    sd = {k[3:]: v for k, v in blob.items() if k.startswith("sd.")}
    model = mixerzoo.create_model(
        "poolformer_s12", depths=(1, 1, 2, 1), dims=(16, 24, 32, 48), num_classes=10, layer_scale_init=0.5
    ).eval()
    model.load_state_dict(checkpoint_filter(sd, model), strict=True)
    with torch.no_grad():
        out = model(blob["input"])
    assert (out - blob["logits"]).abs().max().item() <= 1e-4


def test_checkpoint_filter_rejects_unknown_keys() -> None:
    model = mixerzoo.create_model("test_poolformer")
    with pytest.raises(KeyError, match="match nothing"):
        checkpoint_filter({"network.0.0.bogus.weight": torch.zeros(1)}, model)


def test_any_input_size_and_mixer_swap_per_stage() -> None:
    model = mixerzoo.create_model("test_poolformer", mixers=["pooling", "pooling", "attention", "attention"]).eval()
    for hw in [(33, 47), (64, 64), (17, 100)]:
        assert model(torch.randn(1, 3, *hw)).shape == (1, 1000)
    assert mixerzoo.plugins.required_mixers(model) == {"attention": "mixerzoo", "pooling": "mixerzoo"}
    with pytest.raises(ValueError, match="mixers="):
        mixerzoo.create_model("test_poolformer", mixers=["pooling", "attention"])


def test_params_match_official_counts() -> None:
    expected = {"poolformer_s12": 11.92e6, "poolformer_s24": 21.39e6, "poolformer_s36": 30.86e6,
                "poolformer_m36": 56.17e6, "poolformer_m48": 73.47e6}  # fmt: skip  # sail-sg/poolformer README
    for name, n in expected.items():
        model = mixerzoo.create_model(name, device="meta")
        got = sum(p.numel() for p in model.parameters())
        assert abs(got - n) / n < 0.005, (name, got)


def test_checkpoint_filter_unwraps_training_checkpoints() -> None:
    blob = load_file(EXPECT / "official_tiny.safetensors")
    wrapped = {"epoch": 3, "state_dict": {"module." + k[3:]: v for k, v in blob.items() if k.startswith("sd.")}}
    model = mixerzoo.create_model(
        "poolformer_s12", depths=(1, 1, 2, 1), dims=(16, 24, 32, 48), num_classes=10, layer_scale_init=0.5
    ).eval()
    model.load_state_dict(checkpoint_filter(wrapped, model), strict=True)
    with torch.no_grad():
        assert (model(blob["input"]) - blob["logits"]).abs().max().item() <= 1e-4
