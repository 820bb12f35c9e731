"""The model spec (model + mixers + mixer options + architecture overrides) through every entry point: parsing, one-line
errors before any data or file is touched, and a spec that travels with the run (recipe.json, checkpoints,
config.json) so that eval / finetune / resume from the run folder rebuild exactly that model."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import mixerzoo
from mixerzoo import plugins
from mixerzoo.spec import ModelSpec, SpecError
from mixerzoo.train import RecipeError, build_recipe
from mixerzoo.train._cli import main

from _train_helpers import make_image_folder

# the hybrid on the tiny PoolFormer: pooling early, neighborhood attention and BiFormer routing late (at 32 px
# the last two stages see 2x2 and 1x1 maps: padded neighborhoods and a single BRA window)
MIXERS = "pooling,pooling,neighborhood,bra"
OPTIONS = ";;kernel_size=3,small_input=pad_mask;n_win=1,topk=1,num_heads=2"
FAST = ["--img-size", "32", "--batch-size", "4", "--workers", "0", "--quiet", "--epochs", "1", "--lr", "1e-3",
        "--warmup-epochs", "0", "--aug", "none", "--no-verify-images"]


def _err(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("spec") / "data", n_per_class=6, size=32)


# ----------------------------------------------------------------------------------------------- parsing


def test_parse_cli_strings_and_round_trip():
    s = ModelSpec.parse("test_poolformer", MIXERS, OPTIONS, ["depths=[1,1,2,1]", "mlp_ratio=2.5"])
    assert s.mixers == ["pooling", "pooling", "neighborhood", "bra"]
    assert s.mixer_options == [{}, {}, {"kernel_size": 3, "small_input": "pad_mask"},
                               {"n_win": 1, "topk": 1, "num_heads": 2}]
    assert s.model_args == {"depths": [1, 1, 2, 1], "mlp_ratio": 2.5}
    assert ModelSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    # one name / one options dict for every stage; JSON works as well as key=value
    one = ModelSpec.parse("test_poolformer", "attention", '{"num_heads": 2}', '{"dims": [16, 32, 32, 48]}')
    assert (one.mixers, one.mixer_options, one.model_args) == ("attention", {"num_heads": 2},
                                                               {"dims": [16, 32, 32, 48]})
    assert ModelSpec.parse("m", mixer_options='[null, {"a": 1}]').mixer_options == [{}, {"a": 1}]
    assert ModelSpec.parse("m", None, None, "window_size=7,qkv_bias=false").model_args == {
        "window_size": 7, "qkv_bias": False}
    assert ModelSpec.parse("m").is_default and ModelSpec.parse("m").kwargs() == {}


@pytest.mark.parametrize(("args", "needle"), [
    ({"mixer_options": "pool_size"}, "expected key=value"),
    ({"mixer_options": "{bad json"}, "invalid JSON"),
    ({"mixers": [1, 2]}, "mixers="),
    ({"model_args": ["num_classes=3"]}, "--num-classes"),
    ({"model_args": ["mixers=attention"]}, "--mixers"),
])
def test_parse_errors_name_the_argument(args, needle):
    with pytest.raises(SpecError, match=needle):
        ModelSpec.parse("test_poolformer", **args)


def test_recipe_fields_flags_and_yaml(tmp_path):
    from mixerzoo.train._cli import recipe_from_args

    r = recipe_from_args(["--model", "test_poolformer", "--mixers", MIXERS, "--mixer-options", OPTIONS,
                          "--model-args", "depths=[1,1,1,1]", "mlp_ratio=2"])
    assert r.spec() == ModelSpec.parse("test_poolformer", MIXERS, OPTIONS, {"depths": [1, 1, 1, 1], "mlp_ratio": 2})
    assert json.loads(json.dumps(r.to_dict()))["mixers"] == ["pooling", "pooling", "neighborhood", "bra"]
    yml = tmp_path / "r.yaml"
    yml.write_text(textwrap.dedent("""
        model: test_poolformer
        mixers: [pooling, pooling, attention, attention]
        mixer_options:
          - {}
          - {}
          - {num_heads: 2}
          - {num_heads: 2}
        model_args: {depths: [1, 1, 2, 1]}
    """))
    r = build_recipe(config=yml)
    assert r.spec().kwargs() == {"depths": [1, 1, 2, 1], "mixers": ["pooling", "pooling", "attention", "attention"],
                                 "mixer_options": [{}, {}, {"num_heads": 2}, {"num_heads": 2}]}


def test_eval_does_not_check_optimizer_keys():
    # eval --batch-size 4 on non-digits data: lr_base * 4 / 1024 < min_lr is an optimizer concern eval never has
    with pytest.raises(RecipeError, match="min_lr"):
        build_recipe({"data": "some/folder", "batch_size": 4}, mode="train")
    assert build_recipe({"data": "some/folder", "batch_size": 4}, mode="eval").batch_size == 4


# ----------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("mixers", "options", "model_args", "needles"), [
    ("poolng", None, None, ["mixers='poolng'", "did you mean 'pooling'"]),
    ("pooling,attention", None, None, ["mixers=", "4 names (one per stage)"]),
    ("pooling", "pool_sise=3", None, ["mixer_options=", "'pool_sise'", "did you mean 'pool_size'"]),
    ("pooling,pooling,pooling,window", ";;;windw_size=2", None, ["stage 4", "'windw_size'"]),
    ("cbam", None, None, ["mixers='cbam'", "'gate'"]),
    ("acme_mixers.swin", None, None, ["pip install acme-mixers"]),
    (None, None, ["dpeths=[1,1,1,1]"], ["model_args", "dpeths", "did you mean 'depths'"]),
    (None, None, ["depths=[1,1]"], ["model_args", "depths"]),
    ("pooling,pooling,neighborhood,bra", ";;kernel_size=3;n_win=1,topk=1,num_heads=2", None,
     ["img_size=32", "small_input='pad_mask'"]),
])
def test_bad_spec_fails_before_data_and_output(capsys, tmp_path, monkeypatch, data, mixers, options, model_args,
                                               needles):
    import mixerzoo.train.loop as loop

    def no_data(*a, **k):
        raise AssertionError("data was read before the spec was checked")

    monkeypatch.setattr(loop, "open_sources", no_data)
    argv = ["train", "--model", "test_poolformer", "--data", str(data), "--output", str(tmp_path / "run"), *FAST]
    if mixers:
        argv += ["--mixers", mixers]
    if options:
        argv += ["--mixer-options", options]
    if model_args:
        argv += ["--model-args", *model_args]
    err = _err(capsys, argv)
    for needle in needles:
        assert needle in err, err
    assert not (tmp_path / "run").exists()


def test_spec_errors_in_python():
    with pytest.raises(SpecError, match="takes no mixers"):
        ModelSpec.parse("resnet18", "pooling").validate()
    spec = ModelSpec.parse("test_poolformer", "pooling,pooling,attention,attention", '{"num_heads": 2}')
    model = spec.create(num_classes=5)
    assert set(plugins.required_mixers(model)) == {"pooling", "attention"} and model.num_classes == 5


def test_forward_takes_the_spec(capsys):
    from mixerzoo.cli import main as mz

    assert mz(["forward", "test_poolformer", "--mixers", "pooling,pooling,attention,attention",
               "--mixer-options", ";;num_heads=2;num_heads=2", "--model-args", "depths=[1,1,2,1]",
               "--img-size", "32", "--num-classes", "3"]) == 0
    out = capsys.readouterr().out
    assert "attention (mixerzoo)" in out and "(1, 3)" in out
    assert mz(["forward", "test_poolformer", "--mixers", "atention"]) == 2
    assert "did you mean 'attention'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- the run folder


def test_spec_travels_with_the_run(capsys, tmp_path, data):
    run = tmp_path / "run"
    assert main(["train", "--model", "test_poolformer", "--mixers", MIXERS, "--mixer-options", OPTIONS,
                 "--data", str(data), "--output", str(run), *FAST]) == 0
    want = ModelSpec.parse("test_poolformer", MIXERS, OPTIONS)
    # recipe.json, every checkpoint, the exported config.json
    assert ModelSpec.from_dict(json.loads((run / "recipe.json").read_text())) == want
    for meta in (run / "checkpoints").glob("step_*.json"):
        assert json.loads(meta.read_text())["state"]["spec"] == want.to_dict()
    margs = json.loads((run / "model" / "config.json").read_text())["model_args"]
    assert (margs["mixers"], margs["mixer_options"]) == (want.mixers, want.mixer_options)
    capsys.readouterr()

    # eval RUN_DIR: no spec given, the folder's model is rebuilt
    assert main(["eval", str(run), "--data", str(data), "--batch-size", "4", "--workers", "0", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] > 0
    # a different spec on the folder, or on resume, is refused in one line before anything happens
    err = _err(capsys, ["eval", str(run), "--data", str(data), "--mixers", "attention", "--quiet"])
    assert "was built with mixers=['pooling', 'pooling', 'neighborhood', 'bra']" in err
    err = _err(capsys, ["train", "--resume", "--output", str(run), "--mixers", "pooling", "--quiet"])
    assert "cannot change: mixers='pooling'" in err

    # finetune RUN_DIR: the folder's spec, recorded again in the new run
    ft = tmp_path / "ft"
    assert main(["finetune", str(run), "--data", str(data), "--output", str(ft), *FAST]) == 0
    ft_recipe = json.loads((ft / "recipe.json").read_text())
    assert (ft_recipe["mixers"], ft_recipe["mixer_options"]) == (want.mixers, want.mixer_options)

    # the exported folder reloads through plain timm with identical outputs
    import timm

    folder = f"local-dir:{ft / 'model'}"
    a = timm.create_model(folder, pretrained=True).eval()
    b = mixerzoo.create_model(folder, pretrained=True).eval()
    assert set(plugins.required_mixers(a)) == {"pooling", "neighborhood", "bra"}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


# ----------------------------------------------------------------------------------------------- third-party mixers

PLUGIN = '''
from torch import nn

class ChannelMix(nn.Module):
    """A third-party token mixer: two 1x1 convs."""
    layout = "nchw"
    kind = "mixer"

    def __init__(self, dim, *, num_heads=None, expand=1):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim * expand, 1)
        self.back = nn.Conv2d(dim * expand, dim, 1)

    def forward(self, x):
        return self.back(self.proj(x).relu())
'''


@pytest.fixture
def fake_plugin(tmp_path):
    """An installed distribution ``spec-mixers`` declaring mixer ``chanmix`` through its entry point."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "spec_mixers.py").write_text(textwrap.dedent(PLUGIN))
    info = root / "spec_mixers-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: spec-mixers\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mixerzoo.mixers]\nchanmix = spec_mixers:ChannelMix\n")
    sys.path.insert(0, str(root))
    plugins.refresh_mixers()
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("spec_mixers", None)
        plugins.refresh_mixers()


