"""Shared non-mixer primitives for the families: construction context, mixer resolution and layout
adaptation, drop-path schedules. Families import this module, never each other."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor, nn

from mixerzoo.plugins import create_mixer, mixer_spec

__all__ = [
    "DropPath",
    "Mlp",
    "factory",
    "make_mixer",
    "resolve_mixers",
    "run_mixer",
    "stage_dpr",
    "trunc_normal_",
]


@contextlib.contextmanager
def factory(device: Any = None) -> Iterator[None]:
    """Create parameters directly on ``device`` (e.g. ``"meta"``) while building a model."""
    if device is None:
        yield
    else:
        with torch.device(device):
            yield


def resolve_mixers(
    mixers: str | Sequence[str], num_stages: int, *, host: str, kinds: Sequence[str], layouts: Sequence[str]
) -> tuple[str, ...]:
    """Expand ``mixers`` (one name, or one per stage) and check each against the host's needs.

    Raises ``ValueError`` naming the host and the mixer when a combination cannot work.
    """
    if isinstance(mixers, str):
        names = (mixers,) * num_stages
    else:
        names = tuple(mixers)
        if len(names) != num_stages or not all(isinstance(n, str) for n in names):
            raise ValueError(
                f"mixers={mixers!r}: {host} needs one mixer name or {num_stages} names (one per stage)"
            )
    for n in names:
        spec = mixer_spec(n)
        if spec.kind not in kinds:
            raise ValueError(
                f"mixer {n!r} is a {spec.kind!r}; {host} takes mixers of kind {' or '.join(map(repr, kinds))}"
            )
        if spec.layout not in layouts:
            raise ValueError(
                f"mixer {n!r} works on layout {spec.layout!r}; {host} can feed only {', '.join(map(repr, layouts))}"
            )
    return names


def make_mixer(name: str, dim: int, options: dict[str, Any] | None, **defaults: Any) -> nn.Module:
    """``create_mixer`` with host defaults that the mixer accepts, overridden by user ``options``."""
    import inspect

    cls = mixer_spec(name).cls
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kw = {k: v for k, v in defaults.items() if accepts_any or k in params}
    kw.update(options or {})
    return create_mixer(name, dim, **kw)


def run_mixer(mixer: nn.Module, x: Tensor, host_layout: str) -> Tensor:
    """Call ``mixer`` on ``x`` held in ``host_layout``, converting to and from the mixer's layout."""
    lay = mixer.layout
    if lay == host_layout:
        return mixer(x)
    if host_layout == "nchw":
        if lay == "nhwc":
            return mixer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        y = mixer(t, hw=(H, W)) if getattr(mixer, "needs_hw", False) else mixer(t)
        return y.transpose(1, 2).reshape(B, C, H, W)
    if host_layout == "nhwc":
        if lay == "nchw":
            return mixer(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        B, H, W, C = x.shape
        t = x.reshape(B, H * W, C)
        y = mixer(t, hw=(H, W)) if getattr(mixer, "needs_hw", False) else mixer(t)
        return y.reshape(B, H, W, C)
    raise ValueError(f"cannot feed a {lay!r} mixer from a {host_layout!r} host")


def stage_dpr(depths: Sequence[int], drop_path_rate: float) -> list[list[float]]:
    """Per-stage drop-path rates, linear in the global block index from 0 to ``drop_path_rate``."""
    total = sum(depths)
    rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out
