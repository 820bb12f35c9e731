"""Data for the recipe: sources (bundled digits, ImageFolder, CSV/JSON manifest), albumentations pipelines
resolved from the model's pretrained cfg, and deterministic loaders.

Determinism: the sample order of epoch ``e`` is a function of ``(seed, e)`` (DistributedSampler's permutation),
and every sample's augmentation is seeded from ``(seed, e, index)``, so a resumed run skips the consumed
batches and sees exactly the images an uninterrupted run would, whatever the number of workers.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import random
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info
from torch.utils.data.distributed import DistributedSampler

from .recipe import Recipe, RecipeError

__all__ = [
    "IMG_EXTENSIONS",
    "DataConfig",
    "HFSource",
    "ImageDataset",
    "Source",
    "UnreadableImageWarning",
    "WdsSource",
    "WdsStream",
    "braceexpand",
    "build_loader",
    "build_transform",
    "digits_sources",
    "open_sources",
    "resolve_data_config",
]

_log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm")
_VAL_DIRS = ("val", "validation", "valid", "test")


class UnreadableImageWarning(UserWarning):
    """Images that could not be decoded were skipped."""


# ----------------------------------------------------------------------------------------------- sources


@dataclass
class Source:
    """A list of samples: either file paths or in-memory HWC uint8 arrays, with integer labels."""

    items: list[Any]
    labels: list[int]
    classes: list[str]
    name: str

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> np.ndarray:
        """HWC uint8 RGB image (grayscale, palette, RGBA, CMYK, 16-bit are converted)."""
        item = self.items[index]
        if isinstance(item, np.ndarray):
            return item
        return _decode(item)


def _decode(path: str | Path | io.BytesIO) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return _rgb_array(im)


def _rgb_array(im: Any) -> np.ndarray:
    """HWC uint8 RGB array of a PIL image (16-bit and 32-bit integer images are rescaled to 0..255)."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray((arr * (255.0 / max(arr.max(), 1.0))).astype(np.uint8))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def _check(path: str) -> str | None:
    """None if the image decodes, else the reason."""
    try:
        _decode(path)
    except Exception as e:  # any decoder failure means "skip this file"
        return f"{type(e).__name__}: {e}"
    return None


def _filter_readable(paths: list[str], labels: list[int], where: str, verify: bool = True
                     ) -> tuple[list[str], list[int]]:
    """Drop unreadable images, with a count and ONE warning."""
    if not paths or not verify:
        return paths, labels
    with ThreadPoolExecutor(max_workers=4) as pool:
        errors = list(pool.map(_check, paths, chunksize=64))
    bad = [i for i, e in enumerate(errors) if e is not None]
    if not bad:
        return paths, labels
    first = bad[0]
    warnings.warn(
        f"{where}: skipped {len(bad)} unreadable image(s) of {len(paths)} (first: {paths[first]}: {errors[first]})",
        UnreadableImageWarning,
        stacklevel=3,
    )
    keep = [i for i, e in enumerate(errors) if e is None]
    return [paths[i] for i in keep], [labels[i] for i in keep]


