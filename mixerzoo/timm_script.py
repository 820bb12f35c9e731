"""Run one of timm's own scripts (``train.py``, ``validate.py``, ``benchmark.py``, ``inference.py``) with the
mixerzoo models registered, without editing the script::

    python -m mixerzoo.timm_script path/to/validate.py --model mz_poolformer_s12 --data-dir /data/imagenet
    mixerzoo timm path/to/train.py --model mz_nat_mini ...
    torchrun --nproc_per_node=8 -m mixerzoo.timm_script path/to/train.py --model mz_nat_mini ...

The script runs as ``__main__`` (:func:`runpy.run_path`) after ``import mixerzoo``, which registers every
``mz_*`` model with timm's registry; ``sys.argv`` is ``[script, *args]`` and ``sys.path[0]`` is the script's
folder, exactly as ``python path/to/script.py args`` would set them. timm's scripts are not part of the timm
wheel: take them from the timm source tree of the installed version (``git clone`` of
huggingface/pytorch-image-models at the matching tag).
"""

from __future__ import annotations

import argparse
import runpy
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ScriptError", "register", "run_script", "main"]


class ScriptError(ValueError):
    """The script argument is not a readable ``.py`` file. The message is one line."""


def _check_script(script: str) -> Path:
    path = Path(script)
    if path.suffix != ".py":
        raise ScriptError(f"script must be a .py file (one of timm's train.py, validate.py, benchmark.py, "
                          f"inference.py), got {script!r}")
    if not path.is_file():
        raise ScriptError(f"script {script!r} does not exist")
    return path.resolve()


def run_script(script: str, args: Sequence[str] = ()) -> int:
    """Run ``script`` as ``__main__`` with ``sys.argv = [script, *args]`` after ``import mixerzoo``.

    Returns the script's exit status (0 when it returns normally, the code of its ``SystemExit`` otherwise).
    ``sys.argv`` and ``sys.path`` are restored afterwards, so this can be called more than once in a process.
    Raises :class:`ScriptError` (before anything runs) for a missing script or one that is not a ``.py`` file.
    """
    path = _check_script(script)
    import mixerzoo  # noqa: F401 - registers the mz_* models with timm

    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [str(script), *args]
    folder = str(path.parent)
    if sys.path:
        sys.path[0] = folder
    else:
        sys.path.insert(0, folder)
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    finally:
        sys.argv[:] = saved_argv
        sys.path[:] = saved_path
    return 0


def _cmd_timm(args: argparse.Namespace) -> int:
    _check_script(args.script)  # a bad SCRIPT is a one-line error (exit status 2)
    try:
        return run_script(args.script, args.args)
    except Exception:  # noqa: BLE001 - the script's own error: its traceback and status 1, as `python script.py`
        traceback.print_exc()
        return 1


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``mixerzoo timm SCRIPT ARGS...`` to the ``mixerzoo`` command."""
    p = subparsers.add_parser(
        "timm",
        help="run one of timm's scripts (train.py, validate.py, benchmark.py, inference.py) with mz_ models",
        description="Run one of timm's own scripts with the mixerzoo models registered (mz_* names); every "
                    "argument after SCRIPT goes to the script unchanged.",
    )
    p.add_argument("script", help="path to timm's train.py, validate.py, benchmark.py or inference.py")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    p.set_defaults(func=_cmd_timm)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mixerzoo.timm_script SCRIPT ARGS...``; a bad SCRIPT is one line on stderr, exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m mixerzoo.timm_script SCRIPT [ARGS...]\n\nRun timm's SCRIPT (train.py, validate.py, "
              "benchmark.py, inference.py) with the mz_* models registered;\nARGS go to the script unchanged, e.g.\n"
              "  python -m mixerzoo.timm_script validate.py --model mz_poolformer_s12 --data-dir /data/imagenet",
              file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    try:
        return run_script(argv[0], argv[1:])
    except ScriptError as err:
        print(f"mixerzoo.timm_script: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
