"""``build_backbone``: variant config + user overrides → a timm-built model (pretrained load, checkpoint
filter, ``features_only`` through timm's getter wrapper)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from timm.models import build_model_with_cfg

from mixerzoo.zoo._checks import check_model_args
from mixerzoo.zoo._registry import PREFIX

__all__ = ["build_backbone"]


def build_backbone(
    model_cls: type,
    variant: str,
    pretrained: bool,
    config: Any,
    *,
    checkpoint_filter: Callable[..., Any] | None = None,
    out_indices: int | Sequence[int] = 4,
    **kwargs: Any,
) -> Any:
    """Build ``model_cls`` from the frozen dataclass ``config`` with ``kwargs`` overriding its fields.

    Keyword arguments that are not config fields go to the model constructor (``num_classes``,
    ``in_chans``, ``drop_path_rate``, ``device``, ...); unknown ones raise ``TypeError`` there.
    """
    from mixerzoo import hub  # lazy: avoids an import cycle

    # plain timm.create_model("hf-hub:...") gets the same checks as mixerzoo.create_model
    hub.guard_pretrained(kwargs.get("pretrained_cfg"), pretrained=pretrained)
    arch = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    for key in list(kwargs):
        if key in arch:
            arch[key] = kwargs.pop(key)
    check_model_args({**arch, **kwargs}, model=PREFIX + variant)  # one-line errors before anything is built
    dataclasses.replace(config, **arch)  # re-validates the overridden config (its __post_init__)
    feature_cfg = {"feature_cls": "getter", "out_indices": out_indices}
    return build_model_with_cfg(
        model_cls,
        PREFIX + variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter,
        feature_cfg=feature_cfg,
        **arch,
        **kwargs,
    )


def unwrap_state_dict(obj: Any) -> dict[str, Any]:
    """The tensor dict inside an official checkpoint: unwraps ``state_dict``/``model``/``state_dict_ema``/
    ``model_ema`` containers and strips the ``module.`` prefix that ``nn.DataParallel`` adds."""
    sd = obj
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise TypeError(f"checkpoint holds {type(obj).__name__}, not a state dict")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}
