"""config.json for hub folders: timm's schema plus ``requires``, and the checks run before anything is built.

The schema is timm's (``timm.models.save_config_for_hf``): ``architecture``, ``num_classes``, ``num_features``,
``global_pool``, ``model_args``, ``pretrained_cfg``. mixerzoo adds ``requires`` (``{"mixers": {name: dist}}``), so a
loader can fail with an install hint before any tensor is read. timm ignores the extra key.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shlex
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CONFIG_NAME",
    "PICKLE_SUFFIXES",
    "WEIGHTS_NAME",
    "CorruptCheckpointError",
    "HubError",
    "InvalidConfigError",
    "MissingMixerError",
    "UnknownArchitectureError",
    "UnsafeCheckpointError",
    "build_config",
    "check_config",
    "check_requires",
    "read_config",
    "recorded_sha256",
    "validate_model_args",
]

_logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# mixerzoo's entry in config.json recording the sha256 of each weights file: {"model.safetensors": "<hex>"}
SHA256_KEY = "sha256"
README_NAME = "README.md"
# Weight files that are pickles: never read by mixerzoo.hub (torch.load happens only in `mixerzoo convert`).
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".pth.tar", ".tar", ".ckpt", ".pkl", ".pickle")
# Keys that would make timm read weights from somewhere other than the folder's model.safetensors.
_SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id", "source")


class HubError(RuntimeError):
    """Base class of the errors raised by :mod:`mixerzoo.hub`."""


class InvalidConfigError(HubError, ValueError):
    """A config.json that is not a timm/mixerzoo hub config, or has values mixerzoo refuses."""


class UnknownArchitectureError(HubError):
    """config.json names an architecture that is not registered in timm."""


class MissingMixerError(HubError, ImportError):
    """config.json requires a mixer plugin that is not installed (or failed to load)."""


class UnsafeCheckpointError(HubError):
    """The weights are only available as a pickle file; mixerzoo.hub never unpickles."""


class CorruptCheckpointError(HubError, OSError):
    """A safetensors file is truncated, malformed, or does not match its expected hash."""


# --------------------------------------------------------------------------------------------------- writing


def _mixerzoo_requires(model: nn.Module) -> dict[str, Any]:
    from mixerzoo.plugins import required_mixers

    mixers = required_mixers(model)
    in_process = sorted(n for n, d in mixers.items() if d == "__main__")
    if in_process:
        _logger.warning(
            "mixers %s were registered in-process with register_mixer(); the saved config cannot name a package "
            "that provides them, so loading it elsewhere will fail until they are registered there too",
            in_process,
        )
    return {"mixers": dict(mixers)} if mixers else {}


def build_config(model: nn.Module, model_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config.json dict of ``model``: timm's ``save_config_for_hf`` output plus ``requires``.

    ``model_args`` replaces recorded constructor arguments (timm semantics); every value must be JSON.
    """
    from timm.models._hub import save_config_for_hf

    pcfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(pcfg, Mapping) or not pcfg.get("architecture"):
        raise ValueError(
            f"model={type(model).__name__} has no pretrained_cfg['architecture']; build it with "
            "mixerzoo.create_model(...) or timm.create_model(...) so the hub config can name its architecture"
        )
    with tempfile.TemporaryDirectory(prefix="mixerzoo-cfg-") as tmp:
        path = Path(tmp) / CONFIG_NAME
        save_config_for_hf(model, str(path), model_args=dict(model_args) if model_args else None)
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    # num_classes lives in the top-level "num_classes" (and pretrained_cfg), from where timm passes it to the
    # constructor. A copy in model_args breaks Hugging Face transformers' TimmWrapper, which calls
    # timm.create_model(arch, num_classes=config.num_labels, **model_args) ("got multiple values for keyword argument
    # 'num_classes'"). Folders written before this still load: timm and mixerzoo accept it in model_args.
    args = config.get("model_args")
    if isinstance(args, dict):
        args.pop("num_classes", None)
    requires = _mixerzoo_requires(model)
    if requires:
        config["requires"] = requires
    _check_json(config, "config")
    return config


def _check_json(value: Any, where: str) -> None:
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where} is not plain JSON: {e}") from e
    if json.loads(text) != value:
        # tuples become lists; that is fine. Anything else that does not round-trip is not.
        def norm(v: Any) -> Any:
            if isinstance(v, (list, tuple)):
                return [norm(x) for x in v]
            if isinstance(v, dict):
                return {k: norm(x) for k, x in v.items()}
            return v

        if json.loads(text) != norm(value):
            raise ValueError(f"{where} does not round-trip through JSON")


