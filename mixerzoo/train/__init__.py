"""mixerzoo.train: the common training recipe (plain PyTorch on timm's building blocks).

- :class:`Recipe` / :func:`build_recipe`: typed recipe (CLI flags = fields = YAML keys), per-family defaults.
- :func:`fit`: train or fine-tune (DDP under torchrun with SyncBatchNorm, gradient accumulation, atomic
  sha256-verified safetensors checkpoints, exact resume, one locked run per output folder).
- :func:`evaluate_recipe`: top-1/top-5 of a model on a data source.
- ``python -m mixerzoo.train`` / ``mixerzoo train|finetune|eval``; ``python -m mixerzoo.train.demo``.
"""

from mixerzoo.train.recipe import Recipe, RecipeError, build_recipe, load_yaml

__all__ = ["Recipe", "RecipeError", "TrainResult", "build_recipe", "evaluate_recipe", "fit", "load_yaml"]


def __getattr__(name: str):  # keep `import mixerzoo.train` light: the loop pulls in albumentations/cv2 lazily
    if name in ("fit", "evaluate_recipe", "TrainResult"):
        from mixerzoo.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'mixerzoo.train' has no attribute {name!r}")
