"""attn_resnet family: official-code test vectors, checkpoint_filter layouts, gate swapping, sizes.

Test vectors (``tests/expect/attn_resnet/*.safetensors``) were generated once, outside the repository, by
running the official model code on tiny configs:

* ``cbam_basic`` / ``cbam_bottleneck``: ``MODELS/model_resnet.py`` of Jongchan/attention-module@459efad0,
  ``ResNet(BasicBlock | Bottleneck, [2, 1, 1, 1], "ImageNet", 10, "CBAM")``;
* ``triplet_bottleneck``: ``MODELS/resnet.py`` of LandskapeAI/triplet-attention@f07524e4,
  ``ResNet(Bottleneck, [2, 1, 1, 1], "ImageNet", 10, "TripletAttention")``;
* ``triplet_root_bottleneck``: the same ResNet with every block's ``triplet_attention`` replaced by the root
  file's ``TripletAttention()`` (``cw/hc/hw.conv.{conv,bn}`` keys; the official ResNet init cannot build it).

The only edits to the official code were the stage widths (the stem width and the four ``planes`` given to
``_make_layer``: the ``config`` in each file's metadata) and ``avgpool = AdaptiveAvgPool2d(1)`` (the fixed
``AvgPool2d(7)`` needs a 224² input). Every float parameter and BN statistic was randomised (BN weights
in [0.5, 1.5], the gates' included, so no gate is the init's constant 0.5), rounded to fp16 and stored;
the model ran in eval mode, fp32, on the stored fp16-rounded input ``[2, 3, 40, 72]``; ``__logits__`` is
its fp32 output. Each file holds the official-layout state dict (no ``module.`` prefix).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, safe_open

import mixerzoo
from mixerzoo.plugins.gates import CBAM, TripletAttention
from mixerzoo.zoo.attn_resnet import AttnResNet, checkpoint_filter

EXPECT = Path(__file__).resolve().parents[1] / "expect" / "attn_resnet"
VECTORS = ["cbam_basic", "cbam_bottleneck", "triplet_bottleneck", "triplet_root_bottleneck"]


def _vector(name: str) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, dict]:
    path = EXPECT / f"{name}.safetensors"
    with safe_open(str(path), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    sd = load_file(str(path))
    x, logits = sd.pop("__input__").float(), sd.pop("__logits__")
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    return sd, x, logits, cfg


def _model(cfg: dict) -> AttnResNet:
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    return mixerzoo.create_model("test_resnet_cbam", **kw).eval()


def _load(model: torch.nn.Module, sd: dict) -> None:
    model.load_state_dict(checkpoint_filter(sd, model), strict=True)


@pytest.mark.parametrize("name", VECTORS)
def test_official_vectors(name: str) -> None:
    sd, x, expected, cfg = _vector(name)
    model = _model(cfg)
    _load(model, sd)
    with torch.no_grad():
        out = model(x)
    assert (out - expected).abs().max().item() <= 1e-4


def _rename(sd: dict, old: str, new: str) -> dict:
    return {k.replace(old, new): v for k, v in sd.items()}


def test_filter_wrappers_and_prefix() -> None:
    """``{"state_dict": ...}`` training checkpoints with DataParallel's ``module.`` prefix (both releases)."""
    sd, x, expected, cfg = _vector("cbam_bottleneck")
    model = _model(cfg)
    ckpt = {"epoch": 100, "arch": "resnet", "state_dict": {f"module.{k}": v for k, v in sd.items()}}
    _load(model, ckpt)
    with torch.no_grad():
        assert (model(x) - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("attr", ["pcam", "triplet"])
def test_filter_triplet_block_names(attr: str) -> None:
    """The released triplet weights name the block attribute ``pcam`` (issue #12); issue #9 saw ``triplet``."""
    sd, x, expected, cfg = _vector("triplet_bottleneck")
    renamed = {f"module.{k}": v for k, v in _rename(sd, ".triplet_attention.", f".{attr}.").items()}
    assert any(f".{attr}.ChannelGateH.spatial.conv.weight" in k for k in renamed)
    model = _model(cfg)
    _load(model, renamed)
    with torch.no_grad():
        assert (model(x) - expected).abs().max().item() <= 1e-4
    root, _, _, _ = _vector("triplet_root_bottleneck")
    _load(_model(cfg), _rename(root, ".triplet_attention.", f".{attr}."))


def test_filter_strict_accounting_and_passthrough() -> None:
    sd, x, expected, cfg = _vector("cbam_basic")
    model = _model(cfg)
    with pytest.raises(KeyError, match=r"layer1\.0\.cbam\.ChannelGate\.mlp\.5\.weight"):
        checkpoint_filter({**sd, "layer1.0.cbam.ChannelGate.mlp.5.weight": torch.zeros(1)}, model)
    with pytest.raises(KeyError, match="bam1"):
        checkpoint_filter({**sd, "bam1.bn.weight": torch.zeros(1)}, model)
    with pytest.raises(KeyError, match="SpatialGate"):  # CBAM keys never load into a triplet model
        checkpoint_filter(sd, _model({**cfg, "gates": "triplet"}))
    # PyTorch 0.4.0 checkpoints have no num_batches_tracked: taken from the model
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    _load(model, old)
    # our own layout passes through unchanged
    ours = model.state_dict()
    assert checkpoint_filter(ours, model).keys() == ours.keys()
    with torch.no_grad():
        assert (model(x) - expected).abs().max().item() <= 1e-4


def test_gate_swap_and_errors() -> None:
    m = mixerzoo.create_model("resnet18_cbam", gates="triplet", device="meta")
    assert all(isinstance(b.gate, TripletAttention) for s in m.stages for b in s)
    m = mixerzoo.create_model("resnet18_triplet", gates=("cbam", None, "triplet", None), device="meta")
    assert isinstance(m.layer1[0].gate, CBAM) and m.layer2[0].gate is None and m.layer4[1].gate is None
    m = mixerzoo.create_model("resnet18_triplet", gate_options={"kernel_size": 3}, device="meta")
    assert m.layer1[0].gate.hw.conv.weight.shape == (1, 2, 3, 3)
    with pytest.raises(ValueError, match=r"gates='pooling'.*'pooling' is a 'mixer'.*kind 'gate'"):
        mixerzoo.create_model("resnet18_cbam", gates="pooling")
    with pytest.raises(ValueError, match=r"gates=\('cbam', 'cbam'\)"):
        mixerzoo.create_model("resnet18_cbam", gates=("cbam", "cbam"))
    with pytest.raises(TypeError):
        mixerzoo.create_model("resnet18_cbam", no_such_option=1)


@pytest.mark.parametrize(
    ("name", "params_m", "keys"),
    [("resnet50_cbam", 28.09, 480), ("resnet18_triplet", 11.69, None), ("resnet50_triplet", 25.56, 608),
     ("resnet18_cbam", 11.78, None), ("resnet34_cbam", 21.96, None), ("resnet101_cbam", 49.33, None)],
)  # fmt: skip
def test_sizes_on_meta(name: str, params_m: float, keys: int | None) -> None:
    """Parameter counts of the official models (the two repositories' READMEs) and official key counts."""
    m = mixerzoo.create_model(name, device="meta")
    assert all(p.is_meta for p in m.parameters())
    assert abs(sum(p.numel() for p in m.parameters()) / 1e6 - params_m) < 0.006
    if keys is not None:
        assert len(m.state_dict()) == keys


def test_init_matches_official_rules() -> None:
    m = mixerzoo.create_model("test_resnet_triplet")
    for b in m.layer2:
        assert torch.equal(b.gate.hw.bn.weight, torch.zeros(1)) and torch.equal(b.gate.cw.bn.weight, torch.ones(1))
        assert torch.equal(b.bn3.weight, torch.ones_like(b.bn3.weight))
    assert torch.equal(mixerzoo.create_model("test_resnet_cbam").layer1[0].gate.spatial.bn.weight, torch.zeros(1))


def test_any_input_size_and_features() -> None:
    m = mixerzoo.create_model("test_resnet_triplet", num_classes=7).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 7)
        assert m(torch.randn(2, 3, 57, 71)).shape == (2, 7)
    f = mixerzoo.create_model("test_resnet_cbam", features_only=True, out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        feats = f(torch.randn(1, 3, 64, 96))
    assert [t.shape[1:] for t in feats] == [(16, 16, 24), (16, 8, 12), (16, 4, 6), (32, 2, 3)]
    assert f.feature_info.reduction() == [4, 8, 16, 32]


def test_real_variant_224() -> None:
    m = mixerzoo.create_model("resnet18_triplet").eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_timm_contract_bits() -> None:
    m = mixerzoo.create_model("test_resnet_cbam")
    groups = timm.models.group_parameters(m, m.group_matcher())
    assert sum(len(g) for g in groups.values()) == len(list(m.parameters()))
    assert m.group_matcher()["stem"] and len(groups) == 1 + 5 + 1  # stem, 5 blocks (2-1-1-1), head
    x = torch.randn(2, 3, 40, 40)
    m.eval()
    with torch.no_grad():
        ref = m(x)
        m.set_grad_checkpointing(True)
        torch.testing.assert_close(m(x), ref)
        last, inter = m.forward_intermediates(x)
        torch.testing.assert_close(last, m.forward_features(x))
        assert len(inter) == 4
    m.reset_classifier(5)
    assert m.fc.out_features == 5 and m.get_classifier() is m.fc
    m = mixerzoo.create_model("test_resnet_triplet", dtype=torch.bfloat16)
    assert m.conv1.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert m.eval()(torch.randn(1, 3, 32, 48, dtype=torch.bfloat16)).dtype == torch.bfloat16
    traced = torch.fx.symbolic_trace(mixerzoo.create_model("test_resnet_triplet").eval())
    assert traced(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_pretrained_cfgs() -> None:
    assert set(mixerzoo.list_pretrained("resnet*")) >= {
        "resnet50_cbam.orig_in1k", "resnet18_triplet.orig_in1k", "resnet50_triplet.orig_in1k",
    }  # fmt: skip
    for name in ("resnet50_cbam", "resnet50_triplet", "resnet18_cbam"):
        cfg = mixerzoo.create_model(name, device="meta").pretrained_cfg
        assert cfg["license"] == "mit" and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bilinear"
        assert (cfg["first_conv"], cfg["classifier"]) == ("conv1", "fc")
        assert bool(cfg.get("url")) == (name != "resnet18_cbam")
