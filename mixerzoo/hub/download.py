"""Downloading and checking checkpoints before timm builds anything.

Everything goes through huggingface_hub's cache (``hf_hub_download``: resume, file locks, ``HF_HUB_OFFLINE``), with
``library_name="mixerzoo"``. On top of huggingface_hub's size check, every ``model.safetensors`` is verified here:
its header must describe exactly the bytes on disk, and a cached blob whose name is a sha256 (Hub LFS files) or a
git blob sha1 must hash to that name. Pickle weight files are never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixerzoo.hub import _io, _safety
from mixerzoo.hub._config import (
    CONFIG_NAME,
    PICKLE_SUFFIXES,
    WEIGHTS_NAME,
    CorruptCheckpointError,
    HubError,
    UnsafeCheckpointError,
    check_config,
    read_config,
    recorded_sha256,
)

__all__ = [
    "Preflight",
    "guard_pretrained",
    "hub_download",
    "parse_model_source",
    "preflight",
    "prepare_kwargs",
    "resolve_pretrained_file",
    "url_download",
    "verify_safetensors",
]

_logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_DTYPE_SIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


def parse_model_source(model_name: str) -> tuple[str | None, str]:
    """``("hf-hub", "org/repo@rev")``, ``("local-dir", "/path")`` or ``(None, name)`` (timm's prefixes)."""
    if not isinstance(model_name, str):
        raise TypeError(f"model_name={model_name!r} must be a str")
    for prefix, source in (("hf-hub:", "hf-hub"), ("hf_hub:", "hf-hub"), ("local-dir:", "local-dir")):
        if model_name.startswith(prefix):
            return source, model_name[len(prefix) :]
    return None, model_name


def _split_revision(hub_id: str) -> tuple[str, str | None]:
    parts = hub_id.split("@")
    if len(parts) > 2 or not parts[0] or parts[0].count("/") != 1:
        raise ValueError(f"hf-hub id {hub_id!r} must look like 'org/name' or 'org/name@revision'")
    return parts[0], (parts[1] or None) if len(parts) == 2 else None


def _library_version() -> str:
    from mixerzoo.hub.publish import library_version

    return library_version()


def hub_download(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """``hf_hub_download`` with mixerzoo's library name/version; returns the cached file's path."""
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(
        repo_id,
        filename,
        revision=revision,
        cache_dir=cache_dir,
        force_download=force_download,
        local_files_only=local_files_only,
        token=token,
        library_name="mixerzoo",
        library_version=_library_version(),
    )
    return Path(path)


def _file_digest(path: Path, algo: str) -> str:
    size = path.stat().st_size
    h = hashlib.new(algo)
    if algo == "sha1":  # git blob id
        h.update(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def expected_blob_hash(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """``(algo, hexdigest)`` a huggingface_hub cache file must match, read from its blob name (ETag), if any."""
    real = Path(os.path.realpath(path))
    if real.parent.name != "blobs":
        return None
    if _SHA256.match(real.name):
        return "sha256", real.name
    if _SHA1.match(real.name):
        return "sha1", real.name
    return None


def verify_safetensors(
    path: str | os.PathLike[str],
    *,
    expected: tuple[str, str] | None = None,
    what: str | None = None,
    redownload_hint: str | None = None,
) -> dict[str, Any]:
    """Check that ``path`` is a complete safetensors file; return its header.

    The header must parse and its tensors must tile the data section exactly (a truncated or padded file fails).
    With ``expected=(algo, hex)`` the file must also hash to it ('sha256', or 'sha1' = git blob id).
    Raises :class:`CorruptCheckpointError` naming the file and how to re-download it.
    """
    path = Path(path)
    where = what or str(path)
    hint = redownload_hint or "re-create or re-download it"

    real = Path(os.path.realpath(path))
    shown = f"{path} (cache blob {real})" if real != path.absolute() else str(path)

    def fail(reason: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{where}: {shown} is corrupted ({reason}); {hint}")

    try:
        st_mode = path.stat().st_mode
        if not stat.S_ISREG(st_mode):  # a FIFO would block open(); a directory cannot be read
            from mixerzoo.hub._safety import _kind

            raise fail(f"it is {_kind(st_mode)}, not a safetensors file")
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise fail(f"{size} bytes, too short for a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise fail(f"header length {n} does not fit in the file's {size} bytes (truncated?)")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        if isinstance(e, CorruptCheckpointError):
            raise
        raise fail(f"unreadable header: {e}") from e
    if not isinstance(header, dict):
        raise fail("header is not a JSON object")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            shape = [int(s) for s in info["shape"]]
            dtype = str(info["dtype"])
        except (KeyError, TypeError, ValueError) as e:
            raise fail(f"bad header entry for {name!r}: {e!r}") from e
        numel = 1
        for s in shape:
            numel *= s
        if dtype in _DTYPE_SIZE and end - begin != numel * _DTYPE_SIZE[dtype]:
            raise fail(f"tensor {name!r} spans {end - begin} bytes, expected {numel * _DTYPE_SIZE[dtype]}")
        spans.append((begin, end))
    spans.sort()
    pos = 0
    for begin, end in spans:
        if begin != pos or end < begin:
            raise fail(f"tensor data offsets are not contiguous at byte {pos}")
        pos = end
    if 8 + n + pos != size:
        raise fail(f"header describes {8 + n + pos} bytes but the file has {size} (truncated or padded)")
    if expected is not None:
        st = real.stat()
        key = (str(real), st.st_size, st.st_mtime_ns, expected)
        if key not in _HASHED:  # hash each cached file once per process
            algo, want = expected
            got = _file_digest(path, algo)
            if got != want:
                raise fail(f"{algo} {got} does not match the expected {want}")
            _HASHED.add(key)
    return header


_HASHED: set[tuple[str, int, int, tuple[str, str]]] = set()


def _hub_redownload_hint(repo_id: str, revision: str | None, filename: str, model_name: str | None = None) -> str:
    rev = f", revision={revision!r}" if revision else ""
    name = model_name or f"hf-hub:{repo_id}" + (f"@{revision}" if revision else "")
    return (
        f"delete it and download again with force_download=True: "
        f"mixerzoo.create_model({name!r}, pretrained=True, force_download=True) or "
        f"huggingface_hub.hf_hub_download({repo_id!r}, {filename!r}{rev}, force_download=True)"
    )


@dataclass(frozen=True)
class Preflight:
    """What :func:`preflight` checked: where the model comes from, its config, and the verified weights file."""

    source: str  # "hf-hub" | "local-dir" | "registry"
    location: str  # repo id, folder, or registry name
    revision: str | None
    architecture: str
    config: dict[str, Any] = field(repr=False)
    config_path: Path | None
    weights_path: Path | None
    commit: str | None = None  # the commit the hub files were resolved to (pin it with hf-hub:<repo>@<commit>)


def _pickles_in_repo(repo_id: str, revision: str | None, token: str | bool | None) -> list[str]:
    from huggingface_hub import HfApi

    try:
        files = HfApi(token=token, library_name="mixerzoo").list_repo_files(repo_id, revision=revision)
    except Exception as e:  # listing is only for the error message
        _logger.debug("could not list %s: %r", repo_id, e)
        return []
    return sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))


def _preflight_hub(
    hub_id: str,
    *,
    pretrained: bool,
    cache_dir: str | os.PathLike[str] | None,
    force_download: bool,
    token: str | bool | None,
    overrides: Mapping[str, Any],
    limits: Mapping[str, Any],
) -> Preflight:
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    repo_id, revision = _split_revision(hub_id)
    source = f"hf-hub:{hub_id}"
    try:
        cfg_path = hub_download(
            repo_id, CONFIG_NAME, revision=revision, cache_dir=cache_dir, force_download=force_download, token=token
        )
    except RemoteEntryNotFoundError as e:
        raise HubError(f"{source} has no {CONFIG_NAME}; it is not a timm/mixerzoo model repo") from e
    config = read_config(cfg_path, source=source)
    arch, model_args = check_config(config, source=source, overrides=overrides)
    _safety.check_model_size(arch, config, model_args, where=source, **limits)  # before downloading the weights
    weights = None
    if pretrained:
        pcfg = config.get("pretrained_cfg", config)
        filename = pcfg.get("hf_hub_filename") or WEIGHTS_NAME
        try:
            weights = hub_download(
                repo_id, filename, revision=revision, cache_dir=cache_dir, force_download=force_download, token=token
            )
        except RemoteEntryNotFoundError as e:
            pickles = _pickles_in_repo(repo_id, revision, token)
            found = f" it only has pickle weights {pickles}, and" if pickles else ""
            raise UnsafeCheckpointError(
                f"{source} has no {filename};{found} mixerzoo never unpickles files from a hub repo. If you trust the "
                "publisher, download the checkpoint yourself and run `mixerzoo convert ARCH CHECKPOINT OUTDIR`, "
                "then load the converted folder"
            ) from e
        except LocalEntryNotFoundError as e:
            raise HubError(
                f"{source}: {filename} is not in the local cache and downloads are disabled (HF_HUB_OFFLINE=1 or "
                f"local_files_only); go online once to cache it"
            ) from e
        hint = _hub_redownload_hint(repo_id, revision, filename)
        blob = expected_blob_hash(weights)
        header = verify_safetensors(weights, expected=blob, what=source, redownload_hint=hint)
        recorded = recorded_sha256(config, filename, source=source)
        if recorded is not None:
            if blob is not None and blob[0] == "sha256":
                if blob[1] != recorded:
                    raise CorruptCheckpointError(
                        f"{source}: {filename} has sha256 {blob[1]} but config.json records {recorded}; the repo's "
                        "weights are not the ones its config was written for"
                    )
            else:
                _io.verify_sha256(weights, recorded, what=source, hint=hint)
        _safety.check_shapes(arch, config, model_args, where=source, header=header, weights=weights)
    commit = cfg_path.parent.name if cfg_path.parent.parent.name == "snapshots" else None
    return Preflight("hf-hub", repo_id, revision, arch, config, cfg_path, weights, commit)


def _preflight_dir(
    folder: str, *, pretrained: bool, overrides: Mapping[str, Any], limits: Mapping[str, Any]
) -> Preflight:
    path = Path(folder)
    source = f"local-dir:{folder}"
    if not path.is_dir():
        raise NotADirectoryError(f"{source}: {folder!r} is not a directory")
    cfg_path = path / CONFIG_NAME
    # file kinds from lstat/stat only: a FIFO is named, never opened; symlinks must stay inside the folder
    if not _safety.check_file_kind(cfg_path, path, source):
        raise FileNotFoundError(f"{source}: {cfg_path} does not exist; write the folder with save_pretrained")
    config = read_config(cfg_path, source=source)
    arch, model_args = check_config(config, source=source, overrides=overrides)
    _safety.check_model_size(arch, config, model_args, where=source, **limits)
    weights = None
    if pretrained:
        weights = path / WEIGHTS_NAME
        if not _safety.check_file_kind(weights, path, source):
            pickles = sorted(p.name for p in path.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
            found = f" it only has pickle weights {pickles}, and" if pickles else ""
            raise UnsafeCheckpointError(
                f"{source} has no {WEIGHTS_NAME};{found} mixerzoo loads safetensors only. Convert a trusted pickle "
                "checkpoint with `mixerzoo convert ARCH CHECKPOINT OUTDIR`"
            )
        hint = "write the folder again with save_pretrained"
        header = verify_safetensors(weights, what=source, redownload_hint=hint)
        recorded = recorded_sha256(config, WEIGHTS_NAME, source=source)
        if recorded is not None:
            _io.verify_sha256(weights, recorded, what=source, hint=hint)
        _safety.check_shapes(arch, config, model_args, where=source, header=header, weights=weights)
    return Preflight("local-dir", str(path), None, arch, config, cfg_path, weights)


def guard_pretrained(pretrained_cfg: Any, *, pretrained: bool) -> None:
    """:func:`preflight` for a model that ``timm.create_model("hf-hub:...")`` / ``("local-dir:...")`` is building.

    Meant for a family builder (it receives timm's resolved ``pretrained_cfg``): it makes plain ``timm.create_model``
    calls on hub names as safe as ``mixerzoo.create_model`` (``requires`` and ``model_args`` checked before the
    build, safetensors verified, pickles refused). Registry cfgs and tag strings are left alone.
    """
    if pretrained_cfg is None or isinstance(pretrained_cfg, str):
        return
    cfg = pretrained_cfg.to_dict() if hasattr(pretrained_cfg, "to_dict") else dict(pretrained_cfg)
    source = cfg.get("source")
    if source == "hf-hub" and cfg.get("hf_hub_id"):
        preflight(f"hf-hub:{cfg['hf_hub_id']}", pretrained=pretrained)
    elif source == "local-dir" and cfg.get("file"):
        preflight(f"local-dir:{cfg['file']}", pretrained=pretrained)


def preflight(
    model_name: str,
    *,
    pretrained: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    max_params: float | None = None,
    max_activations: float | None = None,
    **kwargs: Any,
) -> Preflight | None:
    """Check an ``hf-hub:`` / ``local-dir:`` model before ``timm.create_model`` builds it.

    Fetches ``config.json`` (into the huggingface_hub cache for hub names) and checks, in order: ``requires``
    (missing mixer plugins → :class:`MissingMixerError` with a ``pip install`` hint), the architecture
    (:class:`UnknownArchitectureError`), ``pretrained_cfg`` (no custom loaders, no non-safetensors filename) and
    ``model_args`` against the architecture's constructor (unknown keys → :class:`InvalidConfigError`). With
    ``pretrained=True`` it also fetches ``model.safetensors`` (never a pickle: :class:`UnsafeCheckpointError`) and
    verifies it (:class:`CorruptCheckpointError` names the file and how to re-download). timm then loads the same
    cached files. ``kwargs`` are the caller's model kwargs; stored model_args they override are not checked.

    Then the config's model is built on the meta device (no memory): above ``max_params`` parameters+buffers or
    ``max_activations`` activation elements per image (defaults: ``MIXERZOO_MAX_PARAMS`` /
    ``MIXERZOO_MAX_ACTIVATIONS``, else 1e9 / 1e9) it is refused with :class:`mixerzoo.hub.ModelTooLargeError`, and
    every state-dict shape must equal the safetensors header's (a ``num_classes`` that disagrees with the head
    weights is an :class:`InvalidConfigError`). A ``sha256`` recorded in config.json is verified.

    Returns ``None`` for registry names (nothing to check), else a :class:`Preflight`.
    ``force_download``, ``token``, ``max_params`` and ``max_activations`` are consumed here; do not pass them on
    to timm.
    """
    source, ident = parse_model_source(model_name)
    limits = {"max_params": max_params, "max_activations": max_activations}
    if source is not None:
        _safety.size_limits(max_params, max_activations)  # bad limit values fail before any download
    if source == "hf-hub":
        return _preflight_hub(
            ident,
            pretrained=pretrained,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            overrides=kwargs,
            limits=limits,
        )
    if source == "local-dir":
        return _preflight_dir(ident, pretrained=pretrained, overrides=kwargs, limits=limits)
    return None


# --------------------------------------------------------------------------------------------- registry names


def url_download(
    url: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    force_download: bool = False,
) -> Path:
    """Download an official release ``url`` into ``<HF_HOME>/mixerzoo/url-cache`` (or ``cache_dir``).

    Uses huggingface_hub's ``http_get`` (retries resume with ``Range``); a partial ``.incomplete`` file is kept
    and resumed by the next call, a file lock serialises processes, ``HF_HUB_OFFLINE=1`` only reads the cache.
    If the file name carries a hash prefix (torch.hub's ``name-<sha256 prefix>.ext``) the file must match it.
    """
    import urllib.parse

    from huggingface_hub import constants
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import WeakFileLock

    root = Path(cache_dir) if cache_dir else Path(constants.HF_HOME) / "mixerzoo" / "url-cache"
    fname = Path(urllib.parse.urlsplit(url).path).name or "download"
    dest = root / hashlib.sha256(url.encode()).hexdigest()[:16] / fname
    if dest.is_file() and not force_download:
        return dest
    if constants.HF_HUB_OFFLINE:
        raise HubError(f"{url} is not in the cache ({dest}) and HF_HUB_OFFLINE=1; go online once to download it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(dest.parent / f"{fname}.lock"):
        if dest.is_file() and not force_download:
            return dest
        part = dest.with_name(f"{fname}.incomplete")
        if force_download:
            part.unlink(missing_ok=True)
        resume = part.stat().st_size if part.exists() else 0
        headers = {"user-agent": f"mixerzoo/{_library_version()}"}
        with open(part, "ab") as f:
            http_get(url, f, resume_size=resume, headers=headers, displayed_filename=fname)
        m = re.search(r"-([a-f0-9]{8,64})\.", fname)
        if m:
            got = _file_digest(part, "sha256")
            if not got.startswith(m.group(1)):
                part.unlink(missing_ok=True)
                raise CorruptCheckpointError(f"{url}: sha256 {got} does not start with {m.group(1)}; download again")
        os.replace(part, dest)
    return dest


def _pickle_to_safetensors(path: Path) -> Path:
    """A safetensors copy (unwrapped state dict, no filtering) of a downloaded official pickle, made once."""
    import safetensors.torch

    from mixerzoo.hub import _io
    from mixerzoo.hub.convert import read_official_checkpoint

    out = path.with_name(path.name + ".safetensors")
    if out.is_file():
        return out
    sd = {k: v.contiguous() for k, v in read_official_checkpoint(path).items()}
    _io.write_with(out, lambda p: safetensors.torch.save_file(sd, str(p), metadata={"format": "pt"}))
    return out


def _timm_name(model_name: str) -> str:
    import mixerzoo
    from mixerzoo.zoo import PREFIX, split_name

    try:
        mixerzoo.zoo.get_entry(model_name)
    except mixerzoo.UnknownModelError:
        return model_name
    arch, tag = split_name(model_name)
    return PREFIX + arch + (f".{tag}" if tag else "")


def resolve_pretrained_file(
    model_name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
) -> Path:
    """The verified local safetensors file of a registry model's pretrained weights.

    ``hf_hub_id`` cfgs: ``model.safetensors`` (or ``hf_hub_filename``, which must be safetensors) through the
    huggingface_hub cache, verified. ``url`` cfgs (official releases): downloaded by :func:`url_download`; a pickle
    release is read once with ``torch.load(weights_only=True)`` (in :mod:`mixerzoo.hub.convert`) and cached as
    safetensors. The family checkpoint filter is applied by timm when the weights are loaded.
    """
    from huggingface_hub.errors import RemoteEntryNotFoundError
    from timm.models import get_pretrained_cfg

    name = _timm_name(model_name)
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise HubError(f"model_name={model_name!r} has no pretrained cfg; use pretrained=False")
    if cfg.hf_hub_id:
        repo_id, revision = _split_revision(cfg.hf_hub_id)
        filename = cfg.hf_hub_filename or WEIGHTS_NAME
        if not filename.endswith(".safetensors"):
            raise UnsafeCheckpointError(f"{name}: hf_hub_filename={filename!r} is not safetensors; refusing")
        try:
            path = hub_download(
                repo_id, filename, revision=revision, cache_dir=cache_dir, force_download=force_download, token=token
            )
        except RemoteEntryNotFoundError as e:
            raise UnsafeCheckpointError(
                f"{name}: hf-hub:{cfg.hf_hub_id} has no {filename}; mixerzoo loads safetensors only"
            ) from e
        verify_safetensors(
            path,
            expected=expected_blob_hash(path),
            what=f"{name} (hf-hub:{cfg.hf_hub_id})",
            redownload_hint=_hub_redownload_hint(repo_id, revision, filename, model_name),
        )
        return path
    if cfg.url:
        path = url_download(cfg.url, cache_dir=cache_dir, force_download=force_download)
        if not path.name.endswith(".safetensors"):
            path = _pickle_to_safetensors(path)
        verify_safetensors(
            path, what=f"{name} ({cfg.url})", redownload_hint=f"re-download with force_download=True ({path})"
        )
        return path
    raise HubError(f"model_name={model_name!r} ({name}) has no pretrained weights (no hf_hub_id or url)")


def prepare_kwargs(model_name: str, *, pretrained: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Everything mixerzoo does before ``timm.create_model(model_name, pretrained=pretrained, **returned)``.

    Consumes ``force_download``, ``token``, ``max_params`` and ``max_activations`` (size limits for models described
    by a hub config.json; see :func:`preflight`). For ``hf-hub:``/``local-dir:`` names runs :func:`preflight`. For
    registry names with ``pretrained=True`` fetches and verifies the weights (:func:`resolve_pretrained_file`) and
    points timm at the local safetensors file through ``pretrained_cfg_overlay={"file": ...}``, so timm's head/stem
    adaptation and the family's checkpoint filter still apply.
    """
    force_download = bool(kwargs.pop("force_download", False))
    token = kwargs.pop("token", None)
    limits = {"max_params": kwargs.pop("max_params", None), "max_activations": kwargs.pop("max_activations", None)}
    cache_dir = kwargs.get("cache_dir")
    source, _ = parse_model_source(model_name)
    if source is not None:
        rest = {k: v for k, v in kwargs.items() if k != "cache_dir"}
        preflight(
            model_name,
            pretrained=pretrained,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            **limits,
            **rest,
        )
        return kwargs
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    if pretrained and not kwargs.get("pretrained_cfg") and not (overlay.get("file") or overlay.get("state_dict")):
        path = resolve_pretrained_file(model_name, cache_dir=cache_dir, force_download=force_download, token=token)
        overlay["file"] = str(path)
        kwargs["pretrained_cfg_overlay"] = overlay
    return kwargs
