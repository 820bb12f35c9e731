"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON, written atomically.

A checkpoint ``step_000123`` is two files in ``<output>/checkpoints/``:

* ``step_000123.safetensors`` — ``model.*``, ``optim.<param>.<key>``, ``ema.*``, ``rng.torch`` (+ ``rng.cuda``);
* ``step_000123.json`` — step/epoch counters, optimizer param groups, scheduler state, numpy/python RNG
  state, metrics history, the recipe.

Each file is written to a temporary name, fsync'ed and renamed; then ``latest.json`` (the commit point) is
atomically replaced to name the new checkpoint. A run killed at any moment leaves either the previous or the
new checkpoint as ``latest``, never a torn one. The JSON records the sha256 of the tensor file; loading
verifies it, and a damaged latest checkpoint (or a malformed ``latest.json``) falls back to the newest intact
one, with a warning naming the damaged file. Nothing here is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .recipe import RecipeError

__all__ = ["CheckpointCorrupt", "atomic_write", "checkpoint_names", "latest_checkpoint", "load_checkpoint",
           "save_checkpoint", "set_aside_newer", "state_to_tensors"]

FORMAT_VERSION = 1
_NAME = re.compile(r"^step_\d+$")
_log = logging.getLogger(__name__)


class CheckpointCorrupt(RecipeError):
    """A checkpoint file that is missing, truncated, malformed or fails its sha256."""


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`mixerzoo.hub._io.atomic_write_bytes`: a unique temp file in
    the same directory, fsync, rename, fsync the directory). On failure (a full disk) the temp file is removed
    and ``path`` keeps its previous content; the OSError names ``path`` (a failed ``write`` names no file)."""
    from mixerzoo.hub import _io

    try:
        _io.atomic_write_bytes(path, data)
    except OSError as e:
        if e.filename is not None and Path(e.filename).name.startswith(Path(path).name):
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def _jsonable(obj: Any, where: str) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, where) for v in obj]
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    raise TypeError(f"checkpoint: cannot store {where} of type {type(obj).__name__} in JSON")


def state_to_tensors(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, ema: torch.nn.Module | None, *,
    model_state: dict[str, torch.Tensor] | None = None, optim_state: dict[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split model/optimizer/EMA state into (tensors, JSON-able meta); ``model_state`` / ``optim_state`` replace
    the modules' own state dicts (the full state of an FSDP-sharded model, :func:`mixerzoo.train.fsdp.full_state`)."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in (model_state if model_state is not None else model.state_dict()).items():
        tensors[f"model.{k}"] = v.detach()
    meta: dict[str, Any] = {}
    if optimizer is not None:
        sd = optim_state if optim_state is not None else optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, pstate in sd["state"].items():
            for key, val in pstate.items():
                if isinstance(val, torch.Tensor):
                    tensors[f"optim.{pid}.{key}"] = val.detach()
                else:
                    scalars.setdefault(str(pid), {})[key] = _jsonable(val, f"optimizer.state.{pid}.{key}")
        meta["optimizer"] = {"param_groups": _jsonable(sd["param_groups"], "optimizer.param_groups"),
                             "scalars": scalars}
    if ema is not None:
        for k, v in ema.state_dict().items():
            tensors[f"ema.{k}"] = v.detach()
    return tensors, meta


def save_checkpoint(
    ckpt_dir: str | Path,
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    ema: torch.nn.Module | None = None,
    state: dict[str, Any] | None = None,
    keep: int = 2,
    model_state: dict[str, torch.Tensor] | None = None,
    optim_state: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``step_<step>`` atomically and make it ``latest``; keep the newest ``keep``
    (``model_state`` / ``optim_state``: see :func:`state_to_tensors`)."""
    ckpt_dir = Path(ckpt_dir)
    name = f"step_{step:07d}"
    tensors, meta = state_to_tensors(model, optimizer, ema, model_state=model_state, optim_state=optim_state)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    # clone + contiguous + cpu: safetensors refuses shared or non-contiguous storage
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta.update(
        format_version=FORMAT_VERSION,
        step=step,
        scheduler=_jsonable(_scheduler_state(scheduler), "scheduler") if scheduler is not None else None,
        rng={
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py_state[0], list(py_state[1]), py_state[2]],
        },
        state=_jsonable(state or {}, "state"),
        has_ema=ema is not None,
    )
    blob = st_save(tensors, metadata={"format": "mixerzoo-train"})
    meta["sha256"] = hashlib.sha256(blob).hexdigest()
    atomic_write(ckpt_dir / f"{name}.safetensors", blob)
    atomic_write(ckpt_dir / f"{name}.json", json.dumps(meta).encode())
    atomic_write(ckpt_dir / "latest.json", json.dumps({"name": name, "step": step}).encode())
    _prune(ckpt_dir, keep, current=name)
    return ckpt_dir / f"{name}.safetensors"


