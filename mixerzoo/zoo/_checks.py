"""Up-front checks shared by every family: constructor/config arguments (one-line errors naming the argument and
the value, before anything is built), image sizes (``int`` or ``(H, W)``, as timm records them), input tensors."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["MAX_SIZE", "check_input", "check_model_args", "image_size", "refuse_scripting"]

MAX_SIZE = 1 << 24  # sanity bound on every count/size argument (classes, channels, widths, depths, patch sizes)

# positive ints (>= 1)
_POS_INT = (
    "in_chans", "embed_dim", "depth", "patch_size", "stem_width", "head_dim", "n_win", "window_size", "kernel_size",
    "rpb_size", "pool_size", "side_dwconv", "dilation",
)  # fmt: skip
# one positive int per stage (length = len(depths))
_POS_INTS = ("depths", "dims", "widths", "num_heads", "sr_ratios", "split_sizes", "la_split_sizes")
_RATES = ("drop_rate", "drop_path_rate", "proj_drop_rate", "attn_drop_rate", "pos_drop_rate")  # in [0, 1)
_POS_FLOATS = ("mlp_ratio", "focusing_factor")  # finite, > 0


def _where(model: str | None) -> str:
    return f"{model}: " if model else ""


def _int(name: str, value: Any, *, lo: int, model: str | None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{_where(model)}{name}={value!r} must be an int >= {lo}, got {type(value).__name__}")
    if not lo <= value <= MAX_SIZE:
        raise ValueError(f"{_where(model)}{name}={value!r} must be an int in [{lo}, {MAX_SIZE}]")
    return int(value)


def _ints(name: str, value: Any, *, lo: int, n: int | None, model: str | None) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{_where(model)}{name}={value!r} must be a sequence of ints, got {type(value).__name__}")
    if len(value) == 0 or (n is not None and len(value) != n):
        need = f"{n} entries (one per stage of depths)" if n is not None else "at least one entry"
        raise ValueError(f"{_where(model)}{name}={value!r} must have {need}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{_where(model)}{name}={value!r} must hold ints >= {lo}, got {type(v).__name__} {v!r}")
        if not lo <= v <= MAX_SIZE:
            raise ValueError(f"{_where(model)}{name}={value!r} must hold ints in [{lo}, {MAX_SIZE}]")
    return tuple(int(v) for v in value)


def _float(name: str, value: Any, *, lo: float, hi: float | None, lo_open: bool, model: str | None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{_where(model)}{name}={value!r} must be a float, got {type(value).__name__}")
    v = float(value)
    rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'})"
    if not math.isfinite(v) or v < lo or (lo_open and v == lo) or (hi is not None and v >= hi):
        raise ValueError(f"{_where(model)}{name}={value!r} must be a finite float in {rng}")
    return v


def image_size(value: Any, name: str = "img_size", model: str | None = None) -> tuple[int, int]:
    """``int`` or ``(H, W)`` (tuple or list, as timm writes ``img_size`` into a saved config) → ``(H, W)``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (numbers.Integral, Sequence)):
        raise TypeError(f"{_where(model)}{name}={value!r} must be an int or (H, W), got {type(value).__name__}")
    if isinstance(value, numbers.Integral):
        s = _int(name, value, lo=1, model=model)
        return s, s
    if len(value) != 2:
        raise ValueError(f"{_where(model)}{name}={value!r} must be an int or (H, W)")
    h, w = _ints(name, value, lo=1, n=2, model=model)
    return h, w


def check_model_args(args: Mapping[str, Any], *, model: str | None = None) -> None:
    """Check every known constructor/config argument in ``args`` (config fields and timm kwargs together).

    Raises ``TypeError`` (wrong type) or ``ValueError`` (out of range, wrong length): one line naming ``model``,
    the argument and its value. Unknown keys are left to the constructor.
    """
    if "num_classes" in args:
        _int("num_classes", args["num_classes"], lo=0, model=model)
    for name in _POS_INT:
        if name in args:
            _int(name, args[name], lo=1, model=model)
    n = None
    if "depths" in args:
        n = len(_ints("depths", args["depths"], lo=1, n=None, model=model))
    for name in _POS_INTS:
        if name == "depths" or name not in args:
            continue
        if name == "num_heads" and isinstance(args[name], numbers.Integral):
            _int(name, args[name], lo=1, model=model)  # isotropic models: one head count
            continue
        _ints(name, args[name], lo=1, n=n, model=model)
    if "img_size" in args and args["img_size"] is not None:
        image_size(args["img_size"], model=model)
    for name in _RATES:
        if name in args and args[name] is not None:
            _float(name, args[name], lo=0.0, hi=1.0, lo_open=False, model=model)
    for name in _POS_FLOATS:
        if name in args:
            _float(name, args[name], lo=0.0, hi=None, lo_open=True, model=model)
    if "mlp_ratios" in args:
        v = args["mlp_ratios"]
        if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
            raise TypeError(f"{_where(model)}mlp_ratios={v!r} must be a sequence of floats, got {type(v).__name__}")
        if n is not None and len(v) != n:
            raise ValueError(f"{_where(model)}mlp_ratios={v!r} must have {n} entries (one per stage of depths)")
        for r in v:
            _float("mlp_ratios", r, lo=0.0, hi=None, lo_open=True, model=model)


def check_input(model: torch.nn.Module, x: Any) -> None:
    """A one-line error naming the model and the expected shape unless ``x`` is a 4-D ``(B, C, H, W)`` batch.

    Skipped for ``torch.fx`` proxies (symbolic tracing has no shapes); static under ``torch.jit.trace``/export.
    """
    if isinstance(x, torch.fx.Proxy) or torch.jit.is_scripting():
        return
    if not isinstance(x, Tensor):
        raise TypeError(f"{_name(model)} expects a tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{_name(model)} expects input of shape (B, C, H, W) with C={getattr(model, 'in_chans', '?')}, "
            f"got a {x.dim()}-D tensor of shape {tuple(x.shape)}"
        )


def refuse_scripting(model: torch.nn.Module) -> None:
    """For ``__prepare_scriptable__`` of models whose mixers dispatch kernels in Python: ``torch.jit.script`` fails
    with one line naming the model and the alternatives, not a TorchScript frontend error deep in a mixer."""
    raise RuntimeError(
        f"{_name(model)} cannot be compiled by torch.jit.script (its mixers dispatch kernels in Python); "
        "use torch.jit.trace, torch.compile or torch.export instead"
    )


def _name(model: torch.nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None)
    arch = cfg.get("architecture") if isinstance(cfg, Mapping) else None
    return f"{arch} ({type(model).__name__})" if arch else type(model).__name__
