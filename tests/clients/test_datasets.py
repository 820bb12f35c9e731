"""Datasets users already have, through the recipe: Hugging Face ``datasets`` (``hfds:`` a ``save_to_disk`` folder,
parquet, ``imagefolder``) and WebDataset shards written by the ``webdataset`` package (``wds:``). Small data made
here; no network."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mixerzoo.train import RecipeError
from mixerzoo.train._cli import main as train_cli
from mixerzoo.train.data import ImageDataset, build_loader, open_sources

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

# class 0 bright top half, class 1 bright bottom half: learnable by a tiny model in one epoch
SIZE = 16


def _image(label: int, i: int) -> Image.Image:
    rng = np.random.default_rng(100 * label + i)
    img = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
    img[(slice(0, SIZE // 2) if label == 0 else slice(SIZE // 2, SIZE))] += 150
    return Image.fromarray(img)


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    datasets.disable_progress_bars()
    return datasets


def _rows(n: int) -> tuple[list[Image.Image], list[int]]:
    labels = [i % 2 for i in range(n)]
    return [_image(y, i) for i, y in enumerate(labels)], labels


def test_hfds_save_to_disk_trains_and_evaluates_through_the_cli(hf, tmp_path, capsys):
    imgs, labels = _rows(16)
    feats = hf.Features({"img": hf.Image(), "y": hf.ClassLabel(names=["top", "bottom"])})
    ds = hf.Dataset.from_dict({"img": imgs, "y": labels}, features=feats)
    hf.DatasetDict(train=ds, validation=ds.select(range(6))).save_to_disk(str(tmp_path / "disk"))
    train, val = open_sources(f"hfds:{tmp_path / 'disk'}")
    assert (len(train), len(val), train.classes, train.labels[:3]) == (16, 6, ["top", "bottom"], [0, 1, 0])
    assert train.load(1).shape == (SIZE, SIZE, 3) and np.array_equal(train.load(1), np.asarray(imgs[1]))
    run = tmp_path / "run"
    flags = ["--model", "test_poolformer", "--img-size", "16", "--batch-size", "4", "--workers", "0", "--mixup", "0",
             "--cutmix", "0", "--quiet", "--epochs", "1", "--lr", "1e-3", "--warmup-epochs", "0"]
    assert train_cli(["train", *flags, "--data", f"hfds:{tmp_path / 'disk'}", "--output", str(run)]) == 0
    cfg = json.loads((run / "model" / "config.json").read_text())
    assert cfg["pretrained_cfg"]["label_names"] == ["top", "bottom"]
    capsys.readouterr()
    assert train_cli(["eval", f"local-dir:{run / 'model'}", "--data", f"hfds:{tmp_path / 'disk'}", "--workers", "0"]) == 0
    assert "top-1" in capsys.readouterr().out


def test_hfds_parquet_folder_with_plain_columns_and_overrides(hf, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    imgs, labels = _rows(12)
    table = pa.table({"picture_bytes": [{"bytes": _png(im), "path": None} for im in imgs],
                      "kind": ["cat" if y else "dog" for y in labels]})
    (tmp_path / "pq").mkdir()
    pq.write_table(table.slice(0, 8), tmp_path / "pq" / "train-00000-of-00001.parquet")
    pq.write_table(table.slice(8, 4), tmp_path / "pq" / "test-00000-of-00001.parquet")
    with pytest.raises(RecipeError, match=r"no image column found \(columns: \['picture_bytes', 'kind'\]\); name it "
                                          r"with \?image=COLUMN"):
        open_sources(f"hfds:{tmp_path / 'pq'}")
    train, val = open_sources(f"hfds:{tmp_path / 'pq'}?image=picture_bytes&label=kind")
    assert (len(train), len(val), train.classes, val.name) == (8, 4, ["cat", "dog"], "pq/val")
    assert np.array_equal(val.load(0), np.asarray(imgs[8]))
    with pytest.raises(RecipeError, match=r"no split 'valid' \(splits: \['train', 'test'\]\)"):
        open_sources(f"hfds:{tmp_path / 'pq'}?image=picture_bytes&label=kind&val=valid")
    with pytest.raises(RecipeError, match=r"unknown or empty option 'colour=x'"):
        open_sources(f"hfds:{tmp_path / 'pq'}?colour=x")


def test_hfds_imagefolder_with_a_separate_validation_source(hf, tmp_path):
    imgs, labels = _rows(8)
    for i, (im, y) in enumerate(zip(imgs, labels)):
        folder = tmp_path / "folder" / ("top", "bottom")[y]
        folder.mkdir(parents=True, exist_ok=True)
        im.save(folder / f"{i}.png")
    train, val = open_sources(f"hfds:{tmp_path / 'folder'}?builder=imagefolder", str(tmp_path / "folder"))
    assert (len(train), len(val), train.classes) == (8, 8, ["bottom", "top"])
    assert sorted(train.labels) == sorted(val.labels)
    x, y = ImageDataset(train, None)[0]
    assert x.shape == (3, SIZE, SIZE) and y in (0, 1)


def test_webdataset_tarwriter_shards_stream_through_fit(tmp_path):
    wds = pytest.importorskip("webdataset")
    k = 0
    for s in range(4):
        with wds.TarWriter(str(tmp_path / f"shards-{s:03d}.tar")) as sink:
            for _ in range(6):
                sink.write({"__key__": f"sample{k:05d}", "jpg": _image(k % 2, k), "cls": k % 2})
                k += 1
    spec = f"wds:{tmp_path}/shards-{{000..003}}.tar"
    train, val = open_sources(spec, val_split=0.25)
    assert (len(train), len(val), train.classes) == (18, 6, ["0", "1"])
    batches = list(build_loader(ImageDataset(train, None), batch_size=6, train=True, seed=0, workers=2))
    assert len(batches) == 3 and all(x.shape == (6, 3, SIZE, SIZE) for x, _ in batches)
    from mixerzoo.train import build_recipe, fit

    recipe = build_recipe({"model": "test_poolformer", "data": spec, "img_size": 16, "batch_size": 6, "workers": 0,
                           "mixup": 0.0, "cutmix": 0.0, "epochs": 1, "lr": 1e-3, "warmup_epochs": 0, "quiet": True,
                           "output": str(tmp_path / "run"), "save_model": False})
    result = fit(recipe)
    assert result.epochs == 1 and np.isfinite(result.top1)
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["global_step"] == 3
