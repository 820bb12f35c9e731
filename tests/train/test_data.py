"""Data sources and pipelines: corrupt/grayscale/RGBA images, manifests, bad inputs, deterministic augmentation."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from mixerzoo.train import RecipeError, build_recipe
from mixerzoo.train.data import (
    DataConfig,
    ImageDataset,
    UnreadableImageWarning,
    build_loader,
    build_transform,
    digits_sources,
    open_sources,
)

from _train_helpers import make_image_folder

CFG = DataConfig(img_size=16, crop_pct=0.875, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)


def test_mixed_modes_and_corrupt_images(tmp_path):
    root = tmp_path / "data"
    (root / "x").mkdir(parents=True)
    (root / "y").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / "x" / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8), "L").save(root / "x" / "gray.png")
    Image.fromarray(rng.integers(0, 255, (20, 24, 4), dtype=np.uint8), "RGBA").save(root / "y" / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).convert("P").save(root / "y" / "pal.png")
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / "y" / "ok.jpg")
    (root / "x" / "garbage.jpg").write_bytes(b"not an image at all")
    good = (root / "y" / "ok.jpg").read_bytes()
    (root / "y" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        train, val = open_sources(str(root), str(root))
    hits = [w for w in rec if issubclass(w.category, UnreadableImageWarning)]
    assert len(hits) == 2  # one for the training scan, one for the validation scan
    assert "skipped 2 unreadable image(s) of 7" in str(hits[0].message)
    assert len(train) == 5 and train.classes == ["x", "y"]
    ds = ImageDataset(train, build_transform(CFG, build_recipe({"data": "x"}), train=True))
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and torch.isfinite(x).all()
    for i in range(len(train)):
        assert train.load(i).shape[2] == 3


def test_manifest_csv_and_json(tmp_path):
    make_image_folder(tmp_path / "img", n_per_class=3)
    files = sorted((tmp_path / "img").rglob("*.png"))
    split = {p: "val" if p.stem == "0" else "train" for p in files}
    lines = ["path,label,split"] + [f"img/{p.parent.name}/{p.name},{p.parent.name},{split[p]}" for p in files]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    train, val = open_sources(str(tmp_path / "m.csv"))
    assert (len(train), len(val), train.classes) == (4, 2, ["a", "b"])
    (tmp_path / "m.json").write_text(json.dumps([{"path": str(p), "label": int(p.parent.name == "b")} for p in files]))
    train, val = open_sources(str(tmp_path / "m.json"), val_split=0.34)
    assert train.classes == ["0", "1"] and len(train) + len(val) == 6 and len(val) == 2


def test_bad_data_messages(tmp_path):
    with pytest.raises(RecipeError, match="neither 'digits', an existing directory"):
        open_sources(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecipeError, match="has no class folders"):
        open_sources(str(tmp_path / "empty"))
    make_image_folder(tmp_path / "d", n_per_class=2)
    (tmp_path / "d" / "c").mkdir()
    (tmp_path / "d" / "c" / "notes.txt").write_text("x")
    with pytest.raises(RecipeError, match=r"class folder '.*c' has no images"):
        open_sources(str(tmp_path / "d"))


def test_digits_split_is_fixed_and_disjoint():
    train, test = digits_sources(16)
    assert (len(train), len(test)) == (1438, 359)
    assert sorted(set(test.labels)) == list(range(10))
    assert train.load(0).shape == (16, 16, 3)


def test_augmentation_is_a_function_of_seed_epoch_index():
    train, _ = digits_sources(16)
    ds = ImageDataset(train, build_transform(CFG, build_recipe({}), train=True), seed=3)
    a = ds[5][0]
    ds.set_epoch(1)
    b = ds[5][0]
    ds.set_epoch(0)
    assert torch.equal(ds[5][0], a) and not torch.equal(a, b)
    # same batches whatever the worker count, and skipping batches continues the same order
    full = [y.tolist() for _, y in build_loader(ds, batch_size=8, train=True, seed=3, epoch=2)][:4]
    tail = [y.tolist() for _, y in build_loader(ds, batch_size=8, train=True, seed=3, epoch=2, skip_batches=2)][:2]
    assert tail == full[2:4]


def test_without_verification_a_bad_file_is_substituted_once(tmp_path):
    root = make_image_folder(tmp_path / "d", n_per_class=3)
    (root / "a" / "1.png").write_bytes(b"broken")
    train, _ = open_sources(str(root), str(root), verify=False)
    assert len(train) == 6  # nothing dropped up front
    ds = ImageDataset(train, build_transform(CFG, build_recipe({"data": "x"}), train=False))
    with pytest.warns(UnreadableImageWarning, match="substituting the next image"):
        items = [ds[i] for i in range(len(ds))]
    assert ds.failures == 1 and all(x.shape == (3, 16, 16) for x, _ in items)
