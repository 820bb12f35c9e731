"""The shared host (``mixerzoo.zoo._host``): which families it carries, its head's ``reset`` and the strict tail of
the checkpoint filters. The contract itself is exercised per variant by ``test_contract.py``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mixerzoo
from mixerzoo.zoo._host import LinearHeadBackbone, NormPoolHead, StagedBackbone, strict_filter

STAGED = ["test_poolformer", "test_nat", "test_biformer", "test_biformer_stl", "test_litv2", "test_flatten_pvt",
          "test_flatten_pvt_v2", "test_flatten_cswin", "test_flatten_swin"]  # fmt: skip
LINEAR_HEAD = {"test_litv2", "test_flatten_pvt", "test_flatten_pvt_v2", "test_flatten_cswin"}


@pytest.mark.parametrize("name", STAGED)
def test_family_uses_the_host(name: str) -> None:
    model = mixerzoo.create_model(name, device="meta")
    assert isinstance(model, StagedBackbone)
    assert isinstance(model, LinearHeadBackbone) == (name in LINEAR_HEAD)
    if name not in LINEAR_HEAD | {"test_flatten_swin"}:  # FLatten-Swin keeps timm Swin's pool-free head
        assert isinstance(model.head, NormPoolHead)


def test_head_reset_follows_mode_device_and_dtype() -> None:
    head = NormPoolHead(nn.LayerNorm(8), 8, 3, "avg", 0.0, channels_last_norm=True).eval()
    ref = torch.zeros(1, dtype=torch.float64)
    head.reset(8, 5, "max", ref)
    assert isinstance(head.fc, nn.Linear) and head.fc.out_features == 5 and head.fc.weight.dtype == torch.float64
    assert not head.fc.training
    assert head.global_pool.pool_type == "max"
    head.reset(8, 0, None, ref)
    assert isinstance(head.fc, nn.Identity) and head.global_pool.pool_type == "max"


def test_strict_filter_names_the_checkpoint_keys() -> None:
    model = nn.Linear(2, 2)
    out = {"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}
    assert strict_filter(dict(out), model, "Tiny") == out
    with pytest.raises(KeyError, match=r"1 checkpoint keys match nothing in Tiny: \['official\.w'\]"):
        strict_filter({**out, "w": torch.zeros(1)}, model, "Tiny", {"w": "official.w"})
