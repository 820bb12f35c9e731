"""The ``mixerzoo`` command line: ``mixerzoo list models|mixers`` plus the sub-commands of the hub,
train and bench packages (each contributes ``register(subparsers)`` in its ``_cli`` module)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

__all__ = ["main"]

_SUBPACKAGE_CLIS = ("mixerzoo.train._cli", "mixerzoo.hub._cli", "mixerzoo.bench._cli", "mixerzoo.timm_script",
                    "mixerzoo.compare._cli")


def _cmd_list(args: argparse.Namespace) -> int:
    import mixerzoo
    from mixerzoo import plugins

    if args.what == "models":
        names = mixerzoo.list_models(args.pattern or "*", include_test=args.include_test, pretrained=args.pretrained)
        rows = []
        for n in names:
            entry = mixerzoo.zoo.get_entry(n)
            tags = [t for t in entry.pretrained if t]
            rows.append({"name": n, "family": entry.family, "timm_name": entry.timm_name, "pretrained": tags})
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            width = max((len(r["name"]) for r in rows), default=4)
            for r in rows:
                tags = ", ".join(r["pretrained"]) or "-"
                print(f"{r['name']:<{width}}  {r['family']:<12} {tags}")
            print(f"{len(rows)} models", file=sys.stderr)
        return 0
    names = plugins.list_mixers(kind=args.kind, qualified=args.qualified)
    rows = []
    for n in names:
        spec = plugins.mixer_spec(n)
        rows.append({"name": n, "kind": spec.kind, "layout": spec.layout, "distribution": spec.dist, "target": spec.target})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:<20} {r['kind']:<6} {r['layout']:<5} {r['distribution']:<16} {r['target']}")
    for err in plugins.errors():
        print(f"broken plugin: {err}", file=sys.stderr)
    return 0


def _cmd_forward(args: argparse.Namespace) -> int:
    """Build a model and run one forward pass on random input (no download)."""
    import torch

    import mixerzoo
    from mixerzoo.spec import ModelSpec

    spec = ModelSpec.parse(args.model, args.mixers, args.mixer_options, args.model_args)
    spec.validate(img_size=args.img_size, num_classes=args.num_classes)  # one line naming the argument
    model = spec.create(num_classes=args.num_classes).eval()
    size = args.img_size or model.pretrained_cfg["input_size"][-1]
    x = torch.randn(args.batch, model.pretrained_cfg["input_size"][0], size, size)
    with torch.no_grad():
        out = model(x)
    params = sum(p.numel() for p in model.parameters())
    mixers = ", ".join(f"{k} ({v})" for k, v in mixerzoo.plugins.required_mixers(model).items()) or "-"
    print(f"{spec.describe()}: {params / 1e6:.2f} M params, mixers: {mixers}; "
          f"input {tuple(x.shape)} -> {tuple(out.shape)}")
    return 0


def _add_spec_flags(p: argparse.ArgumentParser) -> None:
    """``--mixers``, ``--mixer-options``, ``--model-args``: the model spec (see :mod:`mixerzoo.spec`)."""
    p.add_argument("--mixers", default=None, metavar="A[,B,C,D]",
                   help="token mixers: one name for every stage, or one per stage (see `mixerzoo list mixers`)")
    p.add_argument("--mixer-options", default=None, metavar="OPTIONS",
                   help="JSON (an object, or one per stage), or key=value[,key=value] with ';' between stages")
    p.add_argument("--model-args", nargs="+", action="extend", default=None, metavar="KEY=VALUE",
                   help="architecture overrides of the family's config (values are JSON literals)")


def build_parser() -> argparse.ArgumentParser:
    from mixerzoo.version import __version__

    parser = argparse.ArgumentParser(prog="mixerzoo", description="A plugin-based zoo of vision backbones.")
    parser.add_argument("--version", action="version", version=f"mixerzoo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list models or mixers")
    p.add_argument("what", choices=["models", "mixers"])
    p.add_argument("pattern", nargs="?", help="fnmatch pattern for model names, e.g. 'poolformer_*'")
    p.add_argument("--pretrained", action="store_true", help="only models with pretrained weights")
    p.add_argument("--include-test", action="store_true", help="include the tiny test_* variants")
    p.add_argument("--kind", choices=["mixer", "gate"], help="only mixers of this kind")
    p.add_argument("--qualified", action="store_true", help="also list distribution-qualified mixer names")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("forward", help="build a model and run one forward pass on random input")
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=1000)
    _add_spec_flags(p)
    p.set_defaults(func=_cmd_forward)

    for mod_name in _SUBPACKAGE_CLIS:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as err:
            if err.name == mod_name:  # that sub-package has no CLI (yet)
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command. User-facing errors (unknown names, bad values, hub/checkpoint errors, file-system
    errors such as a full disk) end with one line ``mixerzoo <command>: error: ...`` and exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from mixerzoo.plugins import MixerLoadError, UnknownMixerError
    from mixerzoo.train._cli import one_line_error
    from mixerzoo.zoo import UnknownModelError

    try:
        return int(args.func(args) or 0)
    except (UnknownModelError, UnknownMixerError, MixerLoadError, ValueError) as err:
        msg = one_line_error(err, always=True)
    except Exception as err:  # noqa: BLE001 - hub errors and OSError (ENOSPC, EACCES, ...) get one line too
        msg = one_line_error(err)
        if msg is None:
            raise
    print(f"mixerzoo {args.command}: error: {msg}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
