"""Recipe: YAML loading, layered defaults, unknown keys, CLI flags."""

from __future__ import annotations

import pytest

from mixerzoo.train import Recipe, RecipeError, build_recipe, load_yaml
from mixerzoo.train._cli import recipe_from_args


def test_yaml_recipe_and_cli_override(tmp_path):
    cfg = tmp_path / "r.yaml"
    cfg.write_text("model: test_poolformer\nepochs: 7\nlr-base: 0.002\nscale: [0.5, 1.0]\nema: yes\n")
    assert load_yaml(cfg) == {"model": "test_poolformer", "epochs": 7, "lr_base": 0.002, "scale": (0.5, 1.0),
                              "ema": True}
    r = recipe_from_args(["--config", str(cfg), "--epochs", "3", "--data", str(tmp_path)])
    assert isinstance(r, Recipe)
    assert r.epochs == 3  # flag beats file
    assert r.lr_base == 0.002 and r.scale == (0.5, 1.0) and r.ema is True
    # lr linearly scaled from lr_base per lr_base_size images
    assert r.resolved_lr() == pytest.approx(0.002 * r.batch_size / 1024)


def test_yaml_unknown_key_is_one_line_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: test_poolformer\nwarmup_epoch: 3\n")
    with pytest.raises(RecipeError) as e:
        build_recipe(config=cfg)
    msg = str(e.value)
    assert "'warmup_epoch'" in msg and "warmup_epochs" in msg and "\n" not in msg


def test_yaml_wrong_type_names_key_and_value(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("epochs: many\n")
    with pytest.raises(RecipeError, match=r"epochs must be int, got 'many'"):
        build_recipe(config=cfg)


def test_layered_defaults():
    assert build_recipe({"model": "poolformer_s36", "data": "x"}).drop_path == 0.2
    assert build_recipe({"model": "mz_poolformer_m48", "data": "x"}).drop_path == 0.4
    assert build_recipe({"model": "test_vit", "data": "x"}).drop_path == 0.0
    paper = build_recipe({"model": "vit_tiny_patch16_224", "data": "x"})
    assert (paper.opt, paper.weight_decay, paper.smoothing, paper.mixup, paper.cutmix, paper.warmup_epochs) == (
        "adamw", 0.05, 0.1, 0.8, 1.0, 5.0)
    ft = build_recipe({"model": "vit_tiny_patch16_224", "data": "x"}, mode="finetune")
    assert ft.pretrained and ft.layer_decay == 0.75 and ft.epochs == 30
    assert build_recipe({"model": "test_poolformer", "drop_path": 0.3, "data": "x"}).drop_path == 0.3


def test_invalid_values_raise():
    with pytest.raises(RecipeError, match="hflip must be in"):
        Recipe(hflip=2.0)
    with pytest.raises(RecipeError, match="amp must be"):
        build_recipe({"amp": "fp8"})
