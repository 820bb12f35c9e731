"""mixerzoo.plugins: the mixer registry (token mixers and CNN gates), fed by entry points.

See :mod:`mixerzoo.plugins._contract` for the contract a mixer class follows, and the README section
"Writing a mixer plugin".
"""

from __future__ import annotations

from mixerzoo.plugins._contract import CONTRACT_VERSION, KINDS, LAYOUTS, TokenMixer, check_mixer_class
from mixerzoo.plugins._registry import (
    BUILTIN_DIST,
    ENTRY_POINT_GROUP,
    MixerLoadError,
    MixerSpec,
    PluginError,
    UnknownMixerError,
    create_mixer,
    errors,
    get_mixer,
    list_mixers,
    mixer_spec,
    refresh_mixers,
    register_mixer,
    required_mixers,
)

__all__ = [
    "BUILTIN_DIST",
    "CONTRACT_VERSION",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "LAYOUTS",
    "MixerLoadError",
    "MixerSpec",
    "PluginError",
    "TokenMixer",
    "UnknownMixerError",
    "check_mixer_class",
    "create_mixer",
    "errors",
    "get_mixer",
    "list_mixers",
    "mixer_spec",
    "refresh_mixers",
    "register_mixer",
    "required_mixers",
]