def _scheduler_state(scheduler: Any) -> dict[str, Any]:
    sd = scheduler.state_dict()
    return {k: v for k, v in sd.items() if k not in ("optimizer",)}


def _prune(ckpt_dir: Path, keep: int, current: str) -> None:
    names = sorted({p.stem for p in ckpt_dir.glob("step_*.json")}
                   | {p.stem for p in ckpt_dir.glob("step_*.safetensors")})
    for old in names[: max(0, len(names) - keep)]:
        if old == current:
            continue
        for suffix in (".safetensors", ".json"):
            (ckpt_dir / f"{old}{suffix}").unlink(missing_ok=True)


def latest_checkpoint(ckpt_dir: str | Path) -> str | None:
    """Name of the committed latest checkpoint in ``ckpt_dir`` or None (CheckpointCorrupt if latest.json is
    malformed)."""
    p = Path(ckpt_dir) / "latest.json"
    if not p.is_file():
        return None
    try:
        name = json.loads(p.read_text())["name"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointCorrupt(f"resume: {str(p)!r} is malformed") from None
    if not isinstance(name, str) or not _NAME.match(name):
        raise CheckpointCorrupt(f"resume: {str(p)!r} names {name!r}, not a checkpoint")
    return name


def checkpoint_names(ckpt_dir: str | Path) -> list[str]:
    """Names of the checkpoints in ``ckpt_dir`` (``step_*`` with a .json or .safetensors), newest first."""
    ckpt_dir = Path(ckpt_dir)
    names = {p.stem for p in ckpt_dir.glob("step_*.json")} | {p.stem for p in ckpt_dir.glob("step_*.safetensors")}
    return sorted((n for n in names if _NAME.match(n)), key=lambda n: int(n[5:]), reverse=True)


def _read(ckpt_dir: Path, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify one checkpoint; CheckpointCorrupt naming the file if it cannot be trusted."""
    meta_path, st_path = ckpt_dir / f"{name}.json", ckpt_dir / f"{name}.safetensors"
    for path in (meta_path, st_path):
        if not path.is_file():
            raise CheckpointCorrupt(f"{str(path)!r} is missing")
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError
    except (OSError, ValueError):
        raise CheckpointCorrupt(f"{str(meta_path)!r} is not valid checkpoint JSON (truncated?)") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise RecipeError(f"resume: checkpoint {name} has format_version {meta.get('format_version')!r}, "
                          f"expected {FORMAT_VERSION}")
    blob = st_path.read_bytes()
    digest = meta.get("sha256")
    if digest is not None and hashlib.sha256(blob).hexdigest() != digest:
        raise CheckpointCorrupt(f"{str(st_path)!r} fails its sha256 check (damaged or truncated)")
    try:
        tensors = st_load(blob)
    except Exception:  # noqa: BLE001 - safetensors raises its own error types for malformed headers
        raise CheckpointCorrupt(f"{str(st_path)!r} is not a readable safetensors file (truncated?)") from None
    if "rng.torch" not in tensors or not isinstance(meta.get("rng"), dict):
        raise CheckpointCorrupt(f"{str(st_path)!r} lacks the training state (rng)")
    return tensors, meta


def load_checkpoint(ckpt_dir: str | Path, name: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of checkpoint ``name`` (default: latest). RecipeError if there is none.

    Without ``name``, a damaged latest checkpoint or ``latest.json`` falls back to the newest intact
    checkpoint, logging a warning that names the damaged file; ``meta["_loaded"]`` is the name used.
    """
    ckpt_dir = Path(ckpt_dir)
    if name is not None:
        try:
            tensors, meta = _read(ckpt_dir, name)
        except CheckpointCorrupt as e:
            raise CheckpointCorrupt(f"resume: checkpoint {name}: {e}") from None
        meta["_loaded"] = name
        return tensors, meta
    problems: list[str] = []
    try:
        latest = latest_checkpoint(ckpt_dir)
    except CheckpointCorrupt as e:
        latest = None
        problems.append(str(e).removeprefix("resume: "))
    candidates = checkpoint_names(ckpt_dir)
    if latest is not None:
        candidates = [latest] + [n for n in candidates if int(n[5:]) < int(latest[5:])]
    if not candidates:
        raise RecipeError(f"resume: no checkpoint in {str(ckpt_dir)!r}")
    for cand in candidates:
        try:
            tensors, meta = _read(ckpt_dir, cand)
        except CheckpointCorrupt as e:
            problems.append(str(e))
            continue
        if problems:
            _log.warning("resume: %s; falling back to %s, the newest intact checkpoint", "; ".join(problems),
                         str(ckpt_dir / f"{cand}.safetensors"))
        meta["_loaded"] = cand
        return tensors, meta
    raise RecipeError(f"resume: no intact checkpoint in {str(ckpt_dir)!r} ({'; '.join(problems)})")


def set_aside_newer(ckpt_dir: str | Path, loaded: str) -> list[Path]:
    """Rename the files of checkpoints newer than ``loaded`` (the damaged ones a resume skipped) to
    ``<file>.damaged``, so that pruning never keeps them in place of intact ones; returns the new paths."""
    ckpt_dir = Path(ckpt_dir)
    moved = []
    for name in checkpoint_names(ckpt_dir):
        if int(name[5:]) <= int(loaded[5:]):
            break
        for suffix in (".safetensors", ".json"):
            src = ckpt_dir / f"{name}{suffix}"
            if src.is_file():
                dst = src.with_name(src.name + ".damaged")
                src.replace(dst)
                moved.append(dst)
    if moved:
        _log.warning("resume: set aside %s", ", ".join(str(p) for p in moved))
        atomic_write(ckpt_dir / "latest.json", json.dumps({"name": loaded, "step": int(loaded[5:])}).encode())
    return moved


def restore(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    ema: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Load a checkpoint into live objects; returns the saved ``state`` dict.

    RecipeError (one line) when the checkpoint's model weights do not fit ``model`` (another model or spec).
    """
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    _check_fits(model, weights)
    from .fsdp import is_sharded, load_full_state

    sharded = is_sharded(model)  # FSDP: every rank loads the full state and keeps its shards
    if not sharded:
        model.load_state_dict(weights)
    if optimizer is not None and "optimizer" in meta:
        state: dict[int, dict[str, Any]] = {}
        for key, val in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = val
        for pid, vals in meta["optimizer"].get("scalars", {}).items():
            state.setdefault(int(pid), {}).update(vals)
        optim_sd = {"state": state, "param_groups": meta["optimizer"]["param_groups"]}
        if sharded:
            load_full_state(model, weights, optimizer, optim_sd)
        else:
            optimizer.load_state_dict(optim_sd)
    elif sharded:
        load_full_state(model, weights)
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    if ema is not None and meta.get("has_ema"):
        _check_fits(ema, {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    np_state = meta["rng"]["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    py = meta["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    return dict(meta.get("state", {}))


def _check_fits(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    shapes = sorted(k for k in set(own) & set(weights) if tuple(own[k].shape) != tuple(weights[k].shape))
    if not (missing or extra or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
    if extra:
        parts.append(f"{len(extra)} unexpected (e.g. {extra[0]!r})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} of another shape (e.g. {k!r}: {tuple(weights[k].shape)} vs {tuple(own[k].shape)})")
    raise RecipeError(f"resume: the checkpoint does not fit {type(model).__name__} ({', '.join(parts)}); "
                      "it was written for another model or model spec")
