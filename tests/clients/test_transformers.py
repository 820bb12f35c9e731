"""Hugging Face transformers loads a mixerzoo hub folder (TimmWrapper) after ``import mixerzoo``: same logits as
mixerzoo, the same preprocessing as timm, and ``pipeline("image-classification")`` on top. No network: the folder is
local and huggingface_hub runs offline."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import mixerzoo
from mixerzoo import hub

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


@pytest.fixture(scope="module")
def transformers() -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        import huggingface_hub.constants

        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time, maybe already imported
        import transformers as tf

        yield tf


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = mixerzoo.create_model("test_vit", num_classes=10).eval()
    folder = hub.save_pretrained(model, tmp_path_factory.mktemp("tf") / "mz_test_vit")
    return model, folder


def _image(seed: int = 0) -> Any:
    from PIL import Image

    return Image.fromarray((np.random.RandomState(seed).rand(48, 40, 3) * 255).astype("uint8"))


def test_auto_model_and_processor_match_mixerzoo_and_timm(transformers: Any, saved: tuple[Any, Path]) -> None:
    import timm.data

    model, folder = saved
    tm = transformers.AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    assert type(tm).__name__ == "TimmWrapperForImageClassification"
    assert tm.config.num_labels == 10
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(tm(pixel_values=x).logits, model(x), atol=1e-6, rtol=0)
    # the processor reproduces timm's eval transform for the folder's pretrained_cfg
    proc = transformers.AutoImageProcessor.from_pretrained(str(folder))
    pv = proc(_image(), return_tensors="pt")["pixel_values"]
    ref = timm.data.create_transform(**timm.data.resolve_data_config(model=model))(_image()).unsqueeze(0)
    assert pv.shape == ref.shape == (1, 3, 32, 32)
    assert torch.allclose(pv, ref, atol=1e-5)


def test_pipeline_scores_equal_mixerzoo_softmax(transformers: Any, saved: tuple[Any, Path]) -> None:
    import timm.data

    model, folder = saved
    pipe = transformers.pipeline("image-classification", model=str(folder), top_k=3)
    out = pipe(_image(2))
    x = timm.data.create_transform(**timm.data.resolve_data_config(model=model))(_image(2)).unsqueeze(0)
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    top = probs.topk(3)
    assert [round(o["score"], 5) for o in out] == [round(float(s), 5) for s in top.values]
    assert [o["label"] for o in out] == [pipe.model.config.id2label[int(i)] for i in top.indices]
