"""Checks on untrusted hub folders that run before any real tensor is allocated.

A ``config.json`` decides how big the model is (``model_args``) and a ``model.safetensors`` header decides how big
each tensor is. Neither is believed: the model is first built on the ``meta`` device (shapes only, no memory), its
size is compared with a limit, and every shape is compared with the safetensors header (read without loading data).
Only then does timm build the real model and read the weights.

Limits (per model, from config.json only; a user's own ``create_model("poolformer_s12", ...)`` is not limited):

- ``MIXERZOO_MAX_PARAMS`` (default 1e9): parameters plus buffers, elements;
- ``MIXERZOO_MAX_ACTIVATIONS`` (default 1e9): an activation estimate, elements per image at the config's input size
  (the stage outputs listed in ``feature_info``; a lower bound of what a forward pass holds).

Both can be raised per call: ``mixerzoo.create_model("local-dir:...", max_params=5e9, max_activations=4e9)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mixerzoo.hub._config import HubError, InvalidConfigError

__all__ = [
    "DEFAULT_MAX_ACTIVATIONS",
    "DEFAULT_MAX_PARAMS",
    "ModelTooLargeError",
    "check_file_kind",
    "check_model_size",
    "check_model_size_and_shapes",
    "check_shapes",
    "size_limits",
]

_logger = logging.getLogger(__name__)

DEFAULT_MAX_PARAMS = 1_000_000_000  # 4 GiB of float32; the largest registered model has 0.2e9
DEFAULT_MAX_ACTIVATIONS = 1_000_000_000
_ENV_PARAMS = "MIXERZOO_MAX_PARAMS"
_ENV_ACTS = "MIXERZOO_MAX_ACTIVATIONS"

_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
}  # fmt: skip


class ModelTooLargeError(InvalidConfigError):
    """config.json describes a model above the size limits (parameters or activation estimate)."""


def _limit(value: Any, env: str, default: int, arg: str) -> int:
    where = f"{arg}={value!r}"
    if value is None:
        raw = os.environ.get(env)
        if raw is None or raw.strip() == "":
            return default
        value, where = raw, f"{env}={raw!r}"
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a positive number (elements)") from None
    if isinstance(value, bool) or not math.isfinite(out) or out <= 0:
        raise ValueError(f"{where} must be a positive number (elements)")
    return int(out)


def size_limits(max_params: Any = None, max_activations: Any = None) -> tuple[int, int]:
    """``(max_params, max_activations)``: the arguments, else ``MIXERZOO_MAX_PARAMS`` / ``MIXERZOO_MAX_ACTIVATIONS``,
    else the defaults."""
    return (
        _limit(max_params, _ENV_PARAMS, DEFAULT_MAX_PARAMS, "max_params"),
        _limit(max_activations, _ENV_ACTS, DEFAULT_MAX_ACTIVATIONS, "max_activations"),
    )


# ------------------------------------------------------------------------------------------- file kinds


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return "not a regular file"


def check_file_kind(path: Path, folder: Path | None, where: str) -> bool:
    """False if ``path`` does not exist; True for a regular file; else :class:`HubError` naming what it is.

    Uses ``lstat``/``stat`` only (a FIFO is never opened). With ``folder``, a symlink must resolve inside it.
    """
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(lst.st_mode):
        target = Path(os.path.realpath(path))
        if folder is not None:
            root = Path(os.path.realpath(folder))
            if target != root and root not in target.parents:
                raise HubError(
                    f"{where}: {path} is a symlink to {target}, outside the folder {root}; refusing to follow it "
                    "(copy the file into the folder)"
                )
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise HubError(f"{where}: {path} is a dangling symlink (to {target})") from None
        if not stat.S_ISREG(st.st_mode):
            raise HubError(f"{where}: {path} is a symlink to {_kind(st.st_mode)} ({target}), not a weights file")
        return True
    if not stat.S_ISREG(lst.st_mode):
        raise HubError(f"{where}: {path} is {_kind(lst.st_mode)}, not a weights file")
    return True


# ----------------------------------------------------------------------------------- meta build and header


@dataclass(frozen=True)
class _Checked:
    params: int
    activations: int
    explicit: bool  # approved under limits the caller passed as arguments


_APPROVED: dict[str, _Checked] = {}  # key -> result; a folder approved once in a process is not rebuilt


def _build_kwargs(config: Mapping[str, Any], model_args: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor kwargs timm derives for a hub folder: pretrained_cfg defaults, then model_args (timm's
    ``_parse_model_cfg`` + ``_update_default_model_kwargs``)."""
    pcfg = config.get("pretrained_cfg", config)
    pcfg = pcfg if isinstance(pcfg, Mapping) else {}
    kw = dict(model_args)
    num_classes = config.get("num_classes", pcfg.get("num_classes"))
    if isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 0:
        kw.setdefault("num_classes", num_classes)
    size = pcfg.get("input_size")
    if isinstance(size, (list, tuple)) and len(size) == 3:
        kw.setdefault("in_chans", size[0])
        if pcfg.get("fixed_input_size"):
            kw.setdefault("img_size", list(size[1:]))
    return kw