# --------------------------------------------------------------------------------------------------- reading


def read_config(path: str | os.PathLike[str], *, source: str | None = None) -> dict[str, Any]:
    """Parse a config.json; raises :class:`InvalidConfigError` naming the file when it is not a JSON object."""
    path = Path(path)
    where = source or str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidConfigError(f"{where}: config.json ({path}) is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise InvalidConfigError(f"{where}: config.json ({path}) must hold a JSON object, got {type(data).__name__}")
    return data


def _split_config(config: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(architecture, model_args, pretrained_cfg) of a new-style or legacy flat config."""
    arch = config.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise InvalidConfigError(
            f"{where}: config.json has no 'architecture' (got {arch!r}); it is not a timm/mixerzoo model config"
        )
    model_args = config.get("model_args", {}) or {}
    if not isinstance(model_args, dict):
        raise InvalidConfigError(f"{where}: 'model_args' must be a JSON object, got {type(model_args).__name__}")
    pcfg = config.get("pretrained_cfg", config)
    if not isinstance(pcfg, dict):
        raise InvalidConfigError(f"{where}: 'pretrained_cfg' must be a JSON object, got {type(pcfg).__name__}")
    return arch, dict(model_args), dict(pcfg)


def check_requires(config: Mapping[str, Any], *, source: str = "config.json") -> None:
    """Raise :class:`MissingMixerError` (with a ``pip install`` hint) for every required mixer not available here."""
    requires = config.get("requires", {}) or {}
    if not isinstance(requires, dict):
        raise InvalidConfigError(f"{source}: 'requires' must be a JSON object, got {type(requires).__name__}")
    mixers = requires.get("mixers", {}) or {}
    if not isinstance(mixers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mixers.items()):
        raise InvalidConfigError(f"{source}: 'requires.mixers' must map mixer names to distributions, got {mixers!r}")
    for name, dist in mixers.items():
        if not _MIXER_NAME.match(name):
            raise InvalidConfigError(
                f"{source}: requires.mixers has key {name!r}, not a mixer name (letters, digits, '_', '.', '-'); "
                "refusing the config"
            )
        _requirement(dist, f"{source}: requires.mixers[{name!r}]")
    if not mixers:
        return
    from mixerzoo.plugins import MixerLoadError, UnknownMixerError, mixer_spec

    missing: list[str] = []
    broken: list[str] = []
    for name, dist in sorted(mixers.items()):
        try:
            mixer_spec(name)
        except UnknownMixerError:
            missing.append(_install_hint(name, dist))
        except MixerLoadError as e:
            broken.append(f"  - mixer {name!r} from {dist!r} is installed but failed to load: {e}")
    if missing or broken:
        lines = [f"{source} needs mixer plugins that are not available in this environment:", *missing, *broken]
        raise MissingMixerError("\n".join(lines))


# A mixer name as the registry spells it: bare ("window") or qualified by its distribution ("acme_mixers.window").
_MIXER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")
# PEP 508 distribution name (https://peps.python.org/pep-0508/#names).
_DIST_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)


def _requirement(dist: str, where: str) -> str:
    """``dist`` as a PEP 508 requirement string safe to show in a ``pip install`` hint, or :class:`InvalidConfigError`.

    Accepted: a distribution name with optional extras, version specifiers and environment markers
    (``acme-mixers``, ``acme-mixers[cuda]>=0.3``). Refused: anything that does not parse, direct URL references
    (``name @ https://...``, which would make pip fetch code from wherever the config says) and control characters.
    ``IN_PROCESS`` (``__main__``) is mixerzoo's own label and passes unchanged.
    """
    from packaging.requirements import InvalidRequirement, Requirement

    if dist == "__main__":
        return dist
    bad = f"{where}={dist!r} is not a PEP 508 distribution name or requirement (e.g. 'acme-mixers>=0.3'); refusing it"
    if len(dist) > 200 or not dist.isprintable() or dist != dist.strip():
        raise InvalidConfigError(bad)
    try:
        req = Requirement(dist)
    except InvalidRequirement as e:
        raise InvalidConfigError(bad) from e
    if req.url is not None or not _DIST_NAME.match(req.name):
        raise InvalidConfigError(bad)
    return str(req)


def _install_hint(name: str, dist: str) -> str:
    if dist == "mixerzoo":
        return f"  - mixer {name!r} is a mixerzoo built-in missing from this version: pip install -U mixerzoo"
    if dist == "__main__":
        return (
            f"  - mixer {name!r} was registered in-process (register_mixer) when the model was saved; "
            "register the same class before loading"
        )
    req = _requirement(dist, f"requires.mixers[{name!r}]")  # validated again: the hint is shell text
    return f"  - mixer {name!r} is provided by {req!r}: pip install {shlex.quote(req)}"


def _ensure_registered() -> None:
    # Registering mixerzoo's architectures is a side effect of importing the package.
    import mixerzoo  # noqa: F401


def check_architecture(config: Mapping[str, Any], *, source: str = "config.json") -> str:
    """Return the config's architecture, raising :class:`UnknownArchitectureError` if timm does not know it."""
    import timm

    arch, _, _ = _split_config(config, source)
    _ensure_registered()
    if not timm.is_model(arch):
        if arch.startswith("mz_"):
            hint = "it is a mixerzoo architecture missing from this version of mixerzoo: pip install -U mixerzoo"
        else:
            hint = "install and import the package that registers it before loading"
        raise UnknownArchitectureError(f"{source}: config.json names architecture {arch!r}, unknown to timm; {hint}")
    return arch


def _constructor_of(architecture: str) -> type[nn.Module]:
    """The model class an architecture builds: one bare build on the meta device (no hub argument reaches it)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(architecture, pretrained=False)
    return type(model)


def validate_model_args(
    architecture: str, model_args: Mapping[str, Any], *, source: str = "config.json"
) -> dict[str, Any]:
    """Check ``model_args`` against ``architecture``'s constructor before anything real is built.

    Keys must be JSON-typed and named parameters of the model class; unknown keys raise
    :class:`InvalidConfigError`. For constructors taking ``**kwargs`` the arguments are tried in a build on the meta
    device (no memory, no weights), and a ``TypeError`` is reported the same way.
    """
    _check_json(dict(model_args), f"{source}: model_args")
    cls = _constructor_of(architecture)
    sig = inspect.signature(cls.__init__)
    params = dict(list(sig.parameters.items())[1:])
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = sorted(k for k in model_args if k not in named)
    if unknown and not var_kw:
        raise InvalidConfigError(
            f"{source}: model_args has keys {unknown} that {cls.__name__} ({architecture}) does not accept; "
            f"accepted: {sorted(named)}"
        )
    if unknown:
        import timm

        try:
            with torch.device("meta"):
                timm.create_model(architecture, pretrained=False, **dict(model_args))
        except TypeError as e:
            raise InvalidConfigError(f"{source}: model_args rejected by {cls.__name__} ({architecture}): {e}") from e
    return dict(model_args)


def recorded_sha256(config: Mapping[str, Any], filename: str, *, source: str = "config.json") -> str | None:
    """The sha256 that config.json records for ``filename`` (written by save_pretrained), or None for older folders."""
    table = config.get(SHA256_KEY)
    if table is None:
        return None
    if not isinstance(table, dict):
        raise InvalidConfigError(f"{source}: {SHA256_KEY!r} must map file names to sha256 hex digests, got {table!r}")
    digest = table.get(filename)
    if digest is None:
        return None
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        raise InvalidConfigError(f"{source}: {SHA256_KEY}[{filename!r}]={digest!r} is not a sha256 hex digest")
    return digest.lower()


def _check_pretrained_cfg(pcfg: Mapping[str, Any], where: str) -> None:
    fname = pcfg.get("hf_hub_filename")
    if fname is not None and not (isinstance(fname, str) and fname.endswith(".safetensors")):
        raise UnsafeCheckpointError(
            f"{where}: pretrained_cfg.hf_hub_filename={fname!r} is not a .safetensors file; "
            "mixerzoo loads safetensors only"
        )
    if pcfg.get("custom_load"):
        raise InvalidConfigError(
            f"{where}: pretrained_cfg.custom_load={pcfg.get('custom_load')!r} would run model-specific loading code "
            "on hub files; mixerzoo refuses it"
        )


def check_config(
    config: Mapping[str, Any], *, source: str = "config.json", overrides: Mapping[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """All load-time checks, cheapest first: schema, ``requires``, architecture, pretrained_cfg, model_args.

    Returns ``(architecture, model_args)``. ``overrides`` (the caller's own kwargs) take precedence over the stored
    model_args and are not validated here (the constructor raises on them itself).
    """
    arch, model_args, pcfg = _split_config(config, source)
    check_requires(config, source=source)
    check_architecture(config, source=source)
    _check_pretrained_cfg(pcfg, source)
    stored = {k: v for k, v in model_args.items() if not (overrides and k in overrides)}
    validate_model_args(arch, stored, source=source)
    return arch, model_args
