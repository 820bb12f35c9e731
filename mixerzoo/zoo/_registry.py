"""The model registry: every mixerzoo model is also registered in timm as ``mz_<name>``."""

from __future__ import annotations

import difflib
import fnmatch
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from timm.models import generate_default_cfgs, is_model, register_model

__all__ = [
    "PREFIX",
    "ModelEntry",
    "UnknownModelError",
    "get_entry",
    "list_models",
    "list_pretrained",
    "register_backbone",
    "split_name",
]

PREFIX = "mz_"


class UnknownModelError(RuntimeError):
    """No mixerzoo model has that name."""


@dataclass
class ModelEntry:
    name: str  # mixerzoo name, no prefix
    family: str
    fn: Callable[..., Any]
    test: bool
    checkpoint_filter: Callable[..., Any] | None
    pretrained: dict[str, dict[str, Any]] = field(default_factory=dict)  # tag -> cfg

    @property
    def timm_name(self) -> str:
        return PREFIX + self.name


_MODELS: dict[str, ModelEntry] = {}


def split_name(name: str) -> tuple[str, str]:
    """``"mz_poolformer_s12.sail_in1k"`` → ``("poolformer_s12", "sail_in1k")``."""
    if not isinstance(name, str) or not name:
        raise UnknownModelError(f"model name must be a non-empty string, got {name!r}")
    arch, _, tag = name.partition(".")
    if arch.startswith(PREFIX):
        arch = arch[len(PREFIX) :]
    return arch, tag


def register_backbone(
    pretrained: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    default_cfg: Mapping[str, Any] | None = None,
    checkpoint_filter: Callable[..., Any] | None = None,
    test: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a variant builder ``fn(pretrained=False, **kwargs)`` as mixerzoo ``fn.__name__``.

    Args:
        pretrained: the family's table ``{"<arch>.<tag>": cfg_dict}``; entries whose arch is this
            builder's name become its pretrained tags (first = default).
        default_cfg: data cfg (input size, mean/std, pool_size, first_conv, classifier, ...) used when
            the variant has no pretrained tag.
        checkpoint_filter: ``(state_dict, model) -> state_dict`` for official checkpoint layouts.
        test: a tiny variant for tests, hidden from ``list_models()`` unless ``include_test=True``.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = fn.__name__
        timm_name = PREFIX + name
        if name in _MODELS:
            raise ValueError(f"mixerzoo model {name!r} is already registered (by {_MODELS[name].family})")
        if is_model(timm_name):
            raise ValueError(f"timm already registers {timm_name!r}; mixerzoo never overwrites a timm name")
        tags = {k.partition(".")[2]: dict(v) for k, v in (pretrained or {}).items() if k.partition(".")[0] == name}
        cfgs: dict[str, Any] = {}
        for tag, cfg in tags.items():
            cfgs[f"{timm_name}.{tag}" if tag else timm_name] = cfg
        if not cfgs:
            cfgs[timm_name] = dict(default_cfg or {})

        def entry(pretrained: bool = False, **kwargs: Any) -> Any:
            return fn(pretrained=pretrained, **kwargs)

        entry.__name__ = entry.__qualname__ = timm_name
        entry.__module__ = fn.__module__
        entry.__doc__ = fn.__doc__
        mod = sys.modules[fn.__module__]
        table = getattr(mod, "default_cfgs", None)
        if table is None:
            table = {}
            mod.default_cfgs = table  # type: ignore[attr-defined]
        table.update(generate_default_cfgs(cfgs))
        register_model(entry)
        family = fn.__module__.rpartition(".")[2]
        _MODELS[name] = ModelEntry(name, family, fn, test, checkpoint_filter, tags)
        return fn

    return deco


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name`` (``name``, ``mz_name`` or ``name.tag``); suggests close names."""
    arch, tag = split_name(name)
    entry = _MODELS.get(arch)
    if entry is None:
        close = difflib.get_close_matches(arch, list(_MODELS), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} (see mixerzoo.list_models())")
    if tag and tag not in entry.pretrained:
        raise UnknownModelError(
            f"model {arch!r} has no pretrained tag {tag!r} (tags: {sorted(entry.pretrained) or 'none'})"
        )
    return entry


def list_models(
    pattern: str | list[str] = "*", *, include_test: bool = False, pretrained: bool = False, family: str | None = None
) -> list[str]:
    """mixerzoo model names (without the ``mz_`` prefix) matching ``pattern`` (fnmatch)."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    patterns = [p[len(PREFIX) :] if p.startswith(PREFIX) else p for p in patterns]
    out = []
    for name, e in _MODELS.items():
        if e.test and not include_test:
            continue
        if family is not None and e.family != family:
            continue
        if pretrained and not any(_has_weights(c) for c in e.pretrained.values()):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            out.append(name)
    return sorted(out)


def _has_weights(cfg: Mapping[str, Any]) -> bool:
    return bool(cfg.get("url") or cfg.get("hf_hub_id") or cfg.get("file"))


def list_pretrained(pattern: str = "*") -> list[str]:
    """``name.tag`` for every pretrained cfg that points at real weights."""
    out = []
    for name in list_models(pattern):
        for tag, cfg in _MODELS[name].pretrained.items():
            if _has_weights(cfg):
                out.append(f"{name}.{tag}" if tag else name)
    return sorted(out)
