"""The run folder (``--output``): an exclusive lock, the new-run / resume / overwrite rules, housekeeping.

* :class:`RunLock` — ``<output>/.mixerzoo.lock``, created with ``O_CREAT | O_EXCL`` and holding the owner's
  PID, host and start time. A second run on the folder refuses, naming the holder. A lock whose process is
  gone (same host, PID not alive) is stale: it is taken over with a warning.
* :func:`claim` — called after the recipe, the data and the model were checked, before anything in the folder
  changes. A folder that already holds a run is refused unless ``resume`` (continue it) or ``overwrite``
  (replace it: only the files a run writes are removed, nothing else).
* :func:`clean_temp_files` — temp files of writes that were killed midway (``.<name>.<random>.tmp``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from .recipe import Recipe, RecipeError

__all__ = ["LOCK_NAME", "RUN_FILES", "RUNTIME_KEYS", "RunLock", "claim", "clean_temp_files", "has_run",
           "precheck", "recipe_conflicts"]

_log = logging.getLogger(__name__)

LOCK_NAME = ".mixerzoo.lock"
# What a run writes in its output folder (files, folders); the only things --overwrite removes.
RUN_FILES = ("recipe.json", "metrics.jsonl", "curves.png", "checkpoints", "model")
_MODEL_FILES = ("model.safetensors", "config.json", "README.md", "plots/curves.png")
# Recipe keys a resumed run may change: they do not change what is computed (where, how fast, how it is logged).
RUNTIME_KEYS = frozenset({"resume", "overwrite", "output", "quiet", "workers", "device", "amp", "channels_last",
                          "grad_accum_steps", "ckpt_every", "keep_ckpts", "log_every", "save_model",
                          "verify_images"})


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


class RunLock:
    """Exclusive lock on a run folder (a lock file created with O_EXCL). Use as a context manager."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def _record(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, (json.dumps(self._record()) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _holder(self) -> tuple[dict[str, Any] | None, str]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return None, ""
        try:
            info = json.loads(raw)
            if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
                raise ValueError
        except ValueError:
            return {}, raw
        return info, raw

    def acquire(self) -> None:
        """Take the lock, or RecipeError naming the PID and host of the live run that holds it."""
        for _ in range(5):
            if self._create():
                self.held = True
                return
            info, raw = self._holder()
            if info is None:  # released between our attempt and the read
                continue
            host = socket.gethostname()
            if info:
                pid, other = int(info["pid"]), str(info.get("host", "?"))
                if other != host or _pid_alive(pid) and pid != os.getpid():
                    raise RecipeError(
                        f"output {str(self.path.parent)!r} is in use by another run (PID {pid} on host {other}, "
                        f"started {info.get('started', '?')}); wait for it, choose another --output, or delete "
                        f"{str(self.path)!r} if that run is gone")
                why = f"its run (PID {pid} on {other}) is gone"
            else:
                try:
                    age = time.time() - self.path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < 10:  # another run is still writing its lock record
                    raise RecipeError(f"output {str(self.path.parent)!r} is being claimed by another run "
                                      f"(lock file {str(self.path)!r}); try again")
                why = "it is unreadable"
            if self._take_over(raw):
                _log.warning("taking over the stale lock %s: %s", self.path, why)
        raise RecipeError(f"output {str(self.path.parent)!r}: could not take the lock {str(self.path)!r}")

    def _take_over(self, seen: str) -> bool:
        """Move the stale lock aside (atomic rename: one of several racing runs wins) and check it was the one
        judged stale; True when the way is clear for a new O_EXCL attempt."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{os.urandom(4).hex()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            if aside.read_text() != seen:  # another run took it over meanwhile: give it back
                with contextlib.suppress(OSError):
                    os.link(aside, self.path)
                return False
        finally:
            aside.unlink(missing_ok=True)
        return True

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        info, _ = self._holder()
        if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def has_run(folder: Path) -> list[str]:
    """The run files present in ``folder`` (names from RUN_FILES)."""
    return [n for n in RUN_FILES if (folder / n).exists()]


def recipe_conflicts(saved: dict[str, Any], recipe: Recipe) -> list[str]:
    """``key=new (the run has old)`` for every non-runtime key where ``recipe`` differs from the saved recipe."""
    now = recipe.to_dict()
    out = []
    for key, value in now.items():
        if key in RUNTIME_KEYS or key not in saved:
            continue
        old = saved[key]
        if key in ("scale", "ratio") and isinstance(old, list):
            old = [float(v) for v in old]
            value = [float(v) for v in value]
        if old != value:
            out.append(f"{key}={value!r} (the run has {old!r})")
    return out


def clean_temp_files(folder: Path) -> list[Path]:
    """Remove the temp files of killed writes in the run folder, its checkpoints and model folder.

    Only the names a run's atomic writes use (``.<own file>.<random>.tmp``, and ``.curves.png.tmp.png`` of
    older versions) are touched.
    """
    own = ("step_", "latest.json", "recipe.json", "metrics.jsonl", "curves.png", *(_n.rsplit("/", 1)[-1]
                                                                                       for _n in _MODEL_FILES))
    removed: list[Path] = []
    size = 0
    for sub in (folder, folder / "checkpoints", folder / "model", folder / "model" / "plots"):
        if not sub.is_dir():
            continue
        for p in sub.iterdir():
            name = p.name
            if not (name.startswith(".") and p.is_file()):
                continue
            stem = name[1:]
            if (name.endswith(".tmp") and stem.startswith(own)) or name == ".curves.png.tmp.png":
                with contextlib.suppress(OSError):
                    size += p.stat().st_size
                p.unlink(missing_ok=True)
                removed.append(p)
    if removed:
        _log.warning("removed %d temp file(s) (%.1f MB) left by interrupted writes in %s", len(removed),
                     size / 1e6, folder)
    return removed


def _remove_run_files(folder: Path) -> None:
    """--overwrite: delete what a run writes (checkpoint files, metrics, recipe, curves, the exported model)."""
    from .checkpoint import checkpoint_names

    ck = folder / "checkpoints"
    if ck.is_dir():
        for name in checkpoint_names(ck):
            for suffix in (".safetensors", ".json"):
                (ck / f"{name}{suffix}").unlink(missing_ok=True)
        (ck / "latest.json").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            ck.rmdir()  # only if nothing else is in it
    for name in ("recipe.json", "metrics.jsonl", "curves.png"):
        (folder / name).unlink(missing_ok=True)
    model = folder / "model"
    if model.is_dir():
        for name in _MODEL_FILES:
            (model / name).unlink(missing_ok=True)
        for sub in (model / "plots", model):
            with contextlib.suppress(OSError):
                sub.rmdir()


def precheck(recipe: Recipe) -> None:
    """The checks of :func:`claim` that need no change to the folder, to fail before data and model are read."""
    out = recipe.output_dir()
    if out.exists() and not out.is_dir():
        raise RecipeError(f"output {str(out)!r} exists and is not a directory")
    if recipe.resume and not (out / "checkpoints").is_dir():
        raise RecipeError(f"resume: no run in {str(out)!r} (no checkpoints/ folder)")
    if not out.is_dir():
        return
    info, _ = RunLock(out)._holder()
    if info and (info.get("host") != socket.gethostname() or _pid_alive(int(info["pid"]))) \
            and info.get("pid") != os.getpid():
        raise RecipeError(
            f"output {str(out)!r} is in use by another run (PID {info['pid']} on host {info.get('host', '?')}, "
            f"started {info.get('started', '?')}); wait for it, choose another --output, or delete "
            f"{str(out / LOCK_NAME)!r} if that run is gone")
    present = has_run(out)
    if present and not recipe.resume and not recipe.overwrite:
        raise _exists_error(out, present)
    if recipe.resume:
        _check_resume_recipe(out, recipe, warn=False)  # e.g. another --mixers: refused before data and model load


def _check_resume_recipe(out: Path, recipe: Recipe, *, warn: bool = True) -> None:
    """RecipeError listing every non-runtime key where ``recipe`` differs from the run's ``recipe.json``."""
    saved_path = out / "recipe.json"
    if not saved_path.is_file():
        return
    try:
        saved = json.loads(saved_path.read_text())
    except ValueError:
        saved = None
        if warn:
            _log.warning("resume: %s is malformed; the checkpoint decides what fits", saved_path)
    if isinstance(saved, dict):
        conflicts = recipe_conflicts(saved, recipe)
        if conflicts:
            raise RecipeError(
                f"resume: the recipe of the run in {str(out)!r} cannot change: {', '.join(conflicts)}; "
                "drop the flag, or start a new run with another --output")


