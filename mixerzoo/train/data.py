"""Data for the recipe: sources (bundled digits, ImageFolder, CSV/JSON manifest), albumentations pipelines
resolved from the model's pretrained cfg, and deterministic loaders.

Determinism: the sample order of epoch ``e`` is a function of ``(seed, e)`` (DistributedSampler's permutation),
and every sample's augmentation is seeded from ``(seed, e, index)``, so a resumed run skips the consumed
batches and sees exactly the images an uninterrupted run would, whatever the number of workers.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from .recipe import Recipe, RecipeError

__all__ = [
    "IMG_EXTENSIONS",
    "DataConfig",
    "ImageDataset",
    "Source",
    "UnreadableImageWarning",
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


def _decode(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
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

    ``data`` is ``'digits'``, an ImageFolder directory (``<root>/<class>/*`` with optional ``train/`` and
    ``val/`` subfolders) or a ``.csv``/``.json`` manifest (fields ``path``, ``label``, optional ``split``).
    With ``verify`` every file is decoded once (4 threads) and unreadable ones are dropped with one warning;
    without it, a file that fails later is replaced by the next one (also warned once).
    """
    if data == "digits":
        train, val = digits_sources(digits_size)
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
        raise RecipeError(f"data: {data!r} is neither 'digits', an existing directory, nor a .csv/.json manifest")
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
        if self.in_chans == 1:
            img = img.mean(axis=2, keepdims=True).astype(np.uint8)
        elif self.in_chans != 3:
            raise RecipeError(f"in_chans must be 1 or 3 for image data, got {self.in_chans}")
        if self.transform is None:
            return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), label
        seed = _sample_seed(self.seed, self.epoch, index)
        # one generator pair per sample (Compose.set_random_seed would build one per transform: ~50x slower)
        self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return self.transform(image=img)["image"], label


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
    """A loader for one epoch. ``batch_size`` is per process. Train order is a function of (seed, epoch)."""
    dataset.set_epoch(epoch)
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
