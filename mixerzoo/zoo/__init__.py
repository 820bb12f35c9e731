"""mixerzoo.zoo: the backbone families. Importing it registers every family (mixerzoo and timm
registries); a family is any public module in this package."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import timm

from mixerzoo.zoo._contract import Backbone
from mixerzoo.zoo._registry import (
    PREFIX,
    UnknownModelError,
    get_entry,
    list_models,
    list_pretrained,
    register_backbone,
    split_name,
)

__all__ = [
    "PREFIX",
    "Backbone",
    "UnknownModelError",
    "create_model",
    "get_checkpoint_filter",
    "list_families",
    "list_models",
    "list_pretrained",
    "register_backbone",
]

FAMILIES: list[str] = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
for _family in FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")

_HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


def list_families() -> list[str]:
    return list(FAMILIES)


def create_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> Any:
    """Create a mixerzoo model: ``create_model("poolformer_s12", num_classes=10, mixers="attention")``.

    ``model_name`` is a mixerzoo name (``poolformer_s12``), its timm spelling (``mz_poolformer_s12``),
    either with a pretrained tag (``.sail_in1k``), or a hub reference (``hf-hub:org/repo[@rev]``,
    ``local-dir:/path``). Keyword arguments: timm's (``num_classes``, ``in_chans``, ``features_only``,
    ``out_indices``, ``drop_path_rate``, ``device``, ``dtype``, ...), ``mixers=`` and any field of the
    family's config. Unknown names raise :class:`UnknownModelError` with close matches.
    """
    from mixerzoo import hub  # lazy: hub imports nothing from zoo at import time

    if isinstance(model_name, str) and model_name.startswith(_HUB_PREFIXES):
        timm_name = model_name
    else:
        arch, tag = split_name(model_name)
        get_entry(model_name)  # unknown names fail here, with close matches
        timm_name = PREFIX + arch + (f".{tag}" if tag else "")
    # hub checks before anything is built: requires/architecture/model_args, safetensors-only verified weights
    kwargs = hub.prepare_kwargs(timm_name, pretrained=pretrained, **kwargs)
    return timm.create_model(timm_name, pretrained=pretrained, **kwargs)


def get_checkpoint_filter(model_name: str) -> Any:
    """The family's official-checkpoint filter ``(state_dict, model) -> state_dict`` (or None)."""
    return get_entry(model_name).checkpoint_filter
