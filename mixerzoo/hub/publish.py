"""Writing hub folders (``save_pretrained``) and publishing them (``push_to_hub``).

A hub folder holds ``model.safetensors``, ``config.json`` (timm's schema + ``requires``), ``README.md`` (model card)
and optionally ``plots/``. Every file is written atomically; ``config.json`` is written last, so a folder with a
config is complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixerzoo.hub import _io
from mixerzoo.hub._config import (
    CONFIG_NAME,
    PICKLE_SUFFIXES,
    README_NAME,
    SHA256_KEY,
    WEIGHTS_NAME,
    UnsafeCheckpointError,
    build_config,
    read_config,
    recorded_sha256,
)
from mixerzoo.hub.card import REPO_ID_PLACEHOLDER, count_gmacs, count_params, render_model_card

__all__ = ["library_version", "push_to_hub", "save_pretrained"]

_logger = logging.getLogger(__name__)

PlotsArg = Mapping[str, "str | os.PathLike[str]"] | Sequence["str | os.PathLike[str]"] | None


def library_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("mixerzoo")
    except PackageNotFoundError:
        import mixerzoo

        return str(getattr(mixerzoo, "__version__", "0+unknown"))


_MODULE_WRAPPERS = ("DataParallel", "DistributedDataParallel", "ModelEma", "ModelEmaV2", "ModelEmaV3")


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside torch.compile / (Distributed)DataParallel / timm EMA wrappers."""
    inner = model._modules.get("_orig_mod")  # torch.compile's OptimizedModule (it forwards attribute reads)
    if inner is None and type(model).__name__ in _MODULE_WRAPPERS:
        inner = model._modules.get("module")
    return _unwrap(inner) if isinstance(inner, nn.Module) else model


def _state_dict_for_safetensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors; tensors sharing storage (tied weights) are cloned so each key is stored."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, v in model.state_dict().items():
        t = v.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) if t.numel() else (id(t), 0)
        if key in seen:
            t = t.clone()
        seen.add(key)
        out[k] = t
    return out


def _plot_items(plots: PlotsArg) -> list[tuple[str, Path]]:
    if plots is None:
        return []
    if isinstance(plots, (str, os.PathLike)):
        plots = [plots]
    items = list(plots.items()) if isinstance(plots, Mapping) else [(Path(p).stem, p) for p in plots]
    out = []
    for caption, p in items:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"plots: {str(p)!r} (caption {caption!r}) is not a file")
        out.append((str(caption), path))
    return out


