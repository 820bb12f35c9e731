"""BiFormer family: parity with the official implementation, checkpoint filter, any input size, swaps.

``tests/expect/biformer/tiny_official.safetensors`` was produced by running the official code
(rayleizhu/BiFormer @ 1697bbbe: ``models/biformer.py`` + ``ops/bra_legacy.py``, einops installed in a
scratch dir, ``fairscale.checkpoint_wrapper`` stubbed as identity) on a tiny configuration::

    BiFormer(depth=[1, 1, 1, 1], embed_dim=[8, 16, 24, 32], mlp_ratios=[3] * 4, num_classes=10, n_win=2,
             kv_downsample_mode="identity", kv_per_wins=[-1] * 4, topks=[1, 2, 4, -2], side_dwconv=5,
             before_attn_dwconv=3, layer_scale_init_value=-1, qk_dims=[8, 16, 24, 32], head_dim=8,
             auto_pad=False)          # and the same with auto_pad=True for the padded input

with every parameter and BN statistic randomised (generator seed 1; norms 1 + 0.2·N(0,1), running_var
U(0.5, 1.5), everything else 0.1·N(0,1)), in eval mode. Keys ``sd.*`` hold the official state dict;
``input``/``logits`` a 64×64 input (divisible at every stage) and ``input_pad``/``logits_pad`` a 60×44
input run with ``auto_pad=True`` (15×11 in stage 1: padded to the region grid).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mixerzoo
from mixerzoo.zoo.biformer import checkpoint_filter

EXPECT = Path(__file__).resolve().parents[1] / "expect" / "biformer" / "tiny_official.safetensors"
TINY = {"dims": (8, 16, 24, 32), "num_classes": 10}


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    return load_file(EXPECT)


def _official_sd(data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[3:]: v for k, v in data.items() if k.startswith("sd.")}


def _load(data: dict[str, torch.Tensor], **kw) -> torch.nn.Module:
    model = mixerzoo.create_model("test_biformer", **TINY, **kw).eval()
    model.load_state_dict(checkpoint_filter(_official_sd(data), model), strict=True)
    return model


def test_logits_equal_official(official) -> None:
    model = _load(official)
    with torch.no_grad():
        out = model(official["input"])
    torch.testing.assert_close(out, official["logits"], rtol=0, atol=1e-4)


def test_auto_pad_parity_equals_official_auto_pad(official) -> None:
    model = _load(official, auto_pad_parity=True)
    with torch.no_grad():
        out = model(official["input_pad"])
    torch.testing.assert_close(out, official["logits_pad"], rtol=0, atol=1e-4)
    # the default masks the padding, so it must differ from the official (unmasked) auto_pad
    with torch.no_grad():
        masked = _load(official)(official["input_pad"])
    assert (masked - official["logits_pad"]).abs().max() > 1e-3


def test_head_dim_scale_would_break_parity(official) -> None:
    """Sanity of the vectors: BiFormer's full-qk-dim scale matters at the 1e-4 level."""
    wrong = [{"qk_scale": 8**-0.5}] * 3 + [{}]
    model = _load(official, mixer_options=wrong)
    with torch.no_grad():
        out = model(official["input"])
    assert (out - official["logits"]).abs().max() > 1e-3


def test_checkpoint_filter_strict_key_accounting(official) -> None:
    sd = _official_sd(official)
    model = mixerzoo.create_model("test_biformer", **TINY)
    mapped = checkpoint_filter(sd, model)
    assert set(mapped) == set(model.state_dict())  # every official key consumed, every model key covered
    assert len(mapped) == len(sd)
    assert set(checkpoint_filter({"model": sd}, model)) == set(mapped)  # the official file's wrapper
    assert checkpoint_filter(mapped, model) == mapped  # our layout passes through
    with pytest.raises(KeyError, match=r"stages\.0\.0\.attn\.extra"):
        checkpoint_filter({**sd, "stages.0.0.attn.extra": torch.zeros(1)}, model)


