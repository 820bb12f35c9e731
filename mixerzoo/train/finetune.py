"""Model construction for training and fine-tuning, using only the timm/Backbone contract.

* :func:`create` builds by name through ``mixerzoo.create_model`` (mixerzoo names, ``mz_`` names, ``hf-hub:`` and
  ``local-dir:`` references; timm names fall through to ``timm.create_model``); unknown names become a one-line
  :class:`RecipeError` with close matches.
* :func:`prepare_model` applies a fine-tuning init: pretrained weights, a hub folder or a ``.safetensors`` file,
  a new head for ``num_classes`` (timm drops a mismatched classifier), ``freeze_stages`` through
  ``group_matcher(coarse=True)``, and a resolution change through ``set_input_size``.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .recipe import Recipe, RecipeError

__all__ = ["check_model_name", "check_spec", "create", "freeze_stages", "prepare_model", "resolve_model_ref",
           "set_resolution", "spec_kwargs", "with_folder_spec"]

_log = logging.getLogger(__name__)


def resolve_model_ref(ref: str) -> str:
    """Turn a path into ``local-dir:``: a hub folder, or a training output directory holding ``model/``."""
    if ref.startswith(("hf-hub:", "local-dir:", "timm/")):
        return ref
    p = Path(ref)
    if p.is_dir():
        if (p / "config.json").is_file():
            return f"local-dir:{p.resolve()}"
        if (p / "model" / "config.json").is_file():
            return f"local-dir:{(p / 'model').resolve()}"
        raise RecipeError(f"model: directory {ref!r} has no config.json (not a hub folder or a training output)")
    return ref


def _suggest(name: str) -> str:
    import timm

    pool = set(timm.list_models())
    try:
        import mixerzoo

        pool |= set(mixerzoo.list_models())
    except Exception:  # noqa: BLE001 - suggestions are best effort
        pass
    close = difflib.get_close_matches(name, sorted(pool), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def create(name: str, *, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``mixerzoo.create_model`` with timm names as a fallback; one-line RecipeError for unknown names."""
    import timm

    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    ref = resolve_model_ref(name)
    try:
        import mixerzoo
    except ImportError:  # pragma: no cover - the package itself
        mixerzoo = None  # type: ignore[assignment]
    try:
        if mixerzoo is not None and not ref.startswith(("hf-hub:", "local-dir:")):
            try:
                return mixerzoo.create_model(ref, pretrained=pretrained, **kwargs)
            except getattr(mixerzoo, "UnknownModelError", ()) as e:
                if not timm.is_model(ref):
                    raise RecipeError(f"model: {e}".splitlines()[0]) from None
            return timm.create_model(ref, pretrained=pretrained, **kwargs)
        if mixerzoo is not None:
            return mixerzoo.create_model(ref, pretrained=pretrained, **kwargs)
        return timm.create_model(ref, pretrained=pretrained, **kwargs)
    except RecipeError:
        raise
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise RecipeError(f"model: unknown model {name!r}{_suggest(name)}") from None
        raise
    except (FileNotFoundError, OSError, ValueError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RecipeError(f"model {name!r}: {msg}") from None


def check_model_name(name: str | None) -> None:
    """Fail early (before any data is read) with the create_model error for an unknown model name."""
    import timm

    if not name:
        raise RecipeError("model: no model given (use --model NAME, e.g. --model test_poolformer)")
    ref = resolve_model_ref(name)
    if ref.startswith(("hf-hub:", "local-dir:", "timm/")):
        return
    arch = ref.split(".", 1)[0]
    if not (timm.is_model(arch) or timm.is_model(f"mz_{arch}")):
        create(ref, device="meta")  # raises RecipeError with mixerzoo's close-match suggestions


def _is_hub(ref: str) -> bool:
    return ref.startswith(("hf-hub:", "hf_hub:", "local-dir:"))


def _folder_model_args(ref: str) -> dict[str, Any] | None:
    """The ``model_args`` stored in a ``local-dir:`` folder's config.json (None for other references)."""
    import json

    if not ref.startswith("local-dir:"):
        return None
    path = Path(ref[len("local-dir:"):]) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # the hub loader reports a missing or broken config in its own words
    args = config.get("model_args") if isinstance(config, dict) else None
    return dict(args) if isinstance(args, dict) else {}


def check_spec(recipe: Recipe) -> None:
    """Check the recipe's model spec (model, mixers, mixer_options, model_args) before any data is read or file
    written: a meta-device build for model names; for a hub folder (or a run folder) a spec may only repeat what the
    folder was built with, since the folder's weights fit only that model. One-line :class:`RecipeError`."""
    from mixerzoo.spec import ModelSpec

    check_model_name(recipe.model)
    assert recipe.model is not None
    ref = resolve_model_ref(recipe.model)
    spec = ModelSpec.parse(ref, recipe.mixers, recipe.mixer_options, recipe.model_args)
    if spec.is_default:
        return
    if _is_hub(ref):
        stored = _folder_model_args(ref)
        if stored is None:
            return
        for key, value in spec.kwargs().items():
            old = ModelSpec.parse(ref, **{key: stored.get(key)}).kwargs().get(key) if key in (
                "mixers", "mixer_options") else stored.get(key)
            if old != value:
                flag = "--" + (key if key in ("mixers", "mixer_options") else "model-args").replace("_", "-")
                raise RecipeError(
                    f"{key}={value!r}: the model in {recipe.model!r} was built with {key}={old!r}; drop {flag} "
                    "(the folder's own spec is used), or train a new model with --model NAME")
        return
    spec.validate(img_size=recipe.img_size, num_classes=recipe.num_classes, in_chans=recipe.in_chans)


# model_args keys of a saved folder that are not part of its spec (recipe keys, or recorded by timm for any model)
_NOT_SPEC = ("num_classes", "in_chans", "global_pool", "drop_rate", "drop_path_rate", "pretrained", "device")


def with_folder_spec(recipe: Recipe) -> Recipe:
    """For a model read from a hub or run folder: the recipe with the folder's spec filled in (``mixers``,
    ``mixer_options``, other ``model_args``), so ``recipe.json`` and the checkpoints name the model that is trained.
    Other recipes are returned unchanged."""
    import dataclasses

    if not recipe.model or recipe.mixers is not None or recipe.mixer_options is not None or recipe.model_args:
        return recipe
    stored = _folder_model_args(resolve_model_ref(recipe.model))
    if not stored:
        return recipe
    args = {k: v for k, v in stored.items() if k not in _NOT_SPEC and k not in ("mixers", "mixer_options")}
    return dataclasses.replace(recipe, mixers=stored.get("mixers"), mixer_options=stored.get("mixer_options"),
                               model_args=args)


def spec_kwargs(recipe: Recipe, ref: str) -> dict[str, Any]:
    """The constructor kwargs the recipe's spec adds for ``ref`` (none for hub folders: they carry their own)."""
    if _is_hub(ref):
        return {}
    from mixerzoo.spec import ModelSpec

    return ModelSpec.parse(ref, recipe.mixers, recipe.mixer_options, recipe.model_args).kwargs()


def _group_ids(model: nn.Module) -> dict[int, list[str]]:
    from timm.models._manipulate import group_parameters

    if not hasattr(model, "group_matcher"):
        raise RecipeError(f"freeze_stages needs model.group_matcher(); {type(model).__name__} has none")
    groups = group_parameters(model, model.group_matcher(coarse=True))
    return {int(k): list(v) for k, v in groups.items()}


def freeze_stages(model: nn.Module, n: int) -> list[str]:
    """Freeze the stem and the first ``n`` stage groups of ``group_matcher(coarse=True)``; returns frozen names.

    The classifier and anything after the last stage (final norm) stay trainable. BatchNorm layers whose
    parameters are all frozen are put in eval mode via ``timm.layers.freeze_batch_norm_2d``.
    """
    if n <= 0:
        return []
    groups = _group_ids(model)
    head = _classifier_names(model)
    order = sorted(groups)
    # group ordinals: stem first, then stages; the last group(s) hold the head and, for some models, final norm
    stage_groups = [g for g in order[1:] if not all(_is_head(p, head) for p in groups[g])]
    if n > len(stage_groups):
        raise RecipeError(f"freeze_stages={n} but {type(model).__name__} has only {len(stage_groups)} stages")
    frozen_ids = [order[0], *stage_groups[:n]]
    names = [p for g in frozen_ids for p in groups[g] if not _is_head(p, head)]
    params = dict(model.named_parameters())
    for p in names:
        params[p].requires_grad_(False)
    _freeze_bn(model, set(names))
    return names


def _freeze_bn(model: nn.Module, frozen: set[str]) -> None:
    from timm.layers import freeze_batch_norm_2d

    for mod_name, module in list(model.named_modules()):
        if isinstance(module, nn.BatchNorm2d):
            pnames = [f"{mod_name}.{n}" for n, _ in module.named_parameters()]
            if pnames and all(p in frozen for p in pnames):
                parent_name, _, child = mod_name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child, freeze_batch_norm_2d(module))


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    cls = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    return (cls,) if isinstance(cls, str) else tuple(cls)


