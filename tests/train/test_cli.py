"""`mixerzoo train|finetune|eval` argument handling: bad input gives one clear line and exit status 2."""

from __future__ import annotations

import json

from mixerzoo.train import build_recipe
from mixerzoo.train._cli import build_parser, main

from _train_helpers import TINY, make_image_folder


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


def test_register_adds_subcommands():
    import argparse

    parser = argparse.ArgumentParser(prog="mixerzoo")
    from mixerzoo.train._cli import register

    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["finetune", "--model", "x", "--freeze-stages", "2", "--no-ema", "--scale", "0.5", "1"])
    assert (args.command, args.freeze_stages, args.ema, args.scale) == ("finetune", "2", False, ["0.5", "1"])
    from mixerzoo.train._cli import _overrides

    r = build_recipe(_overrides(args), mode="finetune")  # values are converted (and range-checked) by the recipe
    assert (r.freeze_stages, r.ema, r.scale) == (2, False, (0.5, 1.0))
    assert build_parser().parse_args(["eval", "m"]).model_pos == "m"


def test_unknown_model_suggests(capsys, tmp_path):
    err = _err(capsys, ["train", "--model", "poolformer_s13", "--data", str(make_image_folder(tmp_path / "d")),
                        "--output", str(tmp_path / "o"), "--quiet"])
    assert "poolformer_s13" in err and "poolformer_s12" in err


def test_bad_data_and_recipe_messages(capsys, tmp_path):
    out = ["--output", str(tmp_path / "o")]
    assert "neither 'digits'" in _err(capsys, ["train", *TINY, "--data", str(tmp_path / "nope"), *out])
    (tmp_path / "empty").mkdir()
    assert "has no class folders" in _err(capsys, ["train", *TINY, "--data", str(tmp_path / "empty"), *out])
    bad = tmp_path / "r.yaml"
    bad.write_text("lr_bse: 0.1\n")
    assert "unknown recipe key 'lr_bse'" in _err(capsys, ["train", "--config", str(bad)])
    data = make_image_folder(tmp_path / "d")
    err = _err(capsys, ["finetune", *TINY, "--data", str(data), "--num-classes", "5", *out])
    assert "num_classes=5" in err and "2 classes" in err


def test_train_then_eval_and_finetune_from_output(capsys, tmp_path):
    data = make_image_folder(tmp_path / "d", n_per_class=6)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(data), "--epochs", "1", "--output", str(run)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("test_poolformer: 1 epochs") and "val top-1" in summary
    for name in ("metrics.jsonl", "curves.png", "recipe.json", "model/model.safetensors", "model/config.json"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "epoch" and "val_top1" in records[-1]
    assert main(["eval", f"local-dir:{run / 'model'}", "--data", str(data), "--quiet", "--workers", "0"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["count"] == 2 and 0.0 <= res["top1"] <= 100.0
    other = make_image_folder(tmp_path / "d3", n_per_class=4, classes=("p", "q", "r"))
    err = _err(capsys, ["eval", str(run), "--data", str(other), "--workers", "0"])
    assert "has 2 classes but the data" in err
    assert main(["finetune", str(run), "--data", str(other), "--epochs", "1", "--batch-size", "4", "--lr", "1e-3",
                 "--workers", "0",
                 "--img-size", "16", "--quiet", "--freeze-stages", "1", "--output", str(tmp_path / "ft")]) == 0
    cfg = json.loads((tmp_path / "ft" / "model" / "config.json").read_text())
    assert cfg["num_classes"] == 3
