"""Optimiser/scheduler built from the recipe with timm's factories."""

from __future__ import annotations

import torch

import mixerzoo
from mixerzoo.train import build_recipe
from mixerzoo.train.optim import create_criterion, create_mixup, create_optimizer, create_scheduler


def test_two_optimizer_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = mixerzoo.create_model("test_poolformer", num_classes=4)
    recipe = build_recipe({"model": "test_poolformer", "lr": 3e-3, "warmup_epochs": 0, "data": "x", "mixup": 0,
                           "cutmix": 0, "smoothing": 0.1})
    opt = create_optimizer(model, recipe)
    assert type(opt).__name__ == "AdamW"
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.05}  # norms/biases excluded
    criterion = create_criterion(recipe, create_mixup(recipe, 4))
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    model.train()
    losses = []
    for _ in range(3):
        loss = criterion(model(x), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[2] < losses[0]


def test_scheduler_warmup_then_cosine_and_layer_decay():
    model = mixerzoo.create_model("test_poolformer", num_classes=4)
    recipe = build_recipe({"model": "test_poolformer", "lr": 1e-3, "warmup_epochs": 1, "epochs": 4, "data": "x",
                           "layer_decay": 0.5, "min_lr": 1e-5, "warmup_lr": 1e-6})
    opt = create_optimizer(model, recipe)
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert len(scales) > 2 and max(scales) == 1.0  # head at full lr, earlier groups decayed
    sched = create_scheduler(opt, recipe, updates_per_epoch=10)
    lrs = []
    for step in range(41):
        sched.step_update(step)
        lrs.append(max(g["lr"] for g in opt.param_groups))
    assert lrs[0] == 1e-6  # warm-up starts at warmup_lr
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # linear warm-up for 1 epoch = 10 updates
    assert all(a >= b for a, b in zip(lrs[10:40], lrs[11:41]))  # then cosine decay
    assert 1e-5 <= lrs[40] < 1e-4
