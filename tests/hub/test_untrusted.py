"""Untrusted hub folders: sizes and shapes checked on the meta device before anything is allocated, num_classes that
disagrees with the head, sha256 of the weights, and files that are not what their name says."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import timm
import torch

import mixerzoo
from mixerzoo import hub

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = mixerzoo.create_model("test_poolformer", num_classes=10).eval()
    return model, hub.save_pretrained(model, tmp_path_factory.mktemp("untrusted") / "base")


def _variant(saved, dst: Path, *, weights: bool = True, **changes) -> Path:
    dst.mkdir()
    src = saved[1]
    if weights:
        (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    cfg = json.loads((src / "config.json").read_text())
    for key, value in changes.items():
        if key in ("model_args", "pretrained_cfg"):
            cfg[key].update(value)
        else:
            cfg[key] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------------------- sizes on meta first


@pytest.mark.parametrize("pretrained", [False, True])
def test_huge_model_args_are_refused_before_allocation(saved, tmp_path, pretrained):
    # dims[0]=2**20 asks for ~10**12 parameters (4 TB): refused from a meta build, even with pretrained=False
    folder = _variant(saved, tmp_path / "wide", model_args={"dims": [2**20, 24, 32, 48]})
    with pytest.raises(hub.ModelTooLargeError, match=r"parameters\+buffers.*MIXERZOO_MAX_PARAMS=\d+.*max_params=") as e:
        mixerzoo.create_model(f"local-dir:{folder}", pretrained=pretrained)
    assert "\n" not in str(e.value)


def test_size_limit_is_configurable_by_env_and_kwarg(saved, tmp_path, monkeypatch):
    folder = _variant(saved, tmp_path / "base")
    n = sum(p.numel() for p in saved[0].parameters()) + sum(b.numel() for b in saved[0].buffers())
    monkeypatch.setenv("MIXERZOO_MAX_PARAMS", str(n - 1))
    with pytest.raises(hub.ModelTooLargeError, match=rf"{n:,} parameters.*limit of {n - 1:,}"):
        mixerzoo.create_model(f"local-dir:{folder}", pretrained=True)
    with pytest.raises(hub.ModelTooLargeError):  # plain timm goes through the same check
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    # the caller raises it for one call: the kwarg also holds for timm's builder hook inside that call
    model = mixerzoo.create_model(f"local-dir:{folder}", pretrained=True, max_params=n).eval()
    with torch.no_grad():
        assert torch.equal(model(_x()), saved[0](_x()))
    monkeypatch.setenv("MIXERZOO_MAX_PARAMS", "-3")
    with pytest.raises(ValueError, match=r"MIXERZOO_MAX_PARAMS='-3'"):
        mixerzoo.create_model(f"local-dir:{folder}")


def test_activation_estimate_limits_input_size(saved, tmp_path):
    folder = _variant(saved, tmp_path / "big_input", pretrained_cfg={"input_size": [3, 100_000, 100_000]})
    with pytest.raises(hub.ModelTooLargeError, match=r"activation elements.*MIXERZOO_MAX_ACTIVATIONS="):
        mixerzoo.create_model(f"local-dir:{folder}")
    assert mixerzoo.create_model(f"local-dir:{folder}", max_activations=1e11).num_classes == 10


def test_shapes_are_compared_with_the_safetensors_header(saved, tmp_path):
    folder = _variant(saved, tmp_path / "other_dims", model_args={"dims": [16, 24, 32, 64]})
    with pytest.raises(hub.InvalidConfigError, match=r"model\.safetensors does not match the model config\.json "):
        mixerzoo.create_model(f"local-dir:{folder}", pretrained=True)
    deeper = _variant(saved, tmp_path / "deeper", model_args={"depths": [1, 1, 1, 40]})
    with pytest.raises(hub.InvalidConfigError, match=r"tensors missing \(stages\.3\.blocks\.1\."):
        mixerzoo.create_model(f"local-dir:{deeper}", pretrained=True)


def test_num_classes_that_disagrees_with_the_head_is_an_error(saved, tmp_path):
    # before: model_args built a 5-class head, timm dropped the stored 10-class head as "new": a silently random head
    folder = _variant(saved, tmp_path / "args5", model_args={"num_classes": 5})
    with pytest.raises(hub.InvalidConfigError, match=r"num_classes=10 but model_args\.num_classes=5"):
        mixerzoo.create_model(f"local-dir:{folder}", pretrained=True)
    folder = _variant(saved, tmp_path / "top5", num_classes=5, pretrained_cfg={"num_classes": 5})
    with pytest.raises(hub.InvalidConfigError, match=r"num_classes=5 but model\.safetensors's head head\.fc\.weight"):
        mixerzoo.create_model(f"local-dir:{folder}", pretrained=True)
    # a caller's own num_classes still swaps the head for fine-tuning
    assert mixerzoo.create_model(f"local-dir:{saved[1]}", pretrained=True, num_classes=3).num_classes == 3


# ---------------------------------------------------------------------------------------------------- sha256


def test_weights_sha256_is_recorded_and_verified(saved, tmp_path):
    cfg = json.loads((saved[1] / "config.json").read_text())
    assert set(cfg["sha256"]) == {"model.safetensors"}
    assert cfg["sha256"]["model.safetensors"] == hub._io.sha256_file(saved[1] / "model.safetensors")
    folder = _variant(saved, tmp_path / "flipped")
    w = folder / "model.safetensors"
    data = bytearray(w.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8 + n + 3] ^= 0x40  # an exponent bit of the first float32: the header stays valid, the value explodes
    w.write_bytes(bytes(data))
    with pytest.raises(hub.CorruptCheckpointError, match=r"model\.safetensors is corrupted \(sha256 .* recorded") as e:
        mixerzoo.create_model(f"local-dir:{folder}", pretrained=True)
    assert "\n" not in str(e.value)
    with pytest.raises(hub.CorruptCheckpointError, match="sha256"):
        hub.push_to_hub(folder, "org/never")  # checked before any upload
    with pytest.raises(hub.InvalidConfigError, match=r"sha256\['model\.safetensors'\]='xyz'"):
        mixerzoo.create_model(f"local-dir:{_variant(saved, tmp_path / 'bad', sha256={'model.safetensors': 'xyz'})}",
                              pretrained=True)
    # folders without the entry (written before it existed) still load
    old = _variant(saved, tmp_path / "old", sha256=None)
    assert mixerzoo.create_model(f"local-dir:{old}", pretrained=True).num_classes == 10


def test_io_helpers_for_training_checkpoints(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    digest = hub._io.sha256_file(f)
    hub._io.verify_sha256(f, digest)
    f.write_bytes(b"abd")
    with pytest.raises(hub.CorruptCheckpointError, match=r"x\.bin is corrupted"):
        hub._io.verify_sha256(f, digest, what="checkpoint")


# -------------------------------------------------------------------------------------------- file kinds


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_directory_and_outside_symlink_are_named(saved, tmp_path):
    fifo = _variant(saved, tmp_path / "fifo", weights=False)
    os.mkfifo(fifo / "model.safetensors")
    with pytest.raises(hub.HubError, match=r"model\.safetensors is a FIFO \(named pipe\), not a weights file"):
        mixerzoo.create_model(f"local-dir:{fifo}", pretrained=True)  # never opened: this would block
    with pytest.raises(hub.CorruptCheckpointError, match="FIFO"):
        hub.verify_safetensors(fifo / "model.safetensors")
    cfg_fifo = tmp_path / "cfg_fifo"
    cfg_fifo.mkdir()
    os.mkfifo(cfg_fifo / "config.json")
    with pytest.raises(hub.HubError, match=r"config\.json is a FIFO"):
        mixerzoo.create_model(f"local-dir:{cfg_fifo}")
    folder = _variant(saved, tmp_path / "dir", weights=False)
    (folder / "model.safetensors").mkdir()
    with pytest.raises(hub.HubError, match=r"model\.safetensors is a directory"):
        mixerzoo.create_model(f"local-dir:{folder}", pretrained=True)
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes((saved[1] / "model.safetensors").read_bytes())
    folder = _variant(saved, tmp_path / "link", weights=False)
    (folder / "model.safetensors").symlink_to(outside)
    with pytest.raises(hub.HubError, match=r"is a symlink to .*elsewhere\.safetensors, outside the folder"):
        mixerzoo.create_model(f"local-dir:{folder}", pretrained=True)
    # a symlink that stays inside the folder is fine
    inside = _variant(saved, tmp_path / "inside", weights=False)
    (inside / "weights-v1.safetensors").write_bytes(outside.read_bytes())
    (inside / "model.safetensors").symlink_to("weights-v1.safetensors")
    assert mixerzoo.create_model(f"local-dir:{inside}", pretrained=True).num_classes == 10