def _is_head(param: str, heads: tuple[str, ...]) -> bool:
    return any(param == h or param.startswith(h + ".") for h in heads)


def set_resolution(model: nn.Module, img_size: int | None) -> None:
    """Change the model's input resolution (``set_input_size``) and its pretrained cfg's ``input_size``.

    Models without ``set_input_size`` are fine when their cfg says ``fixed_input_size`` is False (CNNs); a
    fixed-size model without the hook raises RecipeError.
    """
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    current = tuple(cfg.get("input_size", (3, 224, 224)))
    if img_size is None or current[-1] == img_size and current[-2] == img_size:
        return
    if hasattr(model, "set_input_size"):
        try:
            model.set_input_size(img_size=(img_size, img_size))
        except (AssertionError, ValueError, TypeError) as e:
            raise RecipeError(f"img_size={img_size}: {type(model).__name__}.set_input_size failed ({e})") from None
    elif cfg.get("fixed_input_size", False):
        raise RecipeError(
            f"img_size={img_size}: {type(model).__name__} has a fixed input size {current[-1]} and no set_input_size()"
        )
    cfg["input_size"] = (current[0], img_size, img_size)
    cfg.pop("test_input_size", None)
    if cfg.get("pool_size") is not None and current[-1]:
        cfg["pool_size"] = tuple(max(1, int(p * img_size / current[-1])) for p in cfg["pool_size"])
    model.pretrained_cfg = cfg  # type: ignore[assignment]
    if hasattr(model, "default_cfg"):
        model.default_cfg = cfg  # type: ignore[assignment]


