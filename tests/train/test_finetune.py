"""Fine-tuning helpers: new head, frozen stages, resolution change, through the Backbone contract only."""

from __future__ import annotations

import pytest
import torch

import mixerzoo
from mixerzoo.hub import save_pretrained
from mixerzoo.train import RecipeError, build_recipe
from mixerzoo.train.finetune import freeze_stages, prepare_model, set_resolution


@pytest.fixture(scope="module")
def source_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = mixerzoo.create_model("test_poolformer", num_classes=10)
    folder = save_pretrained(model, tmp_path_factory.mktemp("hub") / "src")
    return folder, {k: v.clone() for k, v in model.state_dict().items()}


def test_finetune_resets_head_and_keeps_backbone(source_folder):
    folder, src = source_folder
    for ref in (f"local-dir:{folder}", str(folder)):  # hub reference or plain folder path
        recipe = build_recipe({"model": ref, "data": "x"}, mode="finetune")
        model = prepare_model(recipe, num_classes=3, mode="finetune")
        sd = model.state_dict()
        head = model.pretrained_cfg["classifier"]
        assert sd[f"{head}.weight"].shape[0] == 3 and model.num_classes == 3
        backbone = [k for k in src if not k.startswith(head)]
        assert backbone and all(torch.equal(sd[k], src[k]) for k in backbone)


def test_finetune_from_safetensors_file(source_folder):
    folder, src = source_folder
    recipe = build_recipe({"model": "test_poolformer", "checkpoint": str(folder / "model.safetensors"), "data": "x"},
                          mode="finetune")
    model = prepare_model(recipe, num_classes=4, mode="finetune")
    k = next(k for k in src if "stem" in k or "downsample" in k or "patch" in k)
    assert torch.equal(model.state_dict()[k], src[k]) and model.num_classes == 4


def test_freeze_stages():
    model = mixerzoo.create_model("test_poolformer", num_classes=3)
    frozen = set(freeze_stages(model, 2))
    params = dict(model.named_parameters())
    assert frozen and all(not params[n].requires_grad for n in frozen)
    trainable = {n for n, p in params.items() if p.requires_grad}
    head = model.pretrained_cfg["classifier"]
    assert any(n.startswith(head) for n in trainable)  # head always trains
    stages_trainable = {n.split(".")[1] for n in trainable if n.startswith("stages.")}
    stages_frozen = {n.split(".")[1] for n in frozen if n.startswith("stages.")}
    assert stages_frozen and stages_trainable and max(map(int, stages_frozen)) < min(map(int, stages_trainable))
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    assert all(params[n].grad is None for n in frozen)
    with pytest.raises(RecipeError, match="freeze_stages=9 but .* has only"):
        freeze_stages(mixerzoo.create_model("test_poolformer", num_classes=3), 9)


def test_resolution_change():
    vit = mixerzoo.create_model("test_vit", num_classes=3)
    set_resolution(vit, 48)
    assert vit(torch.randn(1, 3, 48, 48)).shape == (1, 3)
    assert vit.pretrained_cfg["input_size"][-1] == 48
    cnn = mixerzoo.create_model("test_resnet_cbam", num_classes=3)
    set_resolution(cnn, 40)  # any input size: only the data side changes
    assert cnn.pretrained_cfg["input_size"] == (3, 40, 40)

    class Fixed(torch.nn.Module):
        pretrained_cfg = {"input_size": (3, 32, 32), "fixed_input_size": True}

    with pytest.raises(RecipeError, match="fixed input size 32 and no set_input_size"):
        set_resolution(Fixed(), 64)