def test_real_variants_key_count_and_params() -> None:
    model = mixerzoo.create_model("biformer_tiny", device="meta")
    assert len(model.state_dict()) == 264  # = the official biformer_tiny state dict (models/biformer.py)
    # parameter counts of the official models (instantiated from the official code)
    assert sum(p.numel() for p in model.parameters()) == 13_142_760
    qkv = model.stages[3].blocks[0].token_mixer.qkv
    assert qkv.bias is None and model.stages[2].blocks[0].token_mixer.qkv.bias is not None
    assert [s.blocks[0].token_mixer.topk for s in model.stages[:3]] == [1, 4, 16]
    assert model.stages[3].blocks[0].token_mixer.num_heads == 8
    small = mixerzoo.create_model("biformer_small", device="meta")
    base = mixerzoo.create_model("biformer_base", device="meta")
    assert sum(p.numel() for p in small.parameters()) == 25_536_232
    assert sum(p.numel() for p in base.parameters()) == 56_804_968


@pytest.mark.parametrize("size", [(64, 64), (50, 70), (17, 9), (1, 1)])
def test_any_input_size(size) -> None:
    model = mixerzoo.create_model("test_biformer").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 1000)


def test_features_and_out_norms() -> None:
    model = mixerzoo.create_model("test_biformer", features_only=True, out_norms=True).eval()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        feats = model(x)
    assert [tuple(f.shape) for f in feats] == [(1, 16, 16, 12), (1, 32, 8, 6), (1, 48, 4, 3), (1, 64, 2, 2)]
    for f in feats:  # LayerNorm2d with unit weight / zero bias: per-pixel channel mean 0, var 1
        torch.testing.assert_close(f.mean(1), torch.zeros_like(f.mean(1)), atol=1e-5, rtol=0)
    plain = mixerzoo.create_model("test_biformer").eval()
    with torch.no_grad():
        last = plain.forward_intermediates(x, norm=True, intermediates_only=True)[-1]
        ref = plain.head.norm(plain.forward_features(x))
    torch.testing.assert_close(last, ref)
    full = mixerzoo.create_model("test_biformer", out_norms=True)
    mapped = checkpoint_filter(_det_layout(full), full)  # BiFormer_mm's extra_norms land on out_norms
    assert set(mapped) == set(full.state_dict())


def _det_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict renamed to the official detection backbone's ``extra_norms`` + classification keys."""
    out = {}
    for k, v in model.state_dict().items():
        for ours, theirs in (("out_norms.", "extra_norms."), ("stem.conv1.", "downsample_layers.0.0."),
                             ("stem.norm1.", "downsample_layers.0.1."), ("stem.conv2.", "downsample_layers.0.3."),
                             ("stem.norm2.", "downsample_layers.0.4.")):  # fmt: skip
            k = k.replace(ours, theirs)
        out[k] = v
    return out


def test_mixer_swaps() -> None:
    model = mixerzoo.create_model(
        "test_biformer",
        mixers=("pooling", "attention", "neighborhood", "attention_lepe"),
        mixer_options=[{}, {}, {"kernel_size": 3}, {}],
        num_classes=3,
    )
    model(torch.randn(2, 3, 96, 96)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert type(model.stages[2].blocks[0].token_mixer).__name__ == "NeighborhoodAttention"


CLASS_OF = {
    "bra": "BiLevelRoutingAttention", "neighborhood": "NeighborhoodAttention", "attention_lepe": "AttentionLePE"
}


@pytest.mark.parametrize("mixer", sorted(CLASS_OF))
def test_poolformer_hosts_our_mixers(mixer: str) -> None:
    big = mixerzoo.create_model("poolformer_s12", mixers=mixer, device="meta")
    assert type(big.stages[0].blocks[0].token_mixer).__name__ == CLASS_OF[mixer]
    assert big(torch.empty(1, 3, 224, 224, device="meta")).shape == (1, 1000)
    opts = {"num_heads": 8}  # test_poolformer's widths (16, 24, 32, 48) are not multiples of head_dim 32
    if mixer == "neighborhood":
        opts.update(kernel_size=3, small_input="pad_mask")  # 64² input: the stage-4 map is 2×2
    tiny = mixerzoo.create_model("test_poolformer", mixers=mixer, mixer_options=opts, num_classes=4)
    tiny(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in tiny.parameters())
