"""``mixerzoo train | finetune | eval`` sub-commands (also ``python -m mixerzoo.train``).

Every Recipe field is a flag (``lr_base`` → ``--lr-base``; booleans also have ``--no-...``); ``--config FILE``
reads a YAML recipe; flags given on the command line win over the file. Errors in the recipe, the data or
the model name end the command with a one-line message (exit status 2), not a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
from typing import Any, NoReturn

from .recipe import Recipe, RecipeError, _base_type, build_recipe, field_types, recipe_fields

__all__ = ["build_parser", "main", "one_line_error", "register", "run_command"]

_HELP = {
    "train": "train a model with the common recipe (default data: the bundled digits)",
    "finetune": "fine-tune pretrained weights (name, hf-hub:, local-dir: or folder) on new data",
    "eval": "evaluate a model on a data source's validation split",
}
_EPILOG = ("Defaults shown are the base (DeiT/PoolFormer) recipe; per-family, fine-tuning and digits defaults, "
           "then --config, then flags override them (see mixerzoo.train.recipe). The resolved recipe is written to "
           "<output>/recipe.json.")
_EVAL_FIELDS = {"model", "data", "val_data", "val_split", "num_classes", "in_chans", "img_size", "crop_pct",
                "interpolation", "batch_size", "workers", "amp", "device", "seed", "quiet",
                "mixers", "mixer_options", "model_args"}


def _echo(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _add_recipe_flags(p: argparse.ArgumentParser, only: set[str] | None = None) -> None:
    p.add_argument("--config", metavar="YAML", default=None, help="recipe file (YAML mapping of recipe keys)")
    hints = field_types()
    for f in recipe_fields():
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp, optional = _base_type(hints[f.name])
        help_ = f.metadata.get("help", "")
        if f.name != "model":
            factory = f.default_factory
            shown = factory() if callable(factory) else f.default
            help_ = f"{help_} [default: {shown}]"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_}
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.name == "model_args":  # key=value ... (repeatable); parsed by mixerzoo.spec.parse_model_args
            p.add_argument(flag, nargs="+", action="extend", metavar="KEY=VALUE", **kw)
        elif f.metadata.get("nargs"):
            p.add_argument(flag, nargs=f.metadata["nargs"], metavar=("LO", "HI"), **kw)
        else:
            # values stay strings here and are converted by recipe.coerce, so a bad value is one line naming
            # the key (argparse would print its usage block); "none" clears an optional value
            conv = _none_or_str if optional else str
            p.add_argument(flag, type=conv, metavar=f.name.upper(), **kw)
        if f.name == "model":
            p.add_argument("model_pos", nargs="?", default=None, metavar="MODEL", help="same as --model")


def _one_line_usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """argparse's error without the usage block: one line, exit status 2."""
    parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")


def _none_or_str(s: str) -> str | None:
    return None if s.lower() in ("none", "null") else s


def build_parser(prog: str = "mixerzoo") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="mixerzoo training recipe")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    return parser


def register(subparsers: Any) -> None:
    """Add ``train``, ``finetune`` and ``eval`` to an argparse sub-parser collection."""
    for name in ("train", "finetune", "eval"):
        p = subparsers.add_parser(name, help=_HELP[name], description=_HELP[name], epilog=_EPILOG)
        p.error = types.MethodType(_one_line_usage_error, p)  # type: ignore[method-assign]
        _add_recipe_flags(p, only=_EVAL_FIELDS if name == "eval" else None)
        p.set_defaults(func=run_command, command=name)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in recipe_fields()}
    out = {k: v for k, v in vars(args).items() if k in names}
    if getattr(args, "model_pos", None):
        if "model" in out and out["model"] != args.model_pos:
            raise RecipeError(f"model given twice: {args.model_pos!r} and --model {out['model']!r}")
        out["model"] = args.model_pos
    return out


def _config_for(args: argparse.Namespace, overrides: dict[str, Any]) -> str | None:
    """The recipe file: ``--config``, or for ``--resume`` without one the run's own ``recipe.json``.

    A resumed run therefore needs no flags but ``--resume`` (and ``--output``); flags that are given must agree
    with the run's recipe (checked by ``fit``).
    """
    if args.config is not None or args.command == "eval":
        return args.config
    if overrides.get("resume") is not True:
        return None
    model = overrides.get("model")
    output = overrides.get("output")
    out = Recipe(model=model, output=output).output_dir() if output or model else None
    if out is not None and (out / "recipe.json").is_file():
        return str(out / "recipe.json")
    return None


def run_command(args: argparse.Namespace) -> int:
    """Execute a parsed ``train``/``finetune``/``eval`` command; returns the exit status."""
    quiet = bool(getattr(args, "quiet", False))
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    try:
        overrides = _overrides(args)
        recipe = build_recipe(overrides, mode=args.command, config=_config_for(args, overrides))
        if args.command == "eval":
            from .loop import evaluate_recipe

            res = evaluate_recipe(recipe)
            if _is_main():
                _echo(json.dumps(res) if quiet else
                      f"{recipe.model} on {res['data']}: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  "
                      f"loss {res['loss']:.4f}  ({res['count']} images, {res['seconds']:.1f}s)")
            return 0
        from .rundir import precheck

        precheck(recipe)  # a run or a live lock in --output: refuse before torch, data and model are loaded
        from .loop import fit

        result = fit(recipe, mode=args.command)
        if _is_main():
            _echo(result.summary)
        return 0
    except Exception as e:  # noqa: BLE001 - only the known one-line kinds are answered here
        msg = one_line_error(e)
        if msg is None:
            raise
        sys.stderr.write(f"mixerzoo {args.command}: error: {msg}\n")
        return 2


def one_line_error(err: BaseException, *, always: bool = False) -> str | None:
    """The one-line message for a user-facing error (recipe, hub, checkpoint, file system), else None
    (``always``: the joined text of any error).

    ``OSError`` (disk full, permission denied, a missing file) becomes ``<reason>: '<path>'``; hub errors and
    RecipeError keep their own (one-line) text. Anything else is a bug and keeps its traceback.
    """
    hub_error: tuple[type[BaseException], ...] = ()
    try:
        from mixerzoo.hub._config import HubError

        hub_error = (HubError,)
    except ImportError:  # pragma: no cover - the hub package is part of mixerzoo
        pass
    if isinstance(err, RecipeError) or (hub_error and isinstance(err, hub_error)):
        text = str(err)
    elif isinstance(err, OSError):
        if err.strerror and err.filename is not None:
            text = f"{err.strerror}: {str(err.filename)!r}"
        else:
            text = str(err) or type(err).__name__
    elif always:
        text = str(err)
    else:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) if lines else type(err).__name__


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None, prog: str = "python -m mixerzoo.train") -> int:
    """``python -m mixerzoo.train [train|finetune|eval] ...``; ``train`` is implied when omitted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "finetune", "eval", "-h", "--help"):
        argv = ["train", *argv]
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    return int(args.func(args))


def recipe_from_args(argv: list[str], mode: str = "train") -> Recipe:
    """Parse flags (without the sub-command) into a Recipe: handy for tests and notebooks."""
    parser = build_parser()
    args = parser.parse_args([mode, *argv])
    return build_recipe(_overrides(args), mode=mode, config=args.config)