def test_third_party_mixer_through_the_cli(capsys, tmp_path, data, fake_plugin):
    run = tmp_path / "run"
    err = _err(capsys, ["train", "--model", "test_poolformer", "--mixers", "pooling,pooling,chanmix,chanmix",
                        "--mixer-options", ";;expnd=2;", "--data", str(data), "--output", str(run), *FAST])
    assert "'expnd'" in err and "did you mean 'expand'" in err and not run.exists()
    assert main(["train", "--model", "test_poolformer", "--mixers", "pooling,pooling,chanmix,chanmix",
                 "--mixer-options", ";;expand=2;", "--data", str(data), "--output", str(run), *FAST]) == 0
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["requires"]["mixers"] == {"pooling": "mixerzoo", "spec_mixers.chanmix": "spec_mixers"}
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(data), "--batch-size", "4", "--workers", "0", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] > 0


def test_bench_takes_the_spec(capsys, tmp_path):
    from mixerzoo.cli import main as mz

    argv = ["bench", "test_poolformer", "--mixers", "pooling,pooling,attention,attention", "--mixer-options",
            '{"num_heads": 2}', "--runs", "1", "--warmup", "1", "--yardstick", "none", "--img-size", "32",
            "--batch", "2", "--no-memory", "--no-plots", "--quiet", "--out-dir", str(tmp_path)]
    assert mz(argv) == 0
    capsys.readouterr()
    row = json.loads(next(tmp_path.glob("*.json")).read_text())
    row = row["results"][0]
    spec = ModelSpec.parse("test_poolformer", "pooling,pooling,attention,attention", '{"num_heads": 2}')
    params = sum(p.numel() for p in spec.create().parameters())
    assert abs(row["params_m"] - params / 1e6) < 1e-3 and row["status"] == "ok"
    assert mz(argv[:2] + ["--mixers", "pooling,attention", "--quiet"]) == 2
    assert "4 names (one per stage)" in capsys.readouterr().err
