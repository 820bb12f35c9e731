"""Every registered model rebuilds from the config that ``save_pretrained`` (timm's ``save_config_for_hf``) writes.

timm records ``img_size`` as ``(H, W)`` in ``model_args`` (a JSON list after saving); families whose native size
was an ``int`` used to fail on reload with ``TypeError: unsupported operand type(s) for //: 'list' and 'int'``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

import mixerzoo
from mixerzoo.hub import build_config, save_pretrained
from mixerzoo.zoo import get_entry
from mixerzoo.zoo._checks import image_size

ALL = mixerzoo.list_models(include_test=True)
TINY = mixerzoo.list_models("test_*", include_test=True)
ONE_PER_FAMILY = sorted({get_entry(n).family: n for n in reversed(TINY)}.values())


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ALL)
def test_saved_config_rebuilds_same_model(name: str) -> None:
    model = mixerzoo.create_model(name, device="meta")
    config = json.loads(json.dumps(build_config(model)))  # as written to config.json: tuples become lists
    assert config["architecture"] == f"mz_{name}"
    rebuilt = timm.create_model(config["architecture"], device="meta", **config["model_args"])
    assert _shapes(rebuilt) == _shapes(model)


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_save_pretrained_reload_same_outputs(name: str, tmp_path: Path) -> None:
    model = mixerzoo.create_model(name, num_classes=7).eval()
    folder = save_pretrained(model, tmp_path / name)
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    with torch.no_grad():
        ref = model(x)
        for loaded in (
            mixerzoo.create_model(f"local-dir:{folder}", pretrained=True),
            timm.create_model(f"local-dir:{folder}", pretrained=True),
        ):
            assert type(loaded) is type(model)
            torch.testing.assert_close(loaded.eval()(x), ref, rtol=0, atol=0)


def test_image_size_accepts_int_and_pair() -> None:
    assert image_size(224) == (224, 224)
    assert image_size([224, 256]) == (224, 256)
    assert image_size((64, 64)) == (64, 64)
    for bad in ((224,), [0, 224], "224", 224.0, (224, True)):
        with pytest.raises((TypeError, ValueError), match="img_size"):
            image_size(bad)


def test_non_square_native_size_builds() -> None:
    for name in ("test_flatten_swin", "test_flatten_pvt", "test_flatten_pvt_v2", "test_flatten_cswin"):
        extra = {"la_split_sizes": (24, 12, 4, 2)} if name == "test_flatten_cswin" else {}
        model = mixerzoo.create_model(name, img_size=(64, 96), device="meta", **extra)
        assert model(torch.randn(1, 3, 64, 96, device="meta")).shape == (1, model.num_classes)