def _exists_error(out: Path, present: list[str]) -> RecipeError:
    return RecipeError(f"output {str(out)!r} already holds a run ({', '.join(present)}); use --resume to continue "
                       "it, --overwrite to replace it, or another --output")


def claim(recipe: Recipe) -> RunLock:
    """Lock ``recipe.output_dir()`` and prepare it for a new, resumed or overwriting run; returns the held lock.

    Call it only after the recipe, data and model were checked: this is the first function that changes the
    folder. RecipeError (one line) for a folder that holds a run without ``resume``/``overwrite``, a resume
    without a run, or a resume whose recipe differs from the run's in anything but runtime keys.
    """
    out = recipe.output_dir()
    if out.exists() and not out.is_dir():
        raise RecipeError(f"output {str(out)!r} exists and is not a directory")
    if recipe.resume and not (out / "checkpoints").is_dir():
        raise RecipeError(f"resume: no run in {str(out)!r} (no checkpoints/ folder)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RecipeError(f"output {str(out)!r}: {e.strerror or e}") from None
    lock = RunLock(out)
    lock.acquire()
    try:
        present = has_run(out)
        if recipe.resume:
            _check_resume_recipe(out, recipe)
            clean_temp_files(out)
        elif present:
            if not recipe.overwrite:
                raise _exists_error(out, present)
            clean_temp_files(out)
            _remove_run_files(out)
        from .checkpoint import atomic_write

        atomic_write(out / "recipe.json", (json.dumps(recipe.to_dict(), indent=2) + "\n").encode())
    except BaseException:
        lock.release()
        raise
    return lock
