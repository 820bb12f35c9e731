"""Convert an official (original-repository) checkpoint into a mixerzoo hub folder.

``python -m mixerzoo.hub.convert ARCH CHECKPOINT OUTDIR`` (or ``mixerzoo convert ...``):

1. reads the checkpoint: ``.safetensors`` directly, anything else with ``torch.load(weights_only=True)`` (the
   restricted unpickler; this module holds the only ``torch.load`` in mixerzoo), unwrapping ``state_dict`` /
   ``model`` / ``state_dict_ema`` wrappers and ``module.`` / ``_orig_mod.`` prefixes;
2. runs the family's checkpoint filter (``mixerzoo.get_checkpoint_filter``) and accounts for every key: keys the
   model lacks, keys left unconsumed and shape mismatches are all reported, and any of them fails the conversion;
3. loads with ``strict=True``, writes the hub folder with :func:`mixerzoo.hub.save_pretrained`, and reports the
   parameter count and a golden-output digest (seeded input) for the model card.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixerzoo.hub._config import HubError

__all__ = [
    "ConvertError",
    "ConvertResult",
    "convert_checkpoint",
    "golden_output",
    "read_official_checkpoint",
    "unwrap_state_dict",
]

_logger = logging.getLogger(__name__)

_WRAPPERS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")
_EMA_WRAPPERS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
_PREFIXES = ("module.", "_orig_mod.")


# Globals the restricted unpickler may build besides tensors and plain containers: data-only classes that
# training checkpoints hold next to the weights. timm's train.py stores its parsed command line as
# ``'args': argparse.Namespace`` (timm's own ``load_checkpoint`` allows it the same way). A Namespace is rebuilt
# from its attribute dict only; it runs no code. Anything else (a class with ``__reduce__``, a function) stays refused.
_SAFE_GLOBALS: tuple[Any, ...] = (argparse.Namespace,)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Weights only load failed", "(1)", "(2)", "In PyTorch")):
            return line
    return text.splitlines()[0] if text else type(e).__name__


def one_line(e: BaseException) -> str:
    """``e``'s message on one line (multi-line reports joined with '; '), for the CLI."""
    parts = [line.strip() for line in str(e).splitlines() if line.strip()]
    return "; ".join(parts) or type(e).__name__


class ConvertError(HubError):
    """The checkpoint does not map onto the architecture (key accounting or strict load failed)."""


