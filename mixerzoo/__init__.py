"""mixerzoo: a plugin-based zoo of attention vision backbones, timm-compatible.

``import mixerzoo`` registers every model in timm as ``mz_<name>``; it never imports triton.
"""

from __future__ import annotations

from mixerzoo.plugins import create_mixer, list_mixers, refresh_mixers, register_mixer
from mixerzoo.version import __version__
from mixerzoo.zoo import (
    UnknownModelError,
    create_model,
    get_checkpoint_filter,
    list_families,
    list_models,
    list_pretrained,
)

__all__ = [
    "UnknownModelError",
    "__version__",
    "create_mixer",
    "create_model",
    "get_checkpoint_filter",
    "list_families",
    "list_mixers",
    "list_models",
    "list_pretrained",
    "refresh_mixers",
    "register_mixer",
]