def prepare_model(recipe: Recipe, *, num_classes: int, mode: str = "train", device: torch.device | None = None
                  ) -> nn.Module:
    """Build the model of ``recipe`` for ``num_classes``, apply the fine-tuning init, freezing and resolution."""
    if not recipe.model:
        raise RecipeError("model: no model given (use --model NAME, e.g. --model test_poolformer)")
    name = recipe.model
    kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=recipe.in_chans, drop_path_rate=recipe.drop_path)
    if recipe.drop_rate:
        kwargs["drop_rate"] = recipe.drop_rate
    pretrained = recipe.pretrained
    ref = resolve_model_ref(name)
    if ref.startswith(("hf-hub:", "local-dir:")):
        pretrained = mode != "train" or recipe.pretrained
    if recipe.checkpoint:
        ckpt = Path(recipe.checkpoint)
        if ckpt.is_dir():
            ref = resolve_model_ref(str(ckpt))
            pretrained = True
        elif ckpt.is_file() and ckpt.suffix == ".safetensors":
            kwargs["pretrained_cfg_overlay"] = dict(file=str(ckpt.resolve()))
            pretrained = True
        else:
            raise RecipeError(f"checkpoint: {recipe.checkpoint!r} is neither a hub folder nor a .safetensors file")
    kwargs.update(spec_kwargs(recipe, ref))
    model = create(ref, pretrained=pretrained, **kwargs)
    if getattr(model, "num_classes", num_classes) != num_classes:  # heads timm did not reset (custom loaders)
        model.reset_classifier(num_classes)
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    cfg["num_classes"] = num_classes
    model.pretrained_cfg = cfg  # type: ignore[assignment]
    set_resolution(model, recipe.img_size)
    if recipe.freeze_stages:
        frozen = freeze_stages(model, recipe.freeze_stages)
        _log.info("froze %d parameter tensors (%d stages + stem)", len(frozen), recipe.freeze_stages)
    if device is not None:
        model.to(device)
    return model
