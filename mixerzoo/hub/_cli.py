"""``mixerzoo publish`` and ``mixerzoo convert``: sub-commands added to the top-level CLI by :func:`register`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def _publish(args: argparse.Namespace) -> int:
    from mixerzoo.hub._config import HubError
    from mixerzoo.hub.convert import one_line
    from mixerzoo.hub.publish import push_to_hub

    try:
        folder = _hub_folder(args.dir)
        info = push_to_hub(
            folder,
            args.repo_id,
            revision=args.revision,
            commit_message=args.message,
            private=args.private,
            token=args.token,
        )
    except (HubError, OSError, ValueError) as e:
        sys.stderr.write(f"mixerzoo publish: error: {one_line(e)}\n")
        return 2
    sys.stdout.write(f"published {folder} to {args.repo_id}: {getattr(info, 'commit_url', info)}\n")
    return 0


def _hub_folder(path: str) -> str:
    """A hub folder as given, or a training run folder's exported ``model/`` (its config.json names the spec)."""
    from pathlib import Path

    p = Path(path)
    if not (p / "config.json").is_file() and (p / "model" / "config.json").is_file():
        return str(p / "model")
    return path


def _convert(args: argparse.Namespace) -> int:
    from mixerzoo.hub.convert import run

    return run(args)


def register(subparsers: Any) -> None:
    """Add ``publish`` and ``convert`` to an ``argparse`` sub-parsers object; each sets ``func(args) -> int``."""
    from mixerzoo.hub.convert import add_arguments

    p = subparsers.add_parser(
        "publish",
        help="upload a hub folder (save_pretrained / convert output) to the Hugging Face Hub",
        description="Upload DIR (model.safetensors + config.json + README.md) to REPO_ID in one commit; "
        "creates the repo if needed. Pickle files in DIR are refused.",
    )
    p.add_argument("dir", help="hub folder written by save_pretrained or `mixerzoo convert`, or a training run "
                   "folder (its exported model/)")
    p.add_argument("repo_id", help="target repo, 'org/name'")
    p.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    p.add_argument("--message", default="Upload model with mixerzoo", help="commit message")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN / the cached login)")
    p.set_defaults(func=_publish)

    c = subparsers.add_parser(
        "convert",
        help="convert an official checkpoint into a hub folder (strict key accounting, golden output)",
        description="Read OFFICIAL_CHECKPOINT (torch.load weights_only=True, or safetensors), run the family's "
        "checkpoint filter, load strictly into ARCH and write OUTDIR ready for `mixerzoo publish`.",
    )
    add_arguments(c)
    c.set_defaults(func=_convert)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m mixerzoo.hub._cli``) for use before/without the top-level CLI."""
    parser = argparse.ArgumentParser(prog="mixerzoo")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