def check_num_classes(config: Mapping[str, Any], model_args: Mapping[str, Any], where: str) -> None:
    """``model_args.num_classes`` (older folders) must agree with the top-level ``num_classes``: otherwise timm builds
    one head size and drops the stored head as a "new classifier", a silently random head."""
    if "num_classes" not in model_args:
        return
    pcfg = config.get("pretrained_cfg", config)
    top = config.get("num_classes", pcfg.get("num_classes") if isinstance(pcfg, Mapping) else None)
    if top is not None and model_args["num_classes"] != top:
        raise InvalidConfigError(
            f"{where}: config.json has num_classes={top!r} but model_args.num_classes={model_args['num_classes']!r}; "
            "the saved head can match only one of them"
        )


def _meta_build(architecture: str, kwargs: Mapping[str, Any], where: str) -> torch.nn.Module:
    import timm

    try:
        with torch.device("meta"):
            return timm.create_model(architecture, pretrained=False, **dict(kwargs))  # type: ignore[no-any-return]
    except (TypeError, ValueError, RuntimeError, AssertionError, IndexError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidConfigError(f"{where}: config.json's model_args do not build {architecture}: {first}") from e


def _activation_estimate(model: torch.nn.Module, config: Mapping[str, Any], kwargs: Mapping[str, Any]) -> int:
    pcfg = config.get("pretrained_cfg", config)
    size = pcfg.get("input_size") if isinstance(pcfg, Mapping) else None
    h, w = (size[1], size[2]) if isinstance(size, (list, tuple)) and len(size) == 3 else (224, 224)
    img = kwargs.get("img_size")
    if isinstance(img, int) and not isinstance(img, bool):
        h = w = img
    elif isinstance(img, (list, tuple)) and len(img) == 2:
        h, w = img
    h, w = int(h), int(w)
    total = 0
    for info in getattr(model, "feature_info", None) or []:
        try:
            chs, red = int(info["num_chs"]), max(int(info.get("reduction", 1)), 1)
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        total += chs * math.ceil(h / red) * math.ceil(w / red)
    return max(total, int(kwargs.get("in_chans", 3) or 3) * h * w)


def _raise_hint(env: str, arg: str, need: int) -> str:
    return f"if you trust this config, raise the limit: {env}={need} or create_model(..., {arg}={need})"


def _header_shapes(header: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(int(s) for s in v["shape"]) for k, v in header.items() if k != "__metadata__"}


def _filtered_shapes(
    architecture: str, header: Mapping[str, Any], model: torch.nn.Module
) -> dict[str, tuple[int, ...]] | None:
    """Header shapes after the family's checkpoint filter (run on meta tensors), or None if it cannot run."""
    import mixerzoo

    try:
        filt = mixerzoo.get_checkpoint_filter(architecture)
    except Exception:  # noqa: BLE001 - not a mixerzoo architecture
        return None
    if filt is None:
        return None
    sd = {
        k: torch.empty(tuple(v["shape"]), dtype=_DTYPES.get(str(v.get("dtype")), torch.float32), device="meta")
        for k, v in header.items()
        if k != "__metadata__"
    }
    try:
        out = filt(sd, model)
    except Exception as e:  # noqa: BLE001 - the filter may need real data; the load itself still checks strictly
        _logger.debug("checkpoint filter of %s did not run on meta tensors: %r", architecture, e)
        return None
    return {str(k): tuple(v.shape) for k, v in out.items() if isinstance(v, torch.Tensor)}


def _compare(
    expected: Mapping[str, tuple[int, ...]],
    got: Mapping[str, tuple[int, ...]],
    *,
    classifier: Any,
    num_classes: Any,
    weights: Path,
    where: str,
) -> None:
    heads = {f"{c}.weight" for c in ([classifier] if isinstance(classifier, str) else list(classifier or []))}
    for key in sorted(heads & set(expected) & set(got)):
        if got[key] and expected[key] and expected[key][0] != got[key][0]:  # the class count, not the width
            raise InvalidConfigError(
                f"{where}: config.json has num_classes={num_classes!r} but {weights.name}'s head {key} has shape "
                f"{list(got[key])} ({got[key][0]} classes); the config does not describe these weights"
            )
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or extra or wrong:
        parts = []
        if wrong:
            parts.append("shape " + ", ".join(f"{k} {list(got[k])} vs config {list(expected[k])}" for k in wrong[:3]))
        if missing:
            parts.append(f"{len(missing)} tensors missing ({', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} unexpected tensors ({', '.join(extra[:3])})")
        raise InvalidConfigError(
            f"{where}: {weights.name} does not match the model config.json describes: {'; '.join(parts)}"
        )


_META: dict[str, torch.nn.Module] = {}  # the last few meta builds (no memory behind them)


def _meta_for(architecture: str, kwargs: Mapping[str, Any], where: str) -> torch.nn.Module:
    key = json.dumps([architecture, kwargs], sort_keys=True, default=str)
    model = _META.get(key)
    if model is None:
        model = _meta_build(architecture, kwargs, where)
        while len(_META) >= 4:
            _META.pop(next(iter(_META)))
        _META[key] = model
    return model


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


_SHAPES_OK: set[str] = set()


def check_model_size(
    architecture: str,
    config: Mapping[str, Any],
    model_args: Mapping[str, Any],
    *,
    where: str,
    max_params: Any = None,
    max_activations: Any = None,
) -> None:
    """Build the config's model on the meta device and refuse it above the size limits (before any download of its
    weights). Raises :class:`ModelTooLargeError`, saying how to raise the limit, or :class:`InvalidConfigError`."""
    check_num_classes(config, model_args, where)
    lim_p, lim_a = size_limits(max_params, max_activations)
    explicit = max_params is not None or max_activations is not None
    kwargs = _build_kwargs(config, model_args)
    key = _key(architecture, config, kwargs)
    done = _APPROVED.get(key)
    if done is not None:
        # checked before in this process; a limit the caller raised explicitly for it also covers the second check
        # that timm's builder hook (guard_pretrained) runs without arguments within the same create_model call
        if not done.explicit:
            _check_limits(architecture, done.params, done.activations, lim_p, lim_a, where)
        return
    model = _meta_for(architecture, kwargs, where)
    n = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
    if n > lim_p:  # before the activation estimate: a huge model is refused without more work
        _check_limits(architecture, n, 0, lim_p, lim_a, where)
    acts = _activation_estimate(model, config, kwargs)
    _check_limits(architecture, n, acts, lim_p, lim_a, where)
    _APPROVED[key] = _Checked(n, acts, explicit)


def check_shapes(
    architecture: str,
    config: Mapping[str, Any],
    model_args: Mapping[str, Any],
    *,
    where: str,
    header: Mapping[str, Any],
    weights: Path,
) -> None:
    """Every state-dict shape of the config's (meta) model must equal the safetensors ``header``'s (after the family's
    checkpoint filter when the names differ); a head whose class count differs from ``num_classes`` is named as such.
    """
    kwargs = _build_kwargs(config, model_args)
    key = _key(architecture, config, kwargs, header, str(weights))
    if key in _SHAPES_OK:
        return
    model = _meta_for(architecture, kwargs, where)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = _header_shapes(header)
    if set(got) != set(expected):
        got = _filtered_shapes(architecture, header, model) or got
    pcfg = config.get("pretrained_cfg", config)
    _compare(
        expected,
        got,
        classifier=(pcfg.get("classifier") if isinstance(pcfg, Mapping) else None)
        or getattr(model, "pretrained_cfg", {}).get("classifier"),
        num_classes=kwargs.get("num_classes"),
        weights=weights,
        where=where,
    )
    _SHAPES_OK.add(key)


def check_model_size_and_shapes(
    architecture: str,
    config: Mapping[str, Any],
    model_args: Mapping[str, Any],
    *,
    where: str,
    header: Mapping[str, Any] | None = None,
    weights: Path | None = None,
    max_params: Any = None,
    max_activations: Any = None,
) -> None:
    """:func:`check_model_size`, then :func:`check_shapes` when a header is given — before any real tensor exists."""
    check_model_size(
        architecture, config, model_args, where=where, max_params=max_params, max_activations=max_activations
    )
    if header is not None and weights is not None:
        check_shapes(architecture, config, model_args, where=where, header=header, weights=weights)


def _check_limits(architecture: str, n: int, acts: int, lim_p: int, lim_a: int, where: str) -> None:
    if n > lim_p:
        raise ModelTooLargeError(
            f"{where}: config.json describes {architecture} with {n:,} parameters+buffers ({n * 4 / 2**30:.1f} GiB in "
            f"float32), above the limit of {lim_p:,}; {_raise_hint(_ENV_PARAMS, 'max_params', n)}"
        )
    if acts > lim_a:
        raise ModelTooLargeError(
            f"{where}: config.json describes {architecture} with about {acts:,} activation elements per image at its "
            f"input size, above the limit of {lim_a:,}; {_raise_hint(_ENV_ACTS, 'max_activations', acts)}"
        )
