"""Per-op breakdown: op names -> buckets, the event-tree rules (fake events), and real profiles of tiny models."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mixerzoo.bench import breakdown as B


@pytest.mark.parametrize(
    ("name", "bucket"),
    [
        ("aten::addmm", "gemm"), ("aten::mm", "gemm"), ("aten::bmm", "gemm"), ("aten::linear", "gemm"),
        ("aten::matmul", "gemm"), ("aten::mkldnn_convolution", "gemm"), ("aten::convolution_backward", "gemm"),
        ("mkldnn::_linear_pointwise", "gemm"), ("aten::conv2d", "gemm"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention"),
        ("mixerzoo::na2d_fwd", "attention"), ("mixerzoo.kernels.routed_attention", "attention"),
        ("aten::native_layer_norm", "norm"), ("aten::native_batch_norm_backward", "norm"),
        ("aten::native_group_norm", "norm"), ("aten::layer_norm", "norm"),
        ("aten::copy_", "copy"), ("aten::contiguous", "copy"), ("aten::permute", "copy"), ("aten::clone", "copy"),
        ("aten::cat", "copy"), ("aten::index", "copy"), ("aten::reshape", "copy"), ("aten::constant_pad_nd", "copy"),
        ("aten::add_", "elementwise"), ("aten::mul", "elementwise"), ("aten::gelu", "elementwise"),
        ("aten::_softmax", "elementwise"), ("aten::gelu_backward", "elementwise"),
        ("aten::_foreach_add_", "elementwise"),
        ("aten::avg_pool2d", "other"), ("aten::sum", "other"),
        ("aten::empty", None), ("aten::as_strided", None), ("AddmmBackward0", None),
        ("autograd::engine::evaluate_function: AddmmBackward0", None),
    ],
)  # fmt: skip
def test_classify_op(name: str, bucket: str | None) -> None:
    assert B.classify_op(name) == bucket


def _ev(
    name: str, t: float, parent: SimpleNamespace | None = None, seq: int = -1, fwd_thread: int = 0
) -> SimpleNamespace:
    return SimpleNamespace(
        name=name, self_cpu_time_total=t, cpu_parent=parent, sequence_nr=seq, thread=1, fwd_thread=fwd_thread
    )


def test_bucket_events_tree_rules() -> None:
    linear = _ev("aten::linear", 1.0, seq=3)
    addmm = _ev("aten::addmm", 10.0, linear)
    kern = _ev("mixerzoo.kernels.routed_attention", 3.0)
    bmm = _ev("aten::bmm", 5.0, kern, seq=7)
    ev_bmm_bw = _ev("autograd::engine::evaluate_function: BmmBackward0", 1.0, seq=7, fwd_thread=1)
    ev_mm_bw = _ev("autograd::engine::evaluate_function: AddmmBackward0", 0.5, seq=3, fwd_thread=1)
    bw_node = _ev("BmmBackward0", 0.0, ev_bmm_bw)
    events = [
        linear, _ev("aten::t", 1.0, linear), addmm,
        _ev("aten::empty", 2.0, addmm),  # nameless: its parent's bucket (gemm)
        kern, bmm, _ev("aten::copy_", 4.0, kern),  # inside a kernel call: attention, whatever the op
        ev_bmm_bw, bw_node, _ev("aten::bmm", 6.0, bw_node),  # backward of an op run in a kernel: attention
        ev_mm_bw, _ev("aten::mm", 8.0, ev_mm_bw),  # backward of a plain linear: gemm
        _ev("aten::empty", 2.0),  # no classified parent: other
    ]  # fmt: skip
    per_bucket, total, top = B.bucket_events(events, top=3)
    assert per_bucket == {
        "gemm": 1.0 + 10.0 + 2.0 + 8.0, "attention": 3.0 + 5.0 + 4.0 + 1.0 + 6.0, "norm": 0.0, "copy": 1.0,
        "elementwise": 0.0, "other": 2.0 + 0.5,
    }  # fmt: skip
    assert total == pytest.approx(sum(per_bucket.values()))
    assert top == [("aten::bmm", "attention", 11.0), ("aten::addmm", "gemm", 10.0), ("aten::mm", "gemm", 8.0)]


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, 8)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.gelu(self.norm(self.conv(x)))
        x = x.permute(0, 2, 3, 1).contiguous()  # a real copy
        return self.fc(x).mean((1, 2))


def test_op_breakdown_of_a_tiny_model() -> None:
    model = _Tiny().eval()
    x = torch.randn(2, 3, 16, 16)

    def step() -> None:
        with torch.inference_mode():
            model(x)

    step()
    bd = B.op_breakdown(step, steps=2)
    assert set(bd.shares) == set(B.BUCKETS) and sum(bd.shares.values()) == pytest.approx(1.0)
    for bucket in ("gemm", "norm", "copy", "elementwise"):
        assert bd.shares[bucket] > 0, (bucket, bd)
    assert bd.shares["attention"] == 0
    assert bd.steps == 2 and bd.time_kind == "cpu" and bd.total_ms > 0
    names = {n for n, _, _ in bd.top}
    assert names & {"aten::mkldnn_convolution", "aten::addmm", "aten::native_group_norm", "aten::copy_"}
    assert bd.top_outside(("gemm",))[1] != "gemm"
    text = B.format_breakdown(bd.shares)
    assert text.split()[::2] == ["gemm", "attn", "norm", "copy", "elt", "other"]


def test_train_step_breakdown_counts_backward_ops() -> None:
    model = _Tiny().train()
    x = torch.randn(2, 3, 16, 16)

    def step() -> None:
        model(x).sum().backward()

    step()
    per_bucket_names = {(n, b) for n, b, _ in B.op_breakdown(step, top=50).top}
    assert ("aten::convolution_backward", "gemm") in per_bucket_names
    assert any(b == "norm" and "backward" in n for n, b in per_bucket_names)


def test_kernel_ranges_wrap_the_mixers_binding_and_restore_it() -> None:
    from mixerzoo.kernels.neighborhood import neighborhood_attention_2d
    from mixerzoo.plugins import neighborhood as plugin

    assert plugin.neighborhood_attention_2d is neighborhood_attention_2d
    q = torch.randn(1, 5, 5, 2, 4)
    with B.kernel_ranges() as n:
        assert n >= 1 and plugin.neighborhood_attention_2d is not neighborhood_attention_2d
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            plugin.neighborhood_attention_2d(q, q, q, 3)
    assert plugin.neighborhood_attention_2d is neighborhood_attention_2d
    per_bucket, total, _ = B.bucket_events(prof.events())
    assert per_bucket["attention"] == pytest.approx(total)  # everything ran inside the kernel call


def test_breakdown_of_a_kernel_family_charges_the_kernel() -> None:
    import mixerzoo

    model = mixerzoo.create_model("test_nat").eval()
    x = torch.randn(1, 3, 96, 96)

    def step() -> None:
        with torch.inference_mode():
            model(x)

    step()
    bd = B.op_breakdown(step)
    assert bd.shares["attention"] > 0 and bd.shares["gemm"] > 0
    assert any(n == "mixerzoo.kernels.neighborhood_attention_2d" for n, _, _ in B.op_breakdown(step, top=100).top)