def unwrap_state_dict(obj: Any, *, ema: bool = False, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor dict inside a training checkpoint: wrappers unwrapped, ``module.`` prefixes stripped."""
    for _ in range(4):  # wrappers nest at most a couple of levels (e.g. {"model": {"state_dict": ...}})
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        for key in _EMA_WRAPPERS if ema else _WRAPPERS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner:
                _logger.info("%s: using the %r entry", source, key)
                obj = inner
                break
        else:
            break
    if not isinstance(obj, Mapping) or not obj:
        raise ConvertError(f"{source}: no state dict found (top-level type {type(obj).__name__})")
    bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise ConvertError(
            f"{source}: not a flat tensor dict; non-tensor entries {bad[:8]} (expected one of the wrappers {_WRAPPERS})"
        )
    sd = {str(k): v for k, v in obj.items()}
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def read_official_checkpoint(path: str | os.PathLike[str], *, ema: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat CPU state dict (safetensors, or a pickle via ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint={str(path)!r} is not a file")
    if path.name.endswith(".safetensors"):
        import safetensors.torch

        obj: Any = safetensors.torch.load_file(str(path), device="cpu")
    else:
        try:
            # weights_only=True: the restricted unpickler (tensors and plain containers only, no code execution),
            # plus the few plain-data classes that training scripts store beside the weights (_SAFE_GLOBALS).
            with torch.serialization.safe_globals(list(_SAFE_GLOBALS)):
                obj = torch.load(path, map_location="cpu", weights_only=True)  # the one torch.load in mixerzoo
        except Exception as e:
            raise ConvertError(
                f"checkpoint={str(path)!r} could not be read with torch.load(weights_only=True): "
                f"{_first_line(e)}. Checkpoints that need the full unpickler are not supported"
            ) from e
    return unwrap_state_dict(obj, ema=ema, source=str(path))


def golden_output(model: nn.Module, input_size: Sequence[int], seed: int = 0) -> dict[str, Any]:
    """Forward a seeded input (``torch.Generator().manual_seed(seed)``, batch 1); digest and summary of the output."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, *[int(s) for s in input_size], generator=gen)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            y = model(x).float().cpu()
    finally:
        model.train(was_training)
    flat = y.flatten()
    top = torch.topk(flat, k=min(5, flat.numel()))
    return {
        "input": f"randn(1, {', '.join(str(int(s)) for s in input_size)}, generator=Generator().manual_seed({seed}))",
        "sha256": hashlib.sha256(y.contiguous().numpy().tobytes()).hexdigest(),
        "mean": float(flat.mean()),
        "std": float(flat.std()) if flat.numel() > 1 else 0.0,
        "top5": [int(i) for i in top.indices],
    }


@dataclass
class ConvertResult:
    """What :func:`convert_checkpoint` did."""

    outdir: Path
    architecture: str
    params: int
    golden: dict[str, Any]
    source_keys: int
    loaded_keys: int
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join(
            [
                f"architecture: {self.architecture}",
                f"checkpoint keys: {self.source_keys} -> model keys loaded: {self.loaded_keys} (strict)",
                f"params: {self.params:,} ({self.params / 1e6:.2f} M)",
                f"golden output ({self.golden['input']}):",
                f"  sha256 {self.golden['sha256']}",
                f"  mean {self.golden['mean']:.6g} std {self.golden['std']:.6g} top5 {self.golden['top5']}",
                f"hub folder: {self.outdir}",
                *self.notes,
            ]
        )


def _resolve_arch(arch: str) -> tuple[str, Callable[..., Any] | None]:
    """(timm name, family checkpoint filter or None) for a mixerzoo name, its mz_ spelling, or a timm name."""
    import timm

    import mixerzoo

    try:
        mixerzoo.zoo.get_entry(arch)
    except mixerzoo.UnknownModelError:
        if timm.is_model(arch):
            return arch, None
        raise
    from mixerzoo.zoo import PREFIX, split_name

    name, tag = split_name(arch)
    return PREFIX + name + (f".{tag}" if tag else ""), mixerzoo.get_checkpoint_filter(arch)


def _account(sd: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unconsumed = sorted(set(sd) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(sd) & set(expected)
        if tuple(sd[k].shape) != tuple(expected[k].shape)
    )
    if missing or unconsumed or mismatched:
        lines = [f"{source} does not match {type(model).__name__} after the checkpoint filter:"]
        for title, items in (
            ("missing from the checkpoint", missing),
            ("unconsumed checkpoint keys", unconsumed),
            ("shape mismatches", mismatched),
        ):
            if items:
                shown = ", ".join(items[:12]) + (f", ... ({len(items) - 12} more)" if len(items) > 12 else "")
                lines.append(f"  {len(items)} {title}: {shown}")
        raise ConvertError("\n".join(lines))


def convert_checkpoint(
    arch: str,
    checkpoint: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    *,
    ema: bool = False,
    checkpoint_filter: Callable[..., Any] | None = None,
    model_card: Mapping[str, Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> ConvertResult:
    """Convert ``checkpoint`` (official layout) for ``arch`` into a hub folder at ``outdir``.

    ``checkpoint_filter`` defaults to the family's (``mixerzoo.get_checkpoint_filter(arch)``); ``model_kwargs``
    (e.g. ``num_classes``) go to the model constructor. Fails with :class:`ConvertError` unless every model key is
    provided and every checkpoint key is consumed with the right shape.
    """
    import timm

    timm_name, family_filter = _resolve_arch(arch)
    filter_fn = checkpoint_filter or family_filter
    model = timm.create_model(timm_name, pretrained=False, **dict(model_kwargs or {}))
    source = str(checkpoint)
    sd = read_official_checkpoint(checkpoint, ema=ema)
    n_source = len(sd)
    if filter_fn is not None:
        try:
            sd = filter_fn(sd, model)
        except (KeyError, ValueError, RuntimeError) as e:
            raise ConvertError(f"{source}: the checkpoint filter of {timm_name} failed: {e}") from e
    _account(sd, model, source)
    model.load_state_dict(sd, strict=True)
    model.eval()
    from mixerzoo.hub.card import count_params
    from mixerzoo.hub.publish import save_pretrained

    input_size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    golden = golden_output(model, input_size)
    params = count_params(model)
    card = dict(model_card or {})
    details = dict(card.get("details") or {})
    details.setdefault("Converted from", Path(checkpoint).name)
    details.setdefault("Golden output sha256", f"`{golden['sha256']}` ({golden['input']})")
    card["details"] = details
    out = save_pretrained(model, outdir, model_card=card)
    return ConvertResult(Path(out), timm_name, params, golden, n_source, len(sd))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("arch", help="architecture: mixerzoo name (poolformer_s12), mz_ name, or timm name")
    parser.add_argument("checkpoint", help="official checkpoint file (.pth/.pth.tar/.bin/.safetensors)")
    parser.add_argument("outdir", help="hub folder to write (model.safetensors, config.json, README.md)")
    parser.add_argument("--ema", action="store_true", help="prefer the EMA weights (state_dict_ema) if present")
    parser.add_argument("--num-classes", type=int, default=None, help="classifier size if not the default")


def run(args: argparse.Namespace) -> int:
    kwargs = {"num_classes": args.num_classes} if args.num_classes is not None else {}
    try:
        result = convert_checkpoint(args.arch, args.checkpoint, args.outdir, ema=args.ema, model_kwargs=kwargs)
    except (HubError, OSError, KeyError, RuntimeError, ValueError) as e:
        sys.stderr.write(f"mixerzoo convert: error: {one_line(e)}\n")
        return 2
    sys.stdout.write(result.summary() + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mixerzoo.hub.convert", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
