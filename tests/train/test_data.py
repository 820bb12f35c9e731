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


# ----------------------------------------------------------------------------------------------- wds: (stdlib tar)


def _png(value: int, size: int = 8) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(folder, n_shards: int = 4, per_shard: int = 6, n_classes: int = 3, start: int = 0) -> list[str]:
    """WebDataset shards written with the stdlib: ``<key>.png`` + ``<key>.cls``; pixel value = sample id."""
    import io
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    names, k = [], start
    for s in range(n_shards):
        name = folder / f"shard-{s:03d}.tar"
        with tarfile.open(name, "w") as tf:
            for _ in range(per_shard):
                for ext, data in (("png", _png(k)), ("cls", str(k % n_classes).encode())):
                    info = tarfile.TarInfo(f"sample{k:05d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                k += 1
        names.append(str(name))
    return names


def _ids(loader) -> list[list[int]]:
    return [x[:, 0, 0, 0].tolist() for x, _ in loader]


def test_braceexpand_and_spec_errors(tmp_path):
    from mixerzoo.train.data import braceexpand

    assert braceexpand("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert braceexpand("{a,b}/x{8..10}") == ["a/x8", "a/x9", "a/x10", "b/x8", "b/x9", "b/x10"]
    with pytest.raises(RecipeError, match=r"shard '.*shard-001.tar' does not exist \(2 of 2 missing\)"):
        open_sources(f"wds:{tmp_path}/shard-{{001..002}}.tar")
    write_shards(tmp_path, n_shards=1)
    with pytest.raises(RecipeError, match=r"unknown or empty option 'size=3' \(options: image=\.\.\., label="):
        open_sources(f"wds:{tmp_path}/shard-000.tar?size=3")
    with pytest.raises(RecipeError, match="option n must be an integer >= 1, got 'x'"):
        open_sources(f"wds:{tmp_path}/shard-000.tar?n=x")
    with pytest.raises(RecipeError, match=r"remote shards need the sample count and classes: add \?n="):
        open_sources("wds:https://example.invalid/shard-{000..009}.tar")
    with pytest.raises(RecipeError, match="give val_data"):  # one shard cannot hold out a validation shard
        open_sources(f"wds:{tmp_path}/shard-000.tar")


def test_wds_sources_count_split_and_info_json(tmp_path):
    write_shards(tmp_path / "s")
    train, val = open_sources(f"wds:{tmp_path}/s/shard-{{000..003}}.tar", val_split=0.25)
    assert (len(train), len(val), train.classes) == (18, 6, ["0", "1", "2"])
    assert train.shards[-1].endswith("shard-002.tar") and val.shards == [f"{tmp_path}/s/shard-003.tar"]
    # timm's _info.json gives the counts without reading the shards; n= and classes= override
    info = {"num_classes": 5, "splits": {"train": {"name": "train", "num_samples": 24, "filenames":
            [f"shard-{i:03d}.tar" for i in range(4)], "shard_lengths": [6, 6, 6, 6]}}}
    (tmp_path / "s" / "_info.json").write_text(json.dumps(info))
    train, val = open_sources(f"wds/{tmp_path}/s", val_split=0.5)  # timm's wds/ spelling, a folder of shards
    assert (len(train), len(val), len(train.classes)) == (12, 12, 5)
    train, val = open_sources(f"wds:{tmp_path}/s/shard-{{000..001}}.tar?n=10&classes=cat,dog,eel",
                              f"wds:{tmp_path}/s/shard-003.tar?classes=3")
    assert (len(train), train.classes, len(val), val.classes) == (10, ["cat", "dog", "eel"], 6, ["cat", "dog", "eel"])


def test_wds_stream_splits_ranks_and_workers_and_resumes(tmp_path):
    write_shards(tmp_path, n_shards=4, per_shard=6)
    train, val = open_sources(f"wds:{tmp_path}/shard-{{000..003}}.tar", f"wds:{tmp_path}/shard-{{000..003}}.tar")
    ds = ImageDataset(train, None)
    # one process: one epoch reads every sample once, in a seeded order that changes with the epoch
    one = _ids(build_loader(ds, batch_size=4, train=True, seed=1, epoch=0))
    assert len(one) == 6 and sorted(sum(one, [])) == list(range(24))
    assert one == _ids(build_loader(ds, batch_size=4, train=True, seed=1, epoch=0))
    assert one != _ids(build_loader(ds, batch_size=4, train=True, seed=1, epoch=1))
    # 2 ranks x 2 workers: every rank takes the same number of steps, on disjoint shards
    ranks = [_ids(build_loader(ds, batch_size=2, train=True, seed=1, epoch=0, rank=r, world=2, workers=2))
             for r in range(2)]
    assert [len(r) for r in ranks] == [6, 6]
    assert sorted(sum(ranks[0] + ranks[1], [])) == list(range(24))
    # resuming after 3 batches continues with exactly the batches an uninterrupted epoch would have seen
    full = _ids(build_loader(ds, batch_size=2, train=True, seed=1, epoch=0, workers=2))
    tail = _ids(build_loader(ds, batch_size=2, train=True, seed=1, epoch=0, workers=2, skip_batches=3))
    assert len(full) == 12 and tail == full[3:]
    # evaluation: every sample exactly once over ranks and workers, in shard order
    vds = ImageDataset(val, None)
    seen = [_ids(build_loader(vds, batch_size=4, train=False, rank=r, world=2, workers=2)) for r in range(2)]
    assert sorted(sum(sum(seen, []), [])) == list(range(24))


def test_wds_bad_samples_are_skipped_with_one_warning(tmp_path):
    import io
    import tarfile

    names = write_shards(tmp_path, n_shards=2, per_shard=4)
    with tarfile.open(names[1], "a") as tf:
        for name, data in (("bad.png", b"not a png"), ("bad.cls", b"1"), ("lonely.png", _png(1))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    train, _ = open_sources(f"wds:{tmp_path}/shard-{{000..001}}.tar", f"wds:{tmp_path}/shard-000.tar")
    assert len(train) == 9  # 'lonely' has no label; 'bad' is counted (its image is not decoded by the scan)
    with pytest.warns(UnreadableImageWarning, match="could not decode sample bad"):
        ids = _ids(build_loader(ImageDataset(train, None), batch_size=9, train=False))
    assert sorted(sum(ids, [])) == list(range(8))


def test_wds_pipe_shards_stream_with_n_and_classes(tmp_path):
    names = write_shards(tmp_path, n_shards=2, per_shard=3)
    spec = "wds:" + "::".join(f"pipe:cat {n}" for n in names) + "?n=6&classes=3&shuffle=0"
    train, val = open_sources(spec, spec)
    assert (len(train), train.classes) == (6, ["0", "1", "2"])
    ids = _ids(build_loader(ImageDataset(val, None), batch_size=4, train=False))
    assert ids == [[0, 1, 2, 3], [4, 5]]
