"""One model of every family through the deployment tools users run: ``torch.export`` with a dynamic batch,
ONNX (``torch.onnx.export(..., dynamo=True)``) + onnxruntime, and ``torch.compile(fullgraph=True)``.

The models are the hidden ``test_*`` variants (tiny, random weights) and tiny configurations of the plain Swin and
PVTv2 hosts; they run every mixer and kernel op of their family, on CPU. ``torch.compile`` uses the ``eager``
backend: ``fullgraph=True`` fails on any graph break, and no inductor build is needed to show it.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from pathlib import Path
from typing import Any

import pytest
import timm
import torch

import mixerzoo  # noqa: F401 - registers the mz_ models

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

_TINY_SWIN = {"depths": (1, 1, 2, 1), "embed_dim": 16, "num_heads": (1, 2, 2, 4), "window_size": 2, "img_size": 64}
_TINY_PVT_V2 = {
    "depths": (1, 1, 1, 1), "dims": (16, 32, 64, 64), "num_heads": (1, 2, 2, 2), "mlp_ratios": (2, 2, 2, 2),
    "img_size": 64,
}  # fmt: skip

# family -> (model name, overrides, input size)
FAMILIES: dict[str, tuple[str, dict[str, Any], tuple[int, int, int] | None]] = {
    "vit": ("mz_test_vit", {}, None),
    "poolformer": ("mz_test_poolformer", {}, None),
    "attn_resnet_cbam": ("mz_test_resnet_cbam", {}, None),
    "attn_resnet_triplet": ("mz_test_resnet_triplet", {}, None),
    "biformer": ("mz_test_biformer", {}, None),
    "biformer_stl": ("mz_test_biformer_stl", {}, None),
    "nat": ("mz_test_nat", {}, None),  # NAT/DiNAT share nat.py (dilation: tests/kernels/test_tracing.py)
    "nat_isotropic": ("mz_test_nat_isotropic", {}, None),
    "litv2": ("mz_test_litv2", {}, None),
    "flatten_swin": ("mz_test_flatten_swin", {}, None),
    "flatten_pvt": ("mz_test_flatten_pvt", {}, None),
    "flatten_pvt_v2": ("mz_test_flatten_pvt_v2", {}, None),
    "flatten_cswin": ("mz_test_flatten_cswin", {}, None),
    "swin": ("mz_swin_tiny_patch4_window7_224", _TINY_SWIN, (3, 64, 64)),
    "pvt_v2": ("mz_pvt_v2_b0", _TINY_PVT_V2, (3, 64, 64)),
}

ATOL = 1e-4  # eager vs exported / ONNX: fp32 reassociation only


def _model(family: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    name, overrides, size = FAMILIES[family]
    model = timm.create_model(name, **overrides).eval()
    size = size or model.pretrained_cfg["input_size"]
    gen = torch.Generator().manual_seed(0)
    return model, torch.randn(2, *size, generator=gen), torch.randn(3, *size, generator=gen)


@functools.cache
def _exported(family: str) -> tuple[torch.nn.Module, Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model exported at batch 2 with a dynamic batch, and its eager output at batch 3 (shared by the tests)."""
    model, x2, x3 = _model(family)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (x2,), dynamic_shapes=({0: batch},))
    with torch.no_grad():
        want2, want3 = model(x2), model(x3)
    return ep, x2, want2, x3, want3


@pytest.mark.parametrize("family", list(FAMILIES))
def test_torch_export_dynamic_batch(family: str) -> None:
    ep, x2, want2, x3, want3 = _exported(family)
    torch.testing.assert_close(ep.module()(x3), want3, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(ep.module()(x2), want2, atol=ATOL, rtol=ATOL)


_ONNX = ("onnx", "onnxruntime", "onnxscript")


@pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in _ONNX), reason=f"needs {', '.join(_ONNX)} (the clients extra)"
)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_onnx_onnxruntime_matches_eager(family: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    ep, _, _, x3, want3 = _exported(family)
    # from the exported program (the same trace as torch.onnx.export(model, ..., dynamo=True) makes); the graph
    # optimiser is left off to keep the test short (the default optimize=True gives the same outputs)
    onnx_program = torch.onnx.export(ep, dynamo=True, optimize=False, verbose=False)
    path = tmp_path / f"{family}.onnx"
    onnx_program.save(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x3.numpy()})  # batch 3: the batch axis stayed dynamic
    torch.testing.assert_close(torch.from_numpy(got), want3, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_torch_compile_fullgraph(family: str) -> None:
    model, x2, _ = _model(family)
    torch._dynamo.reset()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = torch.compile(model, backend="eager", fullgraph=True)(x2)  # raises on any graph break
    finally:
        torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(got, model(x2), atol=ATOL, rtol=ATOL)