def digits_sources(img_size: int = 32) -> tuple[Source, Source]:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), upsampled to ``img_size``; no download.

    Fixed stratified split: a seeded random 20% of each class is the test set (359 images).
    """
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    targets = digits.target.astype(int)
    arrays = []
    for img in images:
        up = cv2.resize(img, (img_size, img_size), interpolation=cv2.INTER_CUBIC)
        arrays.append(np.repeat(up[:, :, None], 3, axis=2))
    train_idx, test_idx = [], []
    rng = np.random.RandomState(0)  # fixed split, identical on every platform
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(targets == c))
        n_test = round(0.2 * len(idx))
        test_idx += idx[:n_test].tolist()
        train_idx += idx[n_test:].tolist()
    classes = [str(c) for c in range(10)]
    train_idx.sort()
    test_idx.sort()

    def mk(ids: list[int], split: str) -> Source:
        return Source([arrays[i] for i in ids], [int(targets[i]) for i in ids], classes, f"digits/{split}")

    return mk(train_idx, "train"), mk(test_idx, "test")


def _scan_folder(root: Path, classes: list[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    if not root.is_dir():
        raise RecipeError(f"data: directory {str(root)!r} does not exist")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise RecipeError(f"data: directory {str(root)!r} has no class folders (expected <root>/<class>/<image>)")
    classes = classes or found
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = root / name
        files = sorted(
            str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
        ) if folder.is_dir() else []
        if not files:
            raise RecipeError(
                f"data: class folder {str(folder)!r} has no images (extensions: {', '.join(IMG_EXTENSIONS)})"
            )
        paths += files
        labels += [label] * len(files)
    return paths, labels, classes


def _split(paths: list[Any], labels: list[int], frac: float) -> tuple[list[int], list[int]]:
    """Deterministic stratified split (fixed seed 0, so evaluation is comparable across recipe seeds)."""
    rng = np.random.default_rng(0)
    train, val = [], []
    labels_arr = np.asarray(labels)
    for c in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == c)
        rng.shuffle(idx)
        n_val = int(round(frac * len(idx))) if len(idx) > 1 else 0
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    return sorted(train), sorted(val)


def _read_manifest(path: Path) -> tuple[list[str], list[str], list[str | None]]:
    """(paths, labels as strings, split or None) from a CSV (header: path,label[,split]) or JSON manifest."""
    if not path.is_file():
        raise RecipeError(f"data: manifest {str(path)!r} does not exist")
    rows: list[dict[str, Any]]
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise RecipeError(f"data: manifest {str(path)!r} is not valid JSON ({e.msg} at line {e.lineno})") from None
        rows = raw.get("samples", []) if isinstance(raw, dict) else raw
    else:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    if not rows:
        raise RecipeError(f"data: manifest {str(path)!r} lists no samples")
    if not isinstance(rows[0], dict) or "path" not in rows[0] or "label" not in rows[0]:
        raise RecipeError(f"data: manifest {str(path)!r} needs 'path' and 'label' fields per sample")
    base = path.parent
    paths = [str((base / str(r["path"])).resolve()) if not Path(str(r["path"])).is_absolute() else str(r["path"])
             for r in rows]
    return paths, [str(r["label"]) for r in rows], [r.get("split") or None for r in rows]


def _class_index(labels: Sequence[str]) -> list[str]:
    uniq = sorted(set(labels))
    if all(u.lstrip("-").isdigit() for u in uniq):
        return [str(i) for i in sorted(int(u) for u in uniq)]
    return uniq


def open_sources(data: str, val_data: str | None = None, *, val_split: float = 0.1, digits_size: int = 32,
                 verify: bool = True) -> tuple[Source, Source]:
    """Resolve a data spec into (train, val) sources.

    ``data`` is one of

    - ``'digits'``: scikit-learn's bundled digits;
    - ``'pathfinder:SIZE[?n=N&val=N&seed=S&KNOB=V]'``: the procedural Pathfinder task (two classes, no download;
      see :mod:`mixerzoo.compare.pathfinder`);
    - an ImageFolder directory (``<root>/<class>/*`` with optional ``train/`` and ``val/`` subfolders);
    - a ``.csv``/``.json`` manifest (fields ``path``, ``label``, optional ``split``);
    - ``hfds:PATH[?image=COL&label=COL&split=NAME&val=NAME&builder=NAME]``: Hugging Face ``datasets``: a
      ``save_to_disk`` folder, a folder or file of parquet/arrow, an image folder (``imagefolder``), or a hub
      dataset name. Image and label columns are found by feature type (``Image``, ``ClassLabel``) or common
      names; the validation split is ``val``/``validation``/``valid``/``test`` if present;
    - ``wds:SHARDS[?n=N&classes=C&image=jpg,png&label=cls&shuffle=1000]``: WebDataset tar shards, streamed
      (``SHARDS`` is a brace pattern such as ``/data/train-{0000..0146}.tar``, several joined by ``::``, or a
      folder; ``http(s)://`` and ``pipe:COMMAND`` shards need ``n`` and ``classes``; local shards are counted
      from timm's ``_info.json`` or by reading their headers). Without ``val_data`` the last
      ``val_split`` fraction of the shards is held out.

    timm's ``hfds/...`` and ``wds/...`` spellings are accepted too. With ``verify`` every file of a folder or
    manifest is decoded once (4 threads) and unreadable ones are dropped with one warning; without it (and for
    ``hfds:``/``wds:`` data), a sample that fails later is replaced by the next one (also warned once).
    """
    kind = _scheme(data)
    if kind == "hfds":
        return _open_hf(data, val_data, val_split, verify)
    if kind == "wds":
        return _open_wds(data, val_data, val_split, verify)
    if data == "digits" or data.startswith("pathfinder:"):
        if data == "digits":
            train, val = digits_sources(digits_size)
        else:  # procedural, no download (mixerzoo.compare.pathfinder)
            from mixerzoo.compare.pathfinder import pathfinder_sources

            train, val = pathfinder_sources(data)
        if val_data is not None:
            val = _open_single(val_data, train.classes, verify)
        return train, val
    root = Path(data)
    if root.suffix.lower() in (".csv", ".json"):
        paths, labels_s, splits = _read_manifest(root)
        classes = _class_index(labels_s)
        lookup = {c: i for i, c in enumerate(classes)}
        labels = [lookup[s] for s in labels_s]
        if any(s is not None for s in splits) and val_data is None:
            tr = [i for i, s in enumerate(splits) if s in (None, "train")]
            va = [i for i, s in enumerate(splits) if s in _VAL_DIRS]
        else:
            tr, va = _split(paths, labels, val_split) if val_data is None else (list(range(len(paths))), [])
        tp, tl = _filter_readable([paths[i] for i in tr], [labels[i] for i in tr], f"data {str(root)!r}", verify)
        train = Source(tp, tl, classes, f"{root.name}/train")
        if val_data is not None:
            return train, _open_single(val_data, classes, verify)
        vp, vl = _filter_readable([paths[i] for i in va], [labels[i] for i in va], f"data {str(root)!r}", verify)
        return train, Source(vp, vl, classes, f"{root.name}/val")
    if not root.exists():
        raise RecipeError(f"data: {data!r} is neither 'digits', an existing directory, a .csv/.json manifest, "
                          "hfds:PATH, wds:SHARDS nor pathfinder:SIZE")
    split_dirs = {p.name: p for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}
    val_dir = next((split_dirs[n] for n in _VAL_DIRS if n in split_dirs), None)
    if "train" in split_dirs and val_dir is not None and val_data is None:
        paths, labels, classes = _scan_folder(split_dirs["train"])
        tp, tl = _filter_readable(paths, labels, f"data {str(split_dirs['train'])!r}", verify)
        return Source(tp, tl, classes, f"{root.name}/train"), _open_single(str(val_dir), classes, verify)
    paths, labels, classes = _scan_folder(root)
    paths, labels = _filter_readable(paths, labels, f"data {str(root)!r}", verify)
    if val_data is not None:
        return Source(paths, labels, classes, root.name), _open_single(val_data, classes, verify)
    tr, va = _split(paths, labels, val_split)
    return (Source([paths[i] for i in tr], [labels[i] for i in tr], classes, f"{root.name}/train"),
            Source([paths[i] for i in va], [labels[i] for i in va], classes, f"{root.name}/val"))


def _open_single(spec: str, classes: list[str], verify: bool = True) -> Source:
    """A validation source whose class names must be a subset of ``classes``."""
    kind = _scheme(spec)
    if kind == "hfds":
        return _open_hf_single(spec, classes)
    if kind == "wds":
        return _open_wds_single(spec, classes)
    p = Path(spec)
    if p.suffix.lower() in (".csv", ".json"):
        paths, labels_s, _ = _read_manifest(p)
    else:
        if not p.is_dir():
            raise RecipeError(f"val_data: directory {spec!r} does not exist")
        paths, idx, names = _scan_folder(p)
        labels_s = [names[i] for i in idx]
    unknown = sorted(set(labels_s) - set(classes))
    if unknown:
        raise RecipeError(f"val_data {spec!r}: classes {unknown[:5]} are not among the training classes")
    lookup = {c: i for i, c in enumerate(classes)}
    vp, vl = _filter_readable(paths, [lookup[s] for s in labels_s], f"val_data {spec!r}", verify)
    return Source(vp, vl, classes, p.name)


# ----------------------------------------------------------------------------------------------- hfds: / wds:

_HF_OPTIONS = ("image", "label", "split", "val", "builder")
_WDS_OPTIONS = ("image", "label", "n", "classes", "shuffle")
_HF_IMAGE_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp", "picture", "photo")
_HF_LABEL_NAMES = ("label", "labels", "cls", "class", "target", "fine_label", "y")
_WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "bmp", "tif", "tiff")


def _scheme(spec: str) -> str | None:
    """``'hfds'`` / ``'wds'`` for ``hfds:`` / ``wds:`` specs (timm's ``hfds/`` / ``wds/`` spellings too, unless a
    local path of that name exists), else None."""
    for kind in ("hfds", "wds"):
        if spec.startswith(kind + ":"):
            return kind
        if spec.startswith(kind + "/") and not Path(spec).exists():
            return kind
    return None


def _parse_spec(spec: str, allowed: Sequence[str]) -> tuple[str, dict[str, str]]:
    """``'hfds:PATH?image=img&label=y'`` → (``'PATH'``, ``{'image': 'img', 'label': 'y'}``)."""
    kind = _scheme(spec) or spec.split(":", 1)[0]
    body = spec[len(kind) + 1 :]
    path, _, query = body.partition("?")
    opts: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if key not in allowed or not eq or not value:
            raise RecipeError(f"data {spec!r}: unknown or empty option {part!r} (options: "
                              f"{', '.join(k + '=...' for k in allowed)})")
        opts[key] = value
    if not path:
        raise RecipeError(f"data {spec!r}: no path after the prefix")
    return path, opts


def _int_option(spec: str, opts: dict[str, str], key: str, minimum: int) -> int | None:
    if key not in opts:
        return None
    try:
        value = int(opts[key])
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise RecipeError(f"data {spec!r}: option {key} must be an integer >= {minimum}, got {opts[key]!r}")
    return value


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


# Hugging Face datasets ----------------------------------------------------------------------------------


@dataclass
class HFSource(Source):
    """Rows of a Hugging Face ``datasets.Dataset``: ``items`` are row numbers, ``table`` holds the image column."""

    table: Any = None
    column: str = "image"

    def load(self, index: int) -> np.ndarray:
        return _hf_image(self.table[int(self.items[index])][self.column])


def _hf_image(value: Any) -> np.ndarray:
    """An image cell (PIL image, ``{'bytes', 'path'}``, bytes, path, or an HWC/HW array) as HWC uint8 RGB."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return _decode(io.BytesIO(value))
    if isinstance(value, (str, Path)):
        return _decode(value)
    if hasattr(value, "mode") and hasattr(value, "convert"):  # PIL image (datasets.Image decodes to one)
        return _rgb_array(value)
    arr = np.asarray(value)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"image cell of shape {arr.shape} is not HW, HWC or CHW")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[:, :, :3])


def _hf_load(spec: str) -> tuple[Any, dict[str, str]]:
    """The ``datasets`` object for a ``hfds:`` spec: a ``save_to_disk`` folder (``load_from_disk``), a folder or
    file of parquet/arrow (or images: ``imagefolder``) read by ``load_dataset``, or a dataset name on the hub."""
    path, opts = _parse_spec(spec, _HF_OPTIONS)
    try:
        import datasets
    except ImportError:
        raise RecipeError(f"data {spec!r}: reading Hugging Face datasets needs the 'datasets' package "
                          "(pip install datasets)") from None
    p = Path(path).expanduser()
    builder = opts.get("builder")
    try:
        if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()):
            obj = datasets.load_from_disk(str(p))
        elif p.is_dir():
            obj = datasets.load_dataset(builder, data_dir=str(p)) if builder else datasets.load_dataset(str(p))
        elif p.is_file():
            kind = builder or {".parquet": "parquet", ".arrow": "arrow"}.get(p.suffix.lower())
            if kind is None:
                raise RecipeError(f"data {spec!r}: a single file must be .parquet or .arrow (or give ?builder=NAME)")
            obj = datasets.load_dataset(kind, data_files=str(p))
        else:  # a dataset name on the Hugging Face hub (needs the network, or a filled cache)
            obj = datasets.load_dataset(builder, data_dir=path) if builder else datasets.load_dataset(path)
    except RecipeError:
        raise
    except Exception as err:  # noqa: BLE001 - datasets raises many types; the user gets one line
        raise RecipeError(f"data {spec!r}: could not load the dataset ({_one_line(err)})") from None
    return obj, opts


def _hf_splits(obj: Any, opts: dict[str, str], spec: str) -> tuple[Any, Any | None]:
    """(train split, validation split or None) of a Dataset or DatasetDict."""
    if not isinstance(obj, dict):  # a single Dataset (DatasetDict is a dict)
        if "split" in opts or "val" in opts:
            raise RecipeError(f"data {spec!r}: the dataset has no splits, so split=/val= do not apply")
        return obj, None
    names = list(obj)
    train_name = opts.get("split") or ("train" if "train" in obj else names[0] if len(names) == 1 else None)
    if train_name is None or train_name not in obj:
        raise RecipeError(f"data {spec!r}: no split {train_name or 'train'!r} (splits: {names}); choose one with "
                          "?split=NAME")
    val_name = opts.get("val") or next((n for n in _VAL_DIRS if n in obj and n != train_name), None)
    if val_name is not None and val_name not in obj:
        raise RecipeError(f"data {spec!r}: no split {val_name!r} (splits: {names})")
    return obj[train_name], (obj[val_name] if val_name else None)


def _hf_columns(ds: Any, opts: dict[str, str], spec: str) -> tuple[str, str]:
    import datasets

    feats = ds.features
    cols = list(feats)
    image = opts.get("image") or next((c for c in cols if isinstance(feats[c], datasets.Image)), None) or next(
        (c for c in _HF_IMAGE_NAMES if c in feats), None)
    label = opts.get("label") or next((c for c in cols if isinstance(feats[c], datasets.ClassLabel)), None) or next(
        (c for c in _HF_LABEL_NAMES if c in feats), None)
    for what, col in (("image", image), ("label", label)):
        if col is None:
            raise RecipeError(f"data {spec!r}: no {what} column found (columns: {cols}); name it with ?{what}=COLUMN")
        if col not in feats:
            raise RecipeError(f"data {spec!r}: {what} column {col!r} does not exist (columns: {cols})")
    return image, label


def _hf_source(ds: Any, spec: str, opts: dict[str, str], name: str, classes: list[str] | None = None) -> HFSource:
    """A Source over every row of ``ds``; labels are indices into ``classes`` (taken from the data if None)."""
    import datasets

    image, label = _hf_columns(ds, opts, spec)
    feat = ds.features[label]
    raw = list(ds.select_columns([label])[label])
    if isinstance(feat, datasets.ClassLabel):
        names = [str(n) for n in feat.names]
        values = [names[int(v)] for v in raw]
    else:
        values = [str(v) for v in raw]
        names = _class_index(values)
    if classes is None:
        classes = names
    unknown = sorted(set(values) - set(classes))
    if unknown:
        raise RecipeError(f"data {spec!r}: classes {unknown[:5]} are not among the training classes")
    lookup = {c: i for i, c in enumerate(classes)}
    return HFSource(list(range(len(ds))), [lookup[v] for v in values], list(classes), name,
                    table=ds.select_columns([image]), column=image)


def _hf_subset(src: HFSource, rows: list[int], name: str) -> HFSource:
    return HFSource([src.items[i] for i in rows], [src.labels[i] for i in rows], src.classes, name,
                    table=src.table, column=src.column)


def _open_hf(spec: str, val_data: str | None, val_split: float, verify: bool) -> tuple[Source, Source]:
    obj, opts = _hf_load(spec)
    train_ds, val_ds = _hf_splits(obj, opts, spec)
    stem = Path(_parse_spec(spec, _HF_OPTIONS)[0]).name
    train = _hf_source(train_ds, spec, opts, f"{stem}/train")
    if val_data is not None:
        return train, _open_single(val_data, train.classes, verify)
    if val_ds is not None:
        return train, _hf_source(val_ds, spec, opts, f"{stem}/val", train.classes)
    tr, va = _split(train.items, train.labels, val_split)
    return _hf_subset(train, tr, f"{stem}/train"), _hf_subset(train, va, f"{stem}/val")


def _open_hf_single(spec: str, classes: list[str]) -> Source:
    """A validation source from a ``hfds:`` spec: its validation split if it has one, else its train split."""
    obj, opts = _hf_load(spec)
    train_ds, val_ds = _hf_splits(obj, opts, spec)
    return _hf_source(val_ds if val_ds is not None else train_ds, spec, opts, Path(_parse_spec(
        spec, _HF_OPTIONS)[0]).name, classes)


# WebDataset shards ---------------------------------------------------------------------------------------


def braceexpand(pattern: str) -> list[str]:
    """``'s-{000..002}.tar'`` → ``['s-000.tar', 's-001.tar', 's-002.tar']``; ``'{a,b}'`` lists; several groups
    multiply (WebDataset's shard-pattern syntax; nested braces are not supported)."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    end = pattern.find("}", start)
    if end < 0:
        raise RecipeError(f"data: unbalanced '{{' in shard pattern {pattern!r}")
    head, body, tail = pattern[:start], pattern[start + 1 : end], pattern[end + 1 :]
    lo, sep, hi = body.partition("..")
    if sep and lo.lstrip("-").isdigit() and hi.lstrip("-").isdigit():
        a, b = int(lo), int(hi)
        width = max(len(lo), len(hi)) if (len(lo) > 1 and lo[0] == "0") or (len(hi) > 1 and hi[0] == "0") else 0
        values = [str(i).zfill(width) for i in (range(a, b + 1) if a <= b else range(a, b - 1, -1))]
    else:
        values = body.split(",")
    rest = braceexpand(tail)
    return [head + v + r for v in values for r in rest]


def _is_remote(url: str) -> bool:
    return url.startswith(("pipe:", "http://", "https://"))


def _shard_list(path: str, spec: str) -> list[str]:
    """Shard URLs: brace patterns joined by ``::``, or a local folder (its ``*.tar`` files, sorted)."""
    p = Path(path).expanduser()
    if p.is_dir():
        shards = sorted(str(s) for s in p.iterdir() if s.name.endswith((".tar", ".tar.gz", ".tgz")))
        if not shards:
            raise RecipeError(f"data {spec!r}: folder {path!r} has no .tar shards")
        return shards
    shards = [s for part in path.split("::") for s in braceexpand(part)]
    shards = [s[len("file://"):] if s.startswith("file://") else s for s in shards]
    missing = [s for s in shards if not _is_remote(s) and not Path(s).expanduser().is_file()]
    if missing:
        raise RecipeError(f"data {spec!r}: shard {missing[0]!r} does not exist ({len(missing)} of {len(shards)} "
                          "missing)")
    return shards


def _split_key(name: str) -> tuple[str, str] | None:
    """WebDataset member name → (sample key, extension): the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None
    return (folder + "/" + stem if folder else stem), ext.lower()


class _Shard:
    """A shard opened for sequential reading: a local file, ``http(s)://`` or ``pipe:COMMAND`` (its stdout)."""

    def __init__(self, url: str) -> None:
        self.url, self.proc = url, None
        if url.startswith("pipe:"):
            import subprocess

            self.proc = subprocess.Popen(url[len("pipe:"):], shell=True, stdout=subprocess.PIPE)
            self.fh: Any = self.proc.stdout
        elif url.startswith(("http://", "https://")):
            import urllib.request

            self.fh = urllib.request.urlopen(url)  # noqa: S310 - the user's own shard URL
        else:
            self.fh = open(Path(url).expanduser(), "rb")  # noqa: SIM115 - closed in close()

    def samples(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        """(key, {extension: bytes}) for each group of consecutive members sharing a key."""
        import tarfile

        key, group = None, {}
        with tarfile.open(fileobj=self.fh, mode="r|*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                split = _split_key(member.name)
                if split is None:
                    continue
                k, ext = split
                if k != key and group:
                    yield key, group  # type: ignore[misc]
                    group = {}
                key = k
                fh = tf.extractfile(member)
                group[ext] = fh.read() if fh is not None else b""
        if group:
            yield key, group  # type: ignore[misc]

    def close(self) -> None:
        self.fh.close()
        if self.proc is not None:
            self.proc.wait()


def _pick(sample: dict[str, bytes], exts: Sequence[str]) -> bytes | None:
    return next((sample[e] for e in exts if e in sample), None)


def _scan_shard(url: str, image_exts: Sequence[str], label_ext: str) -> tuple[int, int]:
    """(samples with an image and a label, largest label) of a local shard; reads headers and labels only."""
    import tarfile

    keys: dict[str, set[str]] = {}
    top = -1
    with tarfile.open(Path(url).expanduser(), mode="r:*") as tf:
        for member in tf:
            split = _split_key(member.name) if member.isfile() else None
            if split is None:
                continue
            keys.setdefault(split[0], set()).add(split[1])
            if split[1] == label_ext:
                fh = tf.extractfile(member)
                top = max(top, _label_value(fh.read() if fh else b"", url, split[0]))
    n = sum(1 for exts in keys.values() if label_ext in exts and any(e in exts for e in image_exts))
    return n, top


def _label_value(raw: bytes, url: str, key: str) -> int:
    text = raw.decode("utf-8", "replace").strip()
    try:
        return int(text)
    except ValueError:
        raise RecipeError(f"data: shard {url!r} sample {key!r}: label {text[:20]!r} is not an integer") from None


def _wds_info(shards: list[str]) -> tuple[dict[str, int], int | None]:
    """Per-shard sample counts and the class count from timm's ``_info.json`` next to local shards, if any."""
    folder = Path(shards[0]).expanduser().parent
    for name in ("_info.json", "info.json"):
        f = folder / name
        if f.is_file():
            try:
                info = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                return {}, None
            lengths: dict[str, int] = {}
            for split in (info.get("splits") or {}).values():
                for fn, n in zip(split.get("filenames", ()), split.get("shard_lengths", ())):
                    lengths[str(folder / fn)] = int(n)
            nc = info.get("num_classes")
            return lengths, int(nc) if isinstance(nc, int) else None
    return {}, None


@dataclass
class WdsSource(Source):
    """WebDataset tar shards, streamed (no random access): see :class:`WdsStream`."""

    shards: list[str] = field(default_factory=list)
    count: int = 0
    image_exts: tuple[str, ...] = _WDS_IMAGE_EXTS
    label_ext: str = "cls"
    shuffle: int = 1000

    def __len__(self) -> int:
        return self.count

    def load(self, index: int) -> np.ndarray:
        raise RecipeError(f"data {self.name!r}: WebDataset shards are streamed, not indexed (use build_loader)")


def _wds_open(spec: str) -> tuple[WdsSource, list[int] | None]:
    """The source for a ``wds:`` spec and its per-shard counts (None when they are unknown: remote shards)."""
    path, opts = _parse_spec(spec, _WDS_OPTIONS)
    shards = _shard_list(path, spec)
    image_exts = tuple(e.lower().lstrip(".") for e in opts["image"].split(",")) if "image" in opts else _WDS_IMAGE_EXTS
    label_ext = opts.get("label", "cls").lower().lstrip(".")
    n = _int_option(spec, opts, "n", 1)
    shuffle = _int_option(spec, opts, "shuffle", 0)
    classes: list[str] | None = None
    if "classes" in opts:
        nc = _int_option(spec, opts, "classes", 1) if opts["classes"].isdigit() else None
        classes = [str(i) for i in range(nc)] if nc is not None else opts["classes"].split(",")
    counts: list[int] | None = None
    if not any(_is_remote(s) for s in shards):
        lengths, nc_info = _wds_info(shards)
        if classes is None and nc_info is not None:
            classes = [str(i) for i in range(nc_info)]
        if all(str(Path(s).expanduser()) in lengths for s in shards):
            counts = [lengths[str(Path(s).expanduser())] for s in shards]
        elif n is None or classes is None:
            _log.info("data %s: scanning %d shard(s) for sample and class counts (give ?n=&classes= to skip)",
                      spec, len(shards))
            scans = [_scan_shard(s, image_exts, label_ext) for s in shards]
            counts = [c for c, _ in scans]
            if classes is None:
                classes = [str(i) for i in range(max(t for _, t in scans) + 1)]
    if n is None:
        if counts is None:
            raise RecipeError(f"data {spec!r}: remote shards need the sample count and classes: add "
                              "?n=NUM_SAMPLES&classes=NUM_CLASSES")
        n = sum(counts)
    if classes is None:
        raise RecipeError(f"data {spec!r}: remote shards need the class count: add ?classes=NUM_CLASSES")
    if n == 0:
        raise RecipeError(f"data {spec!r}: no samples with an image ({', '.join(image_exts)}) and a .{label_ext} "
                          "label in the shards")
    name = Path(braceexpand(path.split("::")[0])[0]).name if not Path(path).is_dir() else Path(path).name
    return WdsSource([], [], classes, name, shards=shards, count=n, image_exts=image_exts, label_ext=label_ext,
                     shuffle=1000 if shuffle is None else shuffle), counts


def _open_wds(spec: str, val_data: str | None, val_split: float, verify: bool) -> tuple[Source, Source]:
    src, counts = _wds_open(spec)
    if val_data is not None:
        return src, _open_single(val_data, src.classes, verify)
    if counts is None or len(src.shards) < 2:
        raise RecipeError(f"data {spec!r}: give val_data (a separate wds: spec); the validation split of a stream "
                          "is held-out shards, which needs at least 2 local shards")
    n_val = min(len(src.shards) - 1, max(1, int(round(val_split * len(src.shards)))))
    k = len(src.shards) - n_val
    tr = dataclasses.replace(src, shards=src.shards[:k], count=sum(counts[:k]), name=f"{src.name}/train")
    va = dataclasses.replace(src, shards=src.shards[k:], count=sum(counts[k:]), name=f"{src.name}/val")
    return tr, va


def _open_wds_single(spec: str, classes: list[str]) -> Source:
    src, _ = _wds_open(spec)
    named = src.classes != [str(i) for i in range(len(src.classes))]  # labels are indices; names only if given
    if len(src.classes) > len(classes) or (named and src.classes != classes[: len(src.classes)]):
        raise RecipeError(f"val_data {spec!r}: its {len(src.classes)} classes are not among the "
                          f"{len(classes)} training classes")
    return dataclasses.replace(src, classes=list(classes))


# ----------------------------------------------------------------------------------------------- transforms


@dataclass(frozen=True)
class DataConfig:
    """What the pipelines need from the model's pretrained cfg (after recipe overrides)."""

    img_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def resolve_data_config(model: torch.nn.Module, recipe: Recipe) -> DataConfig:
    """Input size, crop_pct, interpolation, mean, std from ``model.pretrained_cfg``; recipe fields override."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    size = recipe.img_size or int(cfg["input_size"][-1])
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    if recipe.in_chans != len(mean):
        mean, std = (sum(mean) / len(mean),) * recipe.in_chans, (sum(std) / len(std),) * recipe.in_chans
    return DataConfig(
        img_size=size,
        crop_pct=float(recipe.crop_pct if recipe.crop_pct is not None else cfg.get("crop_pct", 0.875)),
        interpolation=recipe.interpolation or str(cfg.get("interpolation", "bicubic")),
        mean=mean,
        std=std,
    )


def _cv2_interp(name: str) -> int:
    import cv2

    table = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST,
             "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4, "random": cv2.INTER_CUBIC}
    if name not in table:
        raise RecipeError(f"interpolation must be one of {sorted(table)}, got {name!r}")
    return table[name]


def augment_ops(magnitude: int) -> list[Any]:
    """RandAugment-like op list for ``A.SomeOf`` (albumentations 2.x has no RandAugment). ``magnitude`` 0..10."""
    import albumentations as A

    m = magnitude / 10.0
    return [
        A.Affine(rotate=(-30 * m, 30 * m), p=1.0),
        A.Affine(shear={"x": (-17 * m, 17 * m), "y": (0, 0)}, p=1.0),
        A.Affine(shear={"x": (0, 0), "y": (-17 * m, 17 * m)}, p=1.0),
        A.Affine(translate_percent={"x": (-0.45 * m, 0.45 * m), "y": (0, 0)}, p=1.0),
        A.Affine(translate_percent={"x": (0, 0), "y": (-0.45 * m, 0.45 * m)}, p=1.0),
        A.Equalize(p=1.0),
        A.AutoContrast(p=1.0),
        A.Posterize(num_bits=(max(1, int(8 - 4 * m)), 8), p=1.0),
        A.Solarize(threshold_range=(1.0 - 0.5 * m, 1.0), p=1.0),
        A.Sharpen(alpha=(0.1, max(0.1, 0.9 * m)), p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.9 * m * 0.5, contrast_limit=0.9 * m * 0.5, p=1.0),
        A.ColorJitter(brightness=0, contrast=0, saturation=0.9 * m, hue=0, p=1.0),
    ]


def build_transform(cfg: DataConfig, recipe: Recipe | None = None, *, train: bool) -> Any:
    """albumentations pipeline on HWC uint8 RGB arrays → CHW float tensor.

    train: random-resized crop, flip, ``A.SomeOf`` augment policy, normalize, random erasing.
    eval: resize the short side to ``img_size / crop_pct``, centre crop ``img_size``, normalize.
    """
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    interp = _cv2_interp(cfg.interpolation)
    size = (cfg.img_size, cfg.img_size)
    norm = A.Normalize(mean=cfg.mean, std=cfg.std, max_pixel_value=255.0)
    if not train:
        resize = int(round(cfg.img_size / max(cfg.crop_pct, 1e-6)))
        return A.Compose([A.SmallestMaxSize(max_size=resize, interpolation=interp), A.CenterCrop(*size), norm,
                          ToTensorV2()])
    r = recipe or Recipe()
    ops: list[Any] = [A.RandomResizedCrop(size=size, scale=r.scale, ratio=r.ratio, interpolation=interp)]
    if r.hflip > 0:
        ops.append(A.HorizontalFlip(p=r.hflip))
    if r.aug == "rand" and r.aug_ops > 0:
        ops.append(A.SomeOf(augment_ops(r.aug_magnitude), n=r.aug_ops, replace=False, p=1.0))
    ops.append(norm)
    if r.reprob > 0:
        ops.append(A.Erasing(scale=(0.02, 0.33), ratio=(0.3, 3.3), fill="random", p=r.reprob))
    ops.append(ToTensorV2())
    return A.Compose(ops)


# ----------------------------------------------------------------------------------------------- dataset + loader


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed & 0xFFFFFFFF) * 1_000_003 + epoch) * 1_000_000_007 + index


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """A Source plus a transform; sample ``i`` of epoch ``e`` is augmented with a seed from (seed, e, i)."""

    def __init__(self, source: Source, transform: Any, *, seed: int = 0, in_chans: int = 3) -> None:
        self.source = source
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.in_chans = in_chans
        self._warned = False
        self.failures = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        n = len(self.source)
        for k in range(min(n, 16)):
            i = (index + k) % n
            try:
                return self.source.load(i), self.source.labels[i]
            except Exception as e:  # a file that passed the scan but fails now (truncated, removed)
                self.failures += 1
                if not self._warned:
                    self._warned = True
                    warnings.warn(f"{self.source.name}: could not decode {self.source.items[i]} ({e}); "
                                  "substituting the next image (warned once)", UnreadableImageWarning, stacklevel=2)
        raise RecipeError(f"data {self.source.name!r}: 16 consecutive images failed to decode near index {index}")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, label = self._load(index)
        return _apply(img, label, self.transform, _sample_seed(self.seed, self.epoch, index), self.in_chans)


def _apply(img: np.ndarray, label: int, transform: Any, seed: int, in_chans: int) -> tuple[torch.Tensor, int]:
    """Channel conversion and the transform, seeded with ``seed``."""
    if in_chans == 1:
        img = img.mean(axis=2, keepdims=True).astype(np.uint8)
    elif in_chans != 3:
        raise RecipeError(f"in_chans must be 1 or 3 for image data, got {in_chans}")
    if transform is None:
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), label
    # one generator pair per sample (Compose.set_random_seed would build one per transform: ~50x slower)
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return transform(image=img)["image"], label


class _SkipSampler(Sampler[int]):
    """Indices of a DistributedSampler for one epoch, minus the first ``skip`` (already consumed)."""

    def __init__(self, inner: DistributedSampler[Any], skip: int) -> None:
        self.inner, self.skip = inner, skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.inner)[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)


class _ShardSampler(Sampler[int]):
    """Evaluation shard without padding: rank r takes indices r, r + world, ..."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.ids = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def build_loader(
    dataset: ImageDataset,
    *,
    batch_size: int,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    skip_batches: int = 0,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader[Any]:
    """A loader for one epoch. ``batch_size`` is per process. Train order is a function of (seed, epoch).

    A dataset over WebDataset shards (:class:`WdsSource`) is streamed by :class:`WdsStream`: split over ``world``
    processes and ``workers`` loader workers, ``skip_batches`` skipped without decoding.
    """
    dataset.set_epoch(epoch)
    if isinstance(dataset.source, WdsSource):
        stream = WdsStream(dataset, batch_size=batch_size, train=train, epoch=epoch, skip_batches=skip_batches,
                           rank=rank, world=world, workers=workers, seed=seed)
        return DataLoader(stream, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory,
                          persistent_workers=False, worker_init_fn=_worker_init if workers else None)
    sampler: Sampler[int]
    if train:
        inner = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        inner.set_epoch(epoch)
        sampler = _SkipSampler(inner, skip_batches * batch_size)
    else:
        sampler = _ShardSampler(len(dataset), rank, world)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=train,
        persistent_workers=False,
        worker_init_fn=_worker_init if workers else None,
    )


class WdsStream(IterableDataset[tuple[torch.Tensor, int]]):
    """One epoch of a :class:`WdsSource` for one process, split over DataLoader workers.

    The shards are split across ``world * workers`` streams (shard ``i`` of the epoch's seeded shard order goes to
    stream ``i % streams``; with fewer shards than streams every stream reads every shard and keeps every
    ``streams``-th sample). Batch ``b`` of an epoch comes from stream ``b % workers``, whichever worker serves it, so
    resuming after ``skip`` batches continues exactly (for the same ``world`` and ``workers``). In training each
    process yields exactly ``(len // world) // batch_size`` batches (streams restart their shards with a new order
    when they run dry, as WebDataset's resampled mode does), so every DDP rank takes the same number of steps; in
    evaluation every sample is read once. Samples are shuffled in a seeded buffer of ``source.shuffle`` samples and
    augmented with a seed from (seed, epoch, position), like :class:`ImageDataset`.
    """

    def __init__(self, dataset: ImageDataset, *, batch_size: int, train: bool, epoch: int, skip_batches: int,
                 rank: int, world: int, workers: int, seed: int | None = None) -> None:
        src = dataset.source
        if not isinstance(src, WdsSource):
            raise TypeError("WdsStream needs an ImageDataset over a WdsSource")
        self.src, self.transform, self.in_chans = src, dataset.transform, dataset.in_chans
        self.seed, self.epoch, self.train = dataset.seed, epoch, train
        self.order_seed = dataset.seed if seed is None else seed
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.workers = max(1, workers)
        self.batches = (len(src) // world) // batch_size if train else 0
        self.skip = min(skip_batches, self.batches) if train else 0
        self._warned = False

    def __len__(self) -> int:
        if self.train:
            return (self.batches - self.skip) * self.batch_size
        return -(-len(self.src) // self.world)  # an upper bound (shards need not split evenly)

    def _shard_order(self, cycle: int) -> list[str]:
        order = list(self.src.shards)
        if self.train:
            random.Random(_sample_seed(self.order_seed, self.epoch, 1_000_003 * cycle + 17)).shuffle(order)
        return order

    def _passes(self, stream: int) -> Iterator[Iterator[tuple[str, dict[str, bytes]]]]:
        """One iterator per pass over this stream's shards (one pass in evaluation, endless in training)."""
        streams = self.world * self.workers
        slot = self.rank * self.workers + stream
        cycle = 0
        while True:
            order = self._shard_order(cycle)
            mine = order[slot::streams] if len(order) >= streams else order
            counter = [0]
            yield self._read(mine, slot if len(order) < streams else None, streams, counter)
            if not self.train:
                return
            if counter[0] == 0:
                raise RecipeError(f"data {self.src.name!r}: stream {slot} of {streams} read no samples from "
                                  f"{len(mine)} shard(s)")
            cycle += 1

    def _read(self, urls: list[str], slot: int | None, streams: int, counter: list[int]
              ) -> Iterator[tuple[str, dict[str, bytes]]]:
        """Samples of ``urls`` in order; with ``slot`` only every ``streams``-th one (few shards, many streams)."""
        j = 0
        for url in urls:
            try:
                shard = _Shard(url)
            except OSError as e:
                self._warn(f"could not open shard {url} ({e})")
                continue
            try:
                for key, sample in shard.samples():
                    j += 1
                    if slot is not None and (j - 1) % streams != slot:
                        continue
                    counter[0] += 1
                    yield key, sample
            except (OSError, EOFError, ValueError) as e:  # tarfile.ReadError is an OSError subclass
                self._warn(f"shard {url} ended early ({_one_line(e)})")
            finally:
                shard.close()

    def _warn(self, msg: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"{self.src.name}: {msg}; continuing (warned once)", UnreadableImageWarning, stacklevel=3)

    def _shuffled(self, stream: int) -> Iterator[tuple[str, dict[str, bytes]]]:
        """The stream's samples, each pass shuffled in a seeded buffer of ``source.shuffle`` samples."""
        size = self.src.shuffle if self.train else 0
        rng = random.Random(_sample_seed(self.order_seed, self.epoch, 7_919 * (self.rank * self.workers + stream) + 3))
        for samples in self._passes(stream):
            if size <= 1:
                yield from samples
                continue
            buf: list[tuple[str, dict[str, bytes]]] = []
            for item in samples:
                if len(buf) < size:
                    buf.append(item)
                    continue
                i = rng.randrange(size)
                yield buf[i]
                buf[i] = item
            rng.shuffle(buf)
            yield from buf

    def _decode(self, key: str, sample: dict[str, bytes]) -> tuple[np.ndarray, int] | None:
        img_bytes = _pick(sample, self.src.image_exts)
        lab = sample.get(self.src.label_ext)
        if img_bytes is None or lab is None:
            return None
        label = _label_value(lab, self.src.name, key)
        if not 0 <= label < len(self.src.classes):
            raise RecipeError(f"data {self.src.name!r}: sample {key!r} has label {label}, outside the "
                              f"{len(self.src.classes)} classes")
        try:
            return _decode(io.BytesIO(img_bytes)), label
        except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this sample"
            self._warn(f"could not decode sample {key} ({_one_line(e)})")
            return None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        workers = info.num_workers if info is not None else 1
        if workers != self.workers:
            raise RecipeError(f"WdsStream was built for {self.workers} worker(s) but runs under {workers}")
        bs = self.batch_size
        # batch b of the epoch comes from stream b % workers; this worker serves batches skip + worker + k*workers
        stream = (self.skip + worker) % self.workers
        first = len(range(stream, self.skip, self.workers))  # batches of this stream already consumed
        total = len(range(stream, self.batches, self.workers)) if self.train else None
        k = 0  # position (samples) within this stream
        for key, sample in self._shuffled(stream):
            if total is not None and k >= total * bs:
                return
            if self.train and k < first * bs:  # consumed before the resume: skipped without decoding
                if _pick(sample, self.src.image_exts) is not None and self.src.label_ext in sample:
                    k += 1
                continue
            decoded = self._decode(key, sample)
            if decoded is None:
                continue
            img, label = decoded
            b = (k // bs) * self.workers + stream  # the epoch-level batch index
            position = (b * bs + k % bs) * self.world + self.rank
            k += 1
            yield _apply(img, label, self.transform, _sample_seed(self.seed, self.epoch, position), self.in_chans)


def _worker_init(worker_id: int) -> None:
    # albumentations/cv2 should not spawn threads inside each worker
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass
    torch.set_num_threads(1)


def steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    """Optimizer steps per epoch for a global ``batch_size`` (drop_last)."""
    per_rank = n // world
    return per_rank // (batch_size // world)
