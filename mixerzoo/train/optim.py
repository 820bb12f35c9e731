"""Optimizer, scheduler, loss and mixup from the recipe, all built with timm's own factories.

* ``timm.optim.create_optimizer_v2``: no weight decay on 1-D params and ``no_weight_decay()`` names;
  layer-wise lr decay through the model's ``group_matcher`` when ``recipe.layer_decay`` is set.
* ``timm.scheduler.create_scheduler_v2`` stepped per optimizer update (``step_update``), so warm-up and
  cosine decay are smooth and resuming at any step gives the same lr.
* ``timm.data.Mixup`` + ``SoftTargetCrossEntropy`` when mixup/cutmix are on, else
  ``LabelSmoothingCrossEntropy`` (or plain cross-entropy when smoothing is 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .recipe import Recipe, RecipeError

__all__ = ["create_criterion", "create_mixup", "create_optimizer", "create_scheduler"]


def create_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW (by default) with the linearly scaled lr; only parameters with ``requires_grad``."""
    from timm.optim import create_optimizer_v2

    kwargs: dict[str, Any] = {}
    if recipe.opt.lower() not in ("sgd", "momentum", "lamb", "lars"):
        kwargs["eps"] = recipe.opt_eps
    if recipe.layer_decay is not None and not hasattr(model, "group_matcher"):
        raise RecipeError(f"layer_decay needs model.group_matcher(); {type(model).__name__} has none")
    try:
        return create_optimizer_v2(
            model,
            opt=recipe.opt,
            lr=recipe.resolved_lr(),
            weight_decay=recipe.weight_decay,
            momentum=recipe.momentum,
            layer_decay=recipe.layer_decay,
            **kwargs,
        )
    except (AssertionError, ValueError) as e:
        if "optimizer" in str(e).lower() or "opt" in str(e).lower():
            raise RecipeError(f"opt: {recipe.opt!r} is not a timm optimizer ({e})") from None
        raise


def create_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, updates_per_epoch: int) -> Any:
    """Per-update scheduler (cosine + linear warm-up by default)."""
    from timm.scheduler import create_scheduler_v2

    try:
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=recipe.sched,
            num_epochs=recipe.epochs,
            warmup_epochs=recipe.warmup_epochs,  # type: ignore[arg-type]  # timm multiplies by updates_per_epoch
            warmup_lr=recipe.warmup_lr,
            min_lr=recipe.min_lr,
            step_on_epochs=False,
            updates_per_epoch=updates_per_epoch,
        )
    except (AssertionError, ValueError) as e:
        raise RecipeError(f"sched: {recipe.sched!r} could not be built ({e})") from None
    if scheduler is None:
        raise RecipeError(f"sched: {recipe.sched!r} is not a timm scheduler")
    return scheduler


def create_mixup(recipe: Recipe, num_classes: int) -> Any:
    """timm Mixup (batch mode, label smoothing inside) or None when mixup and cutmix are off."""
    if recipe.mixup <= 0 and recipe.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=recipe.mixup,
        cutmix_alpha=recipe.cutmix,
        prob=recipe.mixup_prob,
        switch_prob=recipe.mixup_switch_prob,
        mode="batch",
        label_smoothing=recipe.smoothing,
        num_classes=num_classes,
    )


def create_criterion(recipe: Recipe, mixup: Any) -> nn.Module:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup is not None:
        return SoftTargetCrossEntropy()
    if recipe.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=recipe.smoothing)
    return nn.CrossEntropyLoss()
