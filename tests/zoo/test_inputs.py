"""Careless inputs, for every family's tiny variant.

* Constructor arguments are checked before anything is built: 0, -1, NaN, huge and wrong-type values give a
  one-line ``ValueError``/``TypeError`` naming the argument (built on the meta device, so nothing is allocated).
* A 3-D image gives an error naming the model and the expected ``(B, C, H, W)``; an empty batch returns an empty
  output, as dense models do.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from unittest import mock

import pytest
import torch

import mixerzoo
from mixerzoo.zoo import get_entry

TINY = mixerzoo.list_models("test_*", include_test=True)
ONE_PER_FAMILY = sorted({get_entry(n).family: n for n in reversed(TINY)}.values())
HUGE = 10**12
NAN = math.nan


def _config_fields(name: str) -> dict[str, object]:
    """The tiny variant's own config (captured from its ``build_backbone`` call; nothing is built)."""
    entry = get_entry(name)
    module = importlib.import_module(entry.fn.__module__)
    seen: dict[str, object] = {}

    def capture(model_cls: type, variant: str, pretrained: bool, config: object, **kwargs: object) -> None:
        seen.update({f.name: getattr(config, f.name) for f in dataclasses.fields(config)})

    with mock.patch.object(module, "build_backbone", capture):
        entry.fn(pretrained=False)
    assert seen, name
    return seen


def _cases() -> list:
    cases = []
    for name in ONE_PER_FAMILY:
        fields = _config_fields(name)
        bad_int = {"num_classes": [-1, NAN, HUGE, "10", 2.5, True], "in_chans": [0, -1, NAN, HUGE, "3", 3.0]}
        for rate in ("drop_rate", "drop_path_rate"):
            bad_int[rate] = [-1, NAN, HUGE, 1.0, "0.1", math.inf]
        for key in ("patch_size", "depth", "embed_dim"):
            if key in fields:
                bad_int[key] = [0, -1, NAN, HUGE, str(fields[key]), [fields[key]]]  # (None = timm default)
        for key in ("depths", "dims", "widths"):
            if key in fields:
                seq = tuple(fields[key])
                bad_int[key] = [
                    (0, *seq[1:]), (-1, *seq[1:]), (NAN, *seq[1:]), (HUGE, *seq[1:]), ",".join(map(str, seq)),
                    seq[:-1], 4,
                ]  # fmt: skip
        for key, values in bad_int.items():
            for v in values:
                cases.append(pytest.param(name, key, v, id=f"{name}-{key}={v!r}"))
    return cases


@pytest.mark.parametrize("name,key,value", _cases())
def test_bad_constructor_argument_is_named(name: str, key: str, value: object) -> None:
    with pytest.raises((ValueError, TypeError)) as err:
        mixerzoo.create_model(name, device="meta", **{key: value})
    msg = str(err.value)
    assert key in msg and "\n" not in msg, msg


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_valid_edge_values_build(name: str) -> None:
    model = mixerzoo.create_model(name, device="meta", num_classes=0, drop_rate=0.0, drop_path_rate=0.0, in_chans=1)
    assert model.num_classes == 0 and model.in_chans == 1


def test_error_is_one_line_naming_model_argument_and_value() -> None:
    with pytest.raises(ValueError) as err:
        mixerzoo.create_model("test_nat", device="meta", num_classes=-1)
    assert str(err.value) == "mz_test_nat: num_classes=-1 must be an int in [0, 16777216]"
    with pytest.raises(ValueError, match=r"dims=\(16, 32\) must have 4 entries"):
        mixerzoo.create_model("test_nat", device="meta", dims=(16, 32))


@pytest.mark.parametrize("name", TINY)
def test_3d_input_names_model_and_expected_shape(name: str) -> None:
    model = mixerzoo.create_model(name).eval()
    x = torch.randn(*model.pretrained_cfg["input_size"])  # a single image without its batch dimension
    for call in (model, model.forward_features, lambda t: model.forward_intermediates(t, intermediates_only=True)):
        with pytest.raises(ValueError) as err:
            call(x)
        msg = str(err.value)
        assert f"mz_{name}" in msg and "(B, C, H, W)" in msg and "3-D" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_empty_batch_gives_empty_output(name: str, mode: str) -> None:
    model = mixerzoo.create_model(name, num_classes=5).train(mode == "train")
    x = torch.randn(0, *model.pretrained_cfg["input_size"])
    with torch.set_grad_enabled(mode == "train"):
        out = model(x)
        feats = model.forward_intermediates(x, intermediates_only=True)
    assert out.shape == (0, 5)
    assert [f.shape[0] for f in feats] == [0] * len(feats)
    assert [f.shape[1] for f in feats] == [i["num_chs"] for i in model.feature_info][-len(feats) :]
    if mode == "train":
        out.sum().backward()  # autograd through an empty batch works too