def save_pretrained(
    model: nn.Module,
    save_dir: str | os.PathLike[str],
    *,
    model_card: Mapping[str, Any] | str | None = None,
    metrics: Mapping[str, Any] | None = None,
    recipe: Any = None,
    plots: PlotsArg = None,
) -> Path:
    """Write ``model`` as a hub folder and return its path.

    Files: ``model.safetensors`` (state dict), ``config.json`` (timm schema: ``architecture`` = the timm registry
    name, ``num_classes``, ``num_features``, ``global_pool``, ``model_args``, ``pretrained_cfg``, plus
    ``requires.mixers``), ``README.md`` (model card) and ``plots/<file>`` for each plot.

    Args:
        model: a model built by ``mixerzoo.create_model`` / ``timm.create_model`` (it needs ``pretrained_cfg``).
        save_dir: folder to write (created if needed; existing files of the same names are replaced atomically).
        model_card: card fields (see :func:`mixerzoo.hub.card.render_model_card`: ``repo_id``, ``description``,
            ``license``, ``datasets``, ``tags``, ``details``, ``citation``), or a complete README text.
        metrics: results, e.g. ``{"top1": 81.2, "top5": 95.6}`` or ``{"imagenet-1k": {"top1": 81.2}}``.
        recipe: training recipe (dataclass, mapping or namespace), shown in the card.
        plots: image files (paths, or ``{caption: path}``) copied to ``plots/`` and shown in the card.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model={type(model).__name__} must be an nn.Module")
    model = _unwrap(model)
    save_dir = Path(save_dir)
    if save_dir.exists() and not save_dir.is_dir():
        raise NotADirectoryError(f"save_dir={str(save_dir)!r} exists and is not a directory")
    config = build_config(model)  # validates JSON before any file is written
    plot_items = _plot_items(plots)
    save_dir.mkdir(parents=True, exist_ok=True)

    import safetensors.torch

    metadata = {"format": "pt", "architecture": str(config["architecture"]), "library": "mixerzoo"}

    digests: dict[str, str] = {}

    def write_weights(tmp: Path) -> None:
        safetensors.torch.save_file(_state_dict_for_safetensors(model), str(tmp), metadata=metadata)
        digests[WEIGHTS_NAME] = _io.sha256_file(tmp)

    _io.write_with(save_dir / WEIGHTS_NAME, write_weights)
    # verified on load (local-dir:, hf-hub:) and before publishing: a flipped bit is an error, not NaN
    config[SHA256_KEY] = digests

    rel_plots = []
    for caption, src in plot_items:
        rel = f"plots/{src.name}"
        _io.atomic_copy(src, save_dir / rel)
        rel_plots.append((caption, rel))

    if isinstance(model_card, str):
        readme = model_card
    else:
        input_size = config.get("pretrained_cfg", {}).get("input_size", (3, 224, 224))
        readme = render_model_card(
            config,
            params=count_params(model),
            gmacs=count_gmacs(model, input_size),
            model_card=model_card,
            metrics=metrics,
            recipe=recipe,
            plots=rel_plots,
        )
    _io.atomic_write_text(save_dir / README_NAME, readme)
    _io.atomic_write_text(save_dir / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    _logger.info("saved %s to %s", config["architecture"], save_dir)
    return save_dir


def _check_folder(folder: Path) -> None:
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"model_or_dir={str(folder)!r} has no {CONFIG_NAME}; write it with save_pretrained")
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"model_or_dir={str(folder)!r} has no {WEIGHTS_NAME}; write it with save_pretrained")
    pickles = sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name.endswith(PICKLE_SUFFIXES)
    )
    if pickles:
        raise UnsafeCheckpointError(
            f"model_or_dir={str(folder)!r} holds pickle files {pickles}; mixerzoo publishes safetensors only "
            "(remove them, or convert with `mixerzoo convert`)"
        )
    config = read_config(folder / CONFIG_NAME)
    if not config.get("architecture"):
        raise ValueError(f"model_or_dir={str(folder)!r}: {CONFIG_NAME} has no 'architecture'")
    digest = recorded_sha256(config, WEIGHTS_NAME, source=str(folder / CONFIG_NAME))
    if digest is not None:  # never publish a file damaged since it was written
        _io.verify_sha256(folder / WEIGHTS_NAME, digest, what=f"model_or_dir={str(folder)!r}")


def _stage(folder: Path, repo_id: str, tmp: Path) -> Path:
    """A copy of ``folder`` (hard links where possible) with the card's repo-id placeholder filled in."""
    for src in folder.rglob("*"):
        if not src.is_file() or src.name.startswith("."):
            continue
        dst = tmp / src.relative_to(folder)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.name == README_NAME and src.parent == folder:
            dst.write_text(src.read_text(encoding="utf-8").replace(REPO_ID_PLACEHOLDER, repo_id), encoding="utf-8")
            continue
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return tmp


def push_to_hub(
    model_or_dir: nn.Module | str | os.PathLike[str],
    repo_id: str,
    *,
    revision: str | None = None,
    commit_message: str = "Upload model with mixerzoo",
    private: bool = False,
    token: str | bool | None = None,
) -> Any:
    """Publish a model (saved first with :func:`save_pretrained`) or a hub folder to ``repo_id``.

    Creates the repo if needed (``exist_ok``), the branch ``revision`` if given, and uploads the folder in one
    commit. Returns huggingface_hub's ``CommitInfo`` (``.oid`` is the commit sha, ``.commit_url`` its URL).
    """
    from huggingface_hub import HfApi

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"repo_id={repo_id!r} must look like 'org/name'")
    api = HfApi(token=token, library_name="mixerzoo", library_version=library_version())
    with tempfile.TemporaryDirectory(prefix="mixerzoo-push-") as tmp:
        if isinstance(model_or_dir, nn.Module):
            folder = save_pretrained(model_or_dir, Path(tmp) / "model", model_card={"repo_id": repo_id})
        else:
            src = Path(model_or_dir)
            if not src.is_dir():
                raise NotADirectoryError(f"model_or_dir={str(model_or_dir)!r} is neither an nn.Module nor a folder")
            _check_folder(src)
            folder = _stage(src, repo_id, Path(tmp) / "staged")
        _check_folder(folder)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            revision=revision,
            commit_message=commit_message,
            ignore_patterns=[".*", "**/.*", "*.tmp"],
        )
    _logger.info("published %s at %s", repo_id, getattr(info, "oid", info))
    return info
