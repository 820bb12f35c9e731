"""``mixerzoo.bench.measure``: counting, configuration, and the bench loop (in-process, tiny models)."""

from __future__ import annotations

import pytest
import torch

from mixerzoo.bench import measure
from mixerzoo.bench.measure import BenchConfig, bench_models, count_flops, count_params, expand_models, profile_model

TINY = dict(batch=2, img_size=32, warmup=1, runs=2, threads=1, memory=False)  # batch 2: BatchNorm in train mode


def test_count_flops_is_macs_times_two_on_meta_and_cpu() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(8 * 16, 10))
    macs = 8 * 3 * 9 * 16 + 8 * 16 * 10  # conv on a 4x4 map + linear
    assert count_flops(model, (1, 3, 4, 4), device="cpu") == 2 * macs
    assert count_flops(model.to("meta"), (1, 3, 4, 4)) == 2 * macs
    assert count_params(model) == 8 * 3 * 9 + 8 + 8 * 16 * 10 + 10


def test_train_flops_include_backward() -> None:
    model = torch.nn.Linear(16, 4)
    fwd = count_flops(model, (2, 16), device="cpu")
    assert fwd == 2 * 2 * 16 * 4
    assert count_flops(model, (2, 16), device="cpu", train=True) == 2 * fwd  # + dW (the input needs no grad)


def test_deform_conv2d_counted_as_convolution() -> None:
    from torchvision.ops import deform_conv2d

    x = torch.randn(1, 4, 6, 6)
    w = torch.randn(8, 4, 2, 2)
    off = torch.zeros(1, 2 * 4, 3, 3)
    counter = measure.flop_counter()
    with counter:
        deform_conv2d(x, off, w, stride=2)
    assert counter.get_total_flops() == 2 * (8 * 3 * 3) * 4 * 2 * 2


def test_sdpa_on_cpu_is_counted() -> None:
    q = torch.randn(1, 2, 10, 8)
    with measure.flop_counter() as counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 2 * 2 * 10 * 10 * (8 + 8)


def test_profile_model_on_meta_matches_cpu() -> None:
    meta = profile_model("test_poolformer", 64)
    assert meta.flops_device == "meta" and meta.img_size == 64
    model = measure.build_model("test_poolformer").eval()
    assert meta.params == count_params(model)
    assert meta.flops == count_flops(model, (1, 3, 64, 64), device="cpu")
    assert profile_model("timm:resnet50").gmacs == pytest.approx(4.089, rel=1e-3)  # the yardstick, 224 default


def test_expand_models() -> None:
    assert expand_models(["poolformer_s1*"]) == ["poolformer_s12"]
    assert expand_models(["test_poolformer", "test_poolformer"]) == ["test_poolformer"]  # exact test names allowed
    assert expand_models(["timm:resnet18"]) == ["timm:resnet18"]
    with pytest.raises(ValueError, match="'nothing_\\*' matches no model"):
        expand_models(["nothing_*"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(batch=0), "batch must be >= 1"),
        (dict(dtype="int8"), "dtype must be one of"),
        (dict(warmup=0), "warmup must be >= 1"),
        (dict(runs=0), "runs and iters must be >= 1"),
        (dict(img_size=-1), "img_size must be >= 1"),
        (dict(clock="tsc"), "clock must be 'wall' or 'cpu'"),
        (dict(clock="cpu", device="cuda"), "clock='cpu' only makes sense on device='cpu'"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BenchConfig(**kwargs)
    assert BenchConfig(dtype="bf16").dtype == "bfloat16"


@pytest.mark.parametrize(("train", "clock", "dtype"), [(False, "wall", "bfloat16"), (True, "cpu", "float32")])
def test_bench_rows_and_ratio(train: bool, clock: str, dtype: str) -> None:
    cfg = BenchConfig(train=train, clock=clock, dtype=dtype, **TINY)
    rows = bench_models(["test_poolformer"], cfg, progress=False)
    yard, row = rows
    assert yard.model == "timm:resnet50" and yard.ratio == 1.0 and yard.status == "ok"
    assert row.status == "ok", row.error
    assert row.mode == ("train" if train else "infer") and row.threads == 1 and len(row.times_ms) == 2
    assert row.clock == clock and row.dtype == dtype
    assert row.params_m == pytest.approx(profile_model("test_poolformer").params / 1e6)
    assert row.throughput == pytest.approx(2 / (row.latency_ms / 1e3))
    assert row.ratio == pytest.approx(row.throughput / yard.throughput)


def test_failing_model_is_reported_and_run_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    real = measure._Step.__call__

    def step(self):  # noqa: ANN001, ANN202
        if self.boom == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.boom == "error":
            raise RuntimeError("kernel exploded")
        return real(self)

    real_init = measure._Step.__init__

    def init(self, name, cfg, img):  # noqa: ANN001, ANN202
        real_init(self, name, cfg, img)
        self.boom = {"test_biformer": "oom", "test_vit": "error"}.get(name)

    monkeypatch.setattr(measure._Step, "__call__", step)
    monkeypatch.setattr(measure._Step, "__init__", init)
    rows = bench_models(["test_biformer", "test_vit", "test_poolformer"], BenchConfig(**TINY), progress=False)
    by = {r.model: r for r in rows}
    assert by["test_biformer"].status == "oom" and "out of memory" in by["test_biformer"].error
    assert by["test_vit"].status == "error" and "RuntimeError: kernel exploded" in by["test_vit"].error
    assert by["test_poolformer"].status == "ok" and by["test_poolformer"].ratio is not None
    assert by["test_vit"].gmacs is not None  # static figures are still reported


def test_cpu_peak_memory_child() -> None:
    """The child measures peak RSS over one step, counted from before the model was built: at least the
    batch itself (64 x 3 x 64 x 64 fp32 = 3 MiB), and far below what a leak of the parent would show."""
    mem = measure._memory_in_child("test_poolformer", BenchConfig(batch=64, img_size=64, threads=1), 64)
    assert mem["mem_kind"] == "cpu_peak_rss", mem
    assert 3.0 <= mem["peak_mem_mb"] < 500.0, mem


@pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")),
    reason="no oneDNN fused linear in this torch build",
)
def test_fused_onednn_linear_is_counted() -> None:
    """Families call ``mkldnn._linear_pointwise`` (linear + GELU) on CPU; it must count like a Linear."""
    x, w, b = torch.randn(3, 5, 8), torch.randn(4, 8), torch.randn(4)
    with torch.no_grad(), measure.flop_counter() as counter:
        torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
    assert counter.get_total_flops() == 2 * 3 * 5 * 4 * 8
