"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON, written atomically.

A checkpoint ``step_000123`` is two files in ``<output>/checkpoints/``:

* ``step_000123.safetensors`` — ``model.*``, ``optim.<param>.<key>``, ``ema.*``, ``rng.torch`` (+ ``rng.cuda``);
* ``step_000123.json`` — step/epoch counters, optimizer param groups, scheduler state, numpy/python RNG
  state, metrics history, the recipe.

Each file is written to a temporary name, fsync'ed and renamed; then ``latest.json`` (the commit point) is
atomically replaced to name the new checkpoint. A run killed at any moment leaves either the previous or the
new checkpoint as ``latest``, never a torn one.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .recipe import RecipeError

__all__ = ["atomic_write", "latest_checkpoint", "load_checkpoint", "save_checkpoint", "state_to_tensors"]

FORMAT_VERSION = 1


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, rename, fsync dir."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


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
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, ema: torch.nn.Module | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split model/optimizer/EMA state into (tensors, JSON-able meta)."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach()
    meta: dict[str, Any] = {}
    if optimizer is not None:
        sd = optimizer.state_dict()
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
) -> Path:
    """Write checkpoint ``step_<step>`` atomically and make it ``latest``; keep the newest ``keep``."""
    ckpt_dir = Path(ckpt_dir)
    name = f"step_{step:07d}"
    tensors, meta = state_to_tensors(model, optimizer, ema)
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
    atomic_write(ckpt_dir / f"{name}.safetensors", st_save(tensors, metadata={"format": "mixerzoo-train"}))
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
    """Name of the committed latest checkpoint in ``ckpt_dir`` or None."""
    p = Path(ckpt_dir) / "latest.json"
    if not p.is_file():
        return None
    return str(json.loads(p.read_text())["name"])


def load_checkpoint(ckpt_dir: str | Path, name: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of checkpoint ``name`` (default: latest). RecipeError if there is none."""
    ckpt_dir = Path(ckpt_dir)
    name = name or latest_checkpoint(ckpt_dir)
    if name is None:
        raise RecipeError(f"resume: no checkpoint in {str(ckpt_dir)!r}")
    meta = json.loads((ckpt_dir / f"{name}.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise RecipeError(f"resume: checkpoint {name} has format_version {meta.get('format_version')!r}, "
                          f"expected {FORMAT_VERSION}")
    tensors = st_load((ckpt_dir / f"{name}.safetensors").read_bytes())
    return tensors, meta


def restore(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    ema: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Load a checkpoint into live objects; returns the saved ``state`` dict."""
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is not None and "optimizer" in meta:
        state: dict[int, dict[str, Any]] = {}
        for key, val in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = val
        for pid, vals in meta["optimizer"].get("scalars", {}).items():
            state.setdefault(int(pid), {}).update(vals)
        optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    if ema is not None and meta.get("has_ema"):
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    np_state = meta["rng"]["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    py = meta["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    return dict(meta.get("state", {}))
